"""The run configuration: :class:`TrainConfig`, one frozen dataclass that a run is built from
and saves as ``run_dir/config.json``; the names of the files a run directory holds."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from transformer.config import ModelConfig
from transformer.decoding import DEFAULT_LENGTH_PENALTY
from transformer.translation.data import DEFAULT_DATA_DIR
from transformer.translation.training.schedules import SCHEDULES

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; saved as ``run_dir/config.json``.

    ``model``'s vocabulary sizes are placeholders until the tokenizer is trained: the run uses
    the tokenizer's actual size (at most ``vocab_size``).
    """

    model: ModelConfig = field(
        default_factory=lambda: ModelConfig(6000, 6000, d_ff=512, dropout=0.0)
    )
    # data
    data: str = str(DEFAULT_DATA_DIR)
    src_lang: str = "de"
    tgt_lang: str = "en"
    test_split: str = "test_2016_flickr"
    vocab_size: int = 6000
    max_length: int = 128
    train_limit: int | None = None
    val_limit: int | None = None
    # run
    run_dir: str | None = None
    seed: int = 1
    device: str = "auto"
    amp: str = "auto"
    threads: int | None = None
    progress: bool = True
    compile: bool = False  # torch.compile the model for training steps (see README)
    # optimization
    max_tokens: int = 2048
    lr: float = 2.5e-3
    warmup_steps: int = 150
    beta2: float = 0.98
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    clip_norm: float = 1.0
    schedule: str = "linear-decay"
    epochs: int = 100
    max_steps: int | None = None
    time_budget: float | None = 9.0
    # evaluation and checkpoints
    eval_every: int = 0
    eval_at_epoch_end: bool = True
    checkpoint_every: int = 200
    log_every: int = 10
    beam_size: int = 4
    length_penalty: float = DEFAULT_LENGTH_PENALTY
    val_beam_size: int = 1
    average_last: int = 0
    final_test: bool = True

    def __post_init__(self) -> None:
        positive = (
            "vocab_size",
            "max_length",
            "max_tokens",
            "epochs",
            "log_every",
            "beam_size",
            "val_beam_size",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_limit", "val_limit", "max_steps", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 when given, got {value}")
        for name in (
            "warmup_steps",
            "eval_every",
            "checkpoint_every",
            "average_last",
            "weight_decay",
            "clip_norm",
            "length_penalty",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 < self.beta2 < 1:
            raise ValueError(f"beta2 must be in (0, 1), got {self.beta2}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(f"time_budget must be positive minutes, got {self.time_budget}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.amp not in ("auto", "on", "off"):
            raise ValueError(f"amp must be auto, on or off, got {self.amp!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError as err:
                raise ValueError(f"bad device {self.device!r}: {err}") from None
        if self.max_tokens < self.max_length:
            raise ValueError(
                f"max_tokens ({self.max_tokens}) must be >= max_length ({self.max_length})"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict`; raises ``ValueError`` on unknown or invalid fields."""
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {sorted(unknown)}")
        if isinstance(d.get("model"), dict):
            d["model"] = ModelConfig(**d["model"])
        return cls(**d)
