"""Where a run stands: the position a checkpoint saves and a resumed run goes on from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainState:
    """Where the run stands; saved in every checkpoint, so that a resumed run goes on from here.

    ``train_time`` counts the training loop, validations included, against the time budget.
    ``schedule_time`` is ``train_time`` as of the last budget check, on rank 0's clock: the
    learning-rate schedule reads it, so that every rank, and a resumed run, use the same value.
    """

    step: int = 0
    epoch: int = 0
    next_batch: int = 0
    train_time: float = 0.0
    schedule_time: float = 0.0
    best_bleu: float = -1.0
