"""The metrics log of a run: every metric as a line of ``metrics.jsonl``, and their curves as
``curves.png``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from transformer.translation.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    naming_the_file,
)
from transformer.translation.training.config import METRICS_FILE

RUN_END_SPLITS = ("val_average", "test")  # logged after the last checkpoint, by the run's end


class MetricsLog:
    """Append-only JSON-lines log of every metric, plus a PNG of the curves (rank 0 only)."""

    def __init__(
        self,
        run_dir: Path,
        enabled: bool,
        resume_step: int | None = None,
        schedule: str = "inverse-sqrt",
    ) -> None:
        self.path = run_dir / METRICS_FILE
        self.schedule = schedule
        self.enabled = enabled
        self.records: list[dict[str, Any]] = []
        if enabled and resume_step is not None and self.path.is_file():
            # Keep what the checkpoint covers; the killed run's later lines are redone, and so is
            # the end of a run that had finished (its test and average lines follow the checkpoint).
            old = read_records(self.path)
            self.records = [
                r for r in old if r["step"] <= resume_step and r["split"] not in RUN_END_SPLITS
            ]
            atomic_write_json_lines(self.path, self.records)
        elif enabled:
            self.path.write_text("")

    def log(self, **record: Any) -> None:
        if not self.enabled:
            return
        record["time"] = time.time()
        self.records.append(record)
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as err:  # e.g. a full disk: say which file
            raise naming_the_file(err, self.path) from err

    def plot(self) -> None:
        if not self.enabled:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [r for r in self.records if r["split"] == "train"]
        val = [r for r in self.records if r["split"] == "val"]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        axes[0].plot(
            [r["step"] for r in train],
            [r["loss"] for r in train],
            label="train (label-smoothed CE)",
        )
        axes[0].plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="val (NLL)")
        axes[0].set(xlabel="step", ylabel="loss", title="loss")
        axes[0].legend()
        axes[1].plot([r["step"] for r in val], [r["bleu"] for r in val], "o-", label="BLEU cased")
        axes[1].plot(
            [r["step"] for r in val], [r["bleu_lc"] for r in val], "o-", label="BLEU lowercased"
        )
        chrf = [r for r in val if "chrf" in r]  # absent from runs logged before chrF was
        axes[1].plot([r["step"] for r in chrf], [r["chrf"] for r in chrf], "s--", label="chrF")
        beam = val[-1]["beam_size"] if val else 1
        decoding = "greedy" if beam == 1 else f"beam {beam}"
        axes[1].set(xlabel="step", ylabel="score", title=f"validation ({decoding})")
        axes[1].legend()
        axes[2].plot([r["step"] for r in train], [r["lr"] for r in train])
        axes[2].set(xlabel="step", ylabel="learning rate", title=f"{self.schedule} schedule")
        fig.tight_layout()
        path = self.path.with_name("curves.png")
        tmp = self.path.with_name(".curves.png.tmp")
        try:
            fig.savefig(tmp, format="png", dpi=80)
            os.replace(tmp, path)
        except OSError as err:  # e.g. a full disk: say which file, leave no partial one
            tmp.unlink(missing_ok=True)
            raise naming_the_file(err, path) from err
        finally:
            plt.close(fig)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl``. A last line cut short (no newline after it: the
    process died while appending it, after its last checkpoint) is dropped; any other line that
    is not a record is a :class:`CheckpointError` naming it."""
    *lines, tail = path.read_bytes().decode(errors="replace").split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = _record(line)
        if record is None:
            raise CheckpointError(
                f"{path}, line {number}: not a metrics record ({line[:40]!r}); remove the line "
                "(or the whole file, to start a new log) and resume"
            )
        records.append(record)
    last = _record(tail) if tail.strip() else None
    return records if last is None else [*records, last]


def _record(line: str) -> dict[str, Any] | None:
    """``line`` as a metrics record (a JSON object with a split and a whole step), or None."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("split"), str):
        return None
    step = record.get("step")
    return record if isinstance(step, int) and not isinstance(step, bool) else None


def atomic_write_json_lines(path: Path, records: list[dict[str, Any]]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode())
