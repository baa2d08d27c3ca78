"""What the training tests share: a tiny model, a training config for it, a fake clock, and a
reader of metrics.jsonl. (Their fixtures, ``corpus`` and ``fast_machine``, are in conftest.py.)"""

from __future__ import annotations

import json
from pathlib import Path

from transformer.config import ModelConfig
from transformer.translation.training import TrainConfig

TINY_MODEL = ModelConfig(
    1, 1, d_model=64, heads=2, encoder_layers=2, decoder_layers=2, d_ff=128, dropout=0.1
)


def tiny_config(corpus: Path, run_dir: Path, **changes) -> TrainConfig:
    base = dict(
        model=TINY_MODEL, data=str(corpus), run_dir=str(run_dir), vocab_size=400, max_tokens=256,
        lr=3e-3, warmup_steps=20, time_budget=None, threads=1, progress=False, log_every=1,
        checkpoint_every=0, final_test=False, amp="off", beam_size=2,
        device="cpu",  # bit-exact resume comparisons and the gloo test are CPU tests by design
    )  # fmt: skip
    base.update(changes)
    return TrainConfig(**base)


def logged(run_dir: Path, key: str) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in records if r["split"] == "train"}


class FakeClock:
    """A clock that moves one second every time it is read."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


class Killed(Exception):
    pass
