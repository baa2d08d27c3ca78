"""When training stops: the time and step budget (and the clock it is kept with), and a stop
asked for by SIGTERM or SIGINT, which every data-parallel rank agrees on."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from transformer.translation.training.run import Run

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def clock() -> float:
    """Seconds on the clock the time budget is kept with (tests put a fake one in its place)."""
    return time.monotonic()


def exit_status(signum: int) -> int:
    """The shell's status of a process ended by signal ``signum``: 143 for SIGTERM, 130 for SIGINT."""
    return 128 + signum


class StopRequest:
    """A request to stop training after the current step, with a checkpoint.

    :meth:`on_signals` makes SIGTERM and SIGINT (what a scheduler, a preemption or Ctrl-C sends)
    ask for it; a second signal, while the first one's step and checkpoint are still being
    finished, ends the process at once with status :func:`exit_status` (the checkpoints on disk
    stay valid: they are written atomically).
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int) -> None:
        self.signum = signum

    @contextmanager
    def on_signals(self) -> Iterator[StopRequest]:
        """Within the block, SIGTERM and SIGINT request a stop; the old handlers come back after."""
        previous = {signum: signal.signal(signum, self.handle) for signum in STOP_SIGNALS}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def handle(self, signum: int, frame: object = None) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            os.write(2, f"\n{name} again: exiting now, without a checkpoint\n".encode())
            os._exit(exit_status(signum))
        self.request(signum)
        # os.write, not print: the signal may have interrupted a write to stderr (the progress
        # bar), and a buffered stream refuses to be re-entered.
        message = (
            f"\n{name}: stopping after this step and writing a checkpoint "
            f"(send it again to exit at once)\n"
        )
        os.write(2, message.encode())


def check_budget(run: Run, stop: StopRequest) -> tuple[bool, bool]:
    """(whether the step or time budget is spent, whether a stop was requested). Rank 0's clock
    decides the budget, so all ranks stop together (and share its ``train_time`` as the
    schedule's clock); a stop requested on any rank stops every rank at this same step."""
    config, state = run.config, run.state
    over = (config.max_steps is not None and state.step >= config.max_steps) or (
        config.time_budget is not None and state.train_time >= config.time_budget * 60
    )
    stopping = stop.requested
    if run.dist.enabled:
        # One all-reduce a step: rank 0's budget verdict and clock (the others add zeros), and
        # every rank's stop request.
        main = float(run.dist.is_main)
        flags = torch.tensor(
            [float(over) * main, state.train_time * main, float(stopping)],
            dtype=torch.float64,
            device=run.device,
        )
        dist.all_reduce(flags)
        over, state.train_time, stopping = bool(flags[0]), flags[1].item(), bool(flags[2])
    state.schedule_time = state.train_time
    return over, stopping
