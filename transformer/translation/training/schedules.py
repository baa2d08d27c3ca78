"""Learning-rate schedules: linear warm-up, then inverse-square-root decay or linear decay to
zero at the end of the budget."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformer.translation.training.config import TrainConfig
    from transformer.translation.training.state import TrainState


SCHEDULES = ("inverse-sqrt", "linear-decay")


def learning_rate(config: TrainConfig, state: TrainState, batches_in_epoch: int) -> float:
    """The learning rate of step ``state.step`` (already counted) under ``config.schedule``."""
    if config.schedule == "inverse-sqrt":
        return inverse_sqrt_lr(state.step, config.lr, config.warmup_steps)
    used = budget_used(config, dataclasses.replace(state, step=state.step - 1), batches_in_epoch)
    return linear_decay_lr(state.step, config.lr, config.warmup_steps, used)


def inverse_sqrt_lr(step: int, peak: float, warmup: int) -> float:
    """Learning rate at 1-based ``step``: linear warm-up to ``peak``, then ``peak·√(warmup/step)``."""
    if warmup == 0:
        return peak
    return peak * min(step / warmup, math.sqrt(warmup / step))


def linear_decay_lr(step: int, peak: float, warmup: int, used: float) -> float:
    """Learning rate at 1-based ``step`` when the fraction ``used`` of the budget is spent: linear
    warm-up to ``peak`` over ``warmup`` steps, then linear decay to zero as ``used`` reaches 1
    ("Budgeted Training", Li et al., ICLR 2020)."""
    warm = 1.0 if warmup == 0 else step / warmup
    return peak * max(0.0, min(warm, 1.0 - used))


def budget_used(config: TrainConfig, state: TrainState, batches_in_epoch: int) -> float:
    """The fraction of the run's budget spent before the next step: the largest of the time,
    step and epoch fractions, since whichever budget runs out first ends the run."""
    epochs_done = state.epoch + state.next_batch / max(batches_in_epoch, 1)
    used = epochs_done / config.epochs
    if config.max_steps is not None:
        used = max(used, state.step / config.max_steps)
    if config.time_budget is not None:
        used = max(used, state.schedule_time / (config.time_budget * 60))
    return min(used, 1.0)
