"""Results files and tables: a run's payload as JSON (and CSV), and its records as markdown
tables."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable
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


def read_results(parser, path: Path, benchmark: str) -> dict:
    """The results file ``path`` of the benchmark ``benchmark`` (its "benchmark" field), or
    ``parser.error`` (one line, exit status 2) naming the file and what is wrong with it."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        parser.error(f"{path}: no such file")
    except OSError as err:
        parser.error(f"{path}: cannot be read ({err.strerror or err})")
    except ValueError as err:  # not JSON (json.JSONDecodeError), or not text at all
        parser.error(f"{path}: not a JSON results file ({err})")
    if not isinstance(payload, dict):
        parser.error(f"{path}: not a results file (a JSON {type(payload).__name__}, no fields)")
    if payload.get("benchmark") != benchmark:
        parser.error(
            f"{path}: not a {benchmark} results file (its benchmark is "
            f"{payload.get('benchmark')!r})"
        )
    return payload


def provenance(env: dict) -> str:
    """One line on the run behind a results file, from its payload's "environment": device,
    library versions, date and command (whichever of them it has)."""
    device = env.get("device_name") or env.get("device_type")
    parts = [f"Measured on {device}" if device else "Measured"]
    names = {"driver": "driver", "torch": "torch", "triton": "triton", "python": "Python"}
    parts += [f"{name} {env[key]}" for key, name in names.items() if env.get(key)]
    if env.get("date"):
        parts.append(env["date"])
    line = ", ".join(parts)
    return line + (f", with `{env['command']}`" if env.get("command") else "") + "."


def write_markdown(stem: Path, env: dict, text: str) -> None:
    """``stem``.md: the run's :func:`provenance`, then ``text``; printed too."""
    text = f"{provenance(env)}\n\n{text}"
    Path(f"{stem}.md").write_text(text + "\n")
    print(text)


def wrote(stem: Path, suffixes: list[str]) -> str:
    """What a script wrote, e.g. ``wrote x.json, .png and .md``."""
    *head, last = suffixes
    return f"wrote {stem}" + (", ".join(head) + " and " if head else "") + last


def write_text_atomic(path: Path, text: str) -> None:
    """``path`` holds either its old content or ``text``, never a part (a process stopped while
    writing leaves the old file): written beside it, then renamed over it. Its mode is the one
    ``open()`` would give a new file (0o666 less the umask), not ``mkstemp``'s 0o600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask (reading it means setting it: put straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=1, allow_nan=False) + "\n")


# sweep(on_point): every point's records, calling on_point(records so far) after each point.
Sweep = Callable[[Callable[[list[dict]], None]], list[dict]]


def sweep_saving_each_point(
    stem: Path, sweep: Sweep, payload_of: Callable[[list[dict], bool], dict]
) -> dict:
    """Runs ``sweep`` and writes ``stem``.json after every point, ``payload_of(records,
    partial=True)``, so that a run stopped or crashed midway keeps each point it finished; then
    the whole run's ``payload_of(records, partial=False)``, which it returns."""

    def save(records: list[dict], partial: bool) -> dict:
        payload = payload_of(records, partial)
        write_json(Path(f"{stem}.json"), payload)
        return payload

    return save(sweep(lambda records: save(records, partial=True)), partial=False)


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
