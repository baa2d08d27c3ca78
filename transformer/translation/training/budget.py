"""The time and step budget: the clock it is kept with, and whether it is spent."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from transformer.translation.training.run import Run


def clock() -> float:
    """Seconds on the clock the time budget is kept with (tests put a fake one in its place)."""
    return time.monotonic()


def out_of_budget(run: Run) -> bool:
    """Whether the step or time budget is spent; rank 0's clock decides, so all ranks stop together
    (and share its ``train_time`` as the schedule's clock)."""
    config, state = run.config, run.state
    over = (config.max_steps is not None and state.step >= config.max_steps) or (
        config.time_budget is not None and state.train_time >= config.time_budget * 60
    )
    if run.dist.enabled:
        flags = torch.tensor(
            [float(over), state.train_time], dtype=torch.float64, device=run.device
        )
        dist.broadcast(flags, src=0)
        over, state.train_time = bool(flags[0].item()), flags[1].item()
    state.schedule_time = state.train_time
    return over
