"""The metrics log of a run: every metric as a line of ``metrics.jsonl``, and their curves as
``curves.png``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from transformer.translation.checkpoint import naming_the_file
from transformer.translation.training.config import METRICS_FILE


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
            # Keep what the checkpoint covers; the killed run's later lines are redone.
            old = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            self.records = [r for r in old if r.get("step", 0) <= resume_step]
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
        tmp = self.path.with_name(".curves.png.tmp")
        fig.savefig(tmp, format="png", dpi=80)
        plt.close(fig)
        os.replace(tmp, self.path.with_name("curves.png"))


def atomic_write_json_lines(path: Path, records: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)
