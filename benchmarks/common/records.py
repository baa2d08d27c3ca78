"""Results files and tables: a run's payload as JSON (and CSV), and its records as markdown
tables."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path

# How each non-ok status (benchmarks.common.statuses) is written in tables.
STATUS_LABELS = {
    "oom": "OOM",
    "unsupported": "unsupported",
    "not_measurable": "n/m",
    "unavailable": "unavailable",
    "skipped": "skipped",
    "error": "error",
}


def settings_of(args) -> dict:
    """A run's command-line settings as its results file keeps them: paths as strings, and
    without --tag (it names the file)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "tag"}


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def write_text_atomic(path: Path, text: str) -> None:
    """``path`` holds either its old content or ``text``, never a part (a process stopped while
    writing leaves the old file): written beside it, then renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=1, allow_nan=False) + "\n")


def write_csv(path: Path, rows: list[dict]) -> None:
    """``rows`` (dicts with the same keys, in order) as CSV with a header line, atomically."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, out.getvalue())


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def format_cell(record: dict | None, key: str, scale: float = 1.0, digits: int = 3) -> str:
    """A number to ``digits`` significant figures, or the record's status label."""
    if record is None:
        return ""
    if record["status"] != "ok":
        return STATUS_LABELS[record["status"]]
    value = record[key] * scale
    if value == 0:
        return "0"
    return f"{value:.{max(0, digits - 1 - math.floor(math.log10(abs(value))))}f}"
