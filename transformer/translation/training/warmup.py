"""Before the time budget's clock starts: compile the kernels a run will launch, and keep the
tuner's choices on disk.

A run with ``--attention triton`` on a GPU would otherwise compile each kernel specialisation the
first time a batch launches it (encoder, causal decoder and cross-attention, forward and
backward, every class of lengths, one-token decoding in validation; every configuration
autotuning times), about a second each, one at a time, inside the budget. :func:`warm_kernels`
compiles them all first, in parallel on every CPU core (:mod:`kernels.common.warm`), and
:func:`tune_cache` keeps autotuning's choices in a file, so tuning happens once and two runs of
the same shapes launch the same configurations.

Which specialisations a run launches is read off the run's own model: the model takes a
training step (forward, loss, backward, under the run's autocast) for every pair of
representative source and target lengths (:data:`LENGTHS`) and decodes one token at a time as
validation does, with every kernel launch recorded instead of run (:func:`record_launches`).
Triton tells integers apart only by whether they equal 1 and which powers of two up to 16
divide them (and their width), and every integer a kernel takes is a size or a stride, a
product of lengths and constants; so lengths 1, 2, 3, 4, 8 and 16 (each 2-adic class, and 1)
give every class any batch length gives (``tests/test_training_warmup.py`` checks, on the CPU
under the interpreter, that they cover every launch of a real run and of random shapes).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from kernels.common import runtime, tuning, warm
from transformer.layers import DecoderCache
from transformer.model import Transformer
from transformer.translation.devices import autocast
from transformer.translation.training.config import TrainConfig
from transformer.translation.training.setup import Process

LENGTHS = (1, 2, 3, 4, 8, 16)  # one length per class Triton specialises on (see above)
# Rows of the stand-in batches: no integer a kernel takes is a multiple of the batch size, but a
# mask of one row is broadcast (stride 0), so one row and several are two classes.
BATCHES = (1, 2)
DECODE_STEPS = 17  # one-token steps: cached key lengths 1 to 17, every class
TUNE_CACHE_NAME = "flash-transformer/launch_choices.json"

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class KernelWarmup:
    """What :func:`warm_kernels` did: launches recorded, distinct kernel builds compiled (or
    found in Triton's cache), builds that failed, wall seconds, worker processes."""

    launches: int
    builds: int
    failed: int
    seconds: float
    processes: int

    def metrics(self) -> dict[str, float]:
        return {
            "kernel_warmup_seconds": round(self.seconds, 3),
            "kernel_warmup_builds": self.builds,
            "kernel_warmup_failed": self.failed,
        }


def uses_kernels(config: TrainConfig, process: Process) -> bool:
    """Whether the run launches compiled Triton kernels: the triton backend on a GPU."""
    return (
        config.model.backend == "triton"
        and process.device.type == "cuda"
        and not runtime.INTERPRETED
    )


def default_tune_cache() -> Path:
    """Where a run keeps autotuning's choices unless ``FLASH_ATTENTION_TUNE_CACHE`` names a file:
    ``$XDG_CACHE_HOME/flash-transformer/launch_choices.json`` (``~/.cache`` without it), one
    file for every run of this user (choices are kept per GPU model and shape class)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / TUNE_CACHE_NAME


@contextlib.contextmanager
def tune_cache(enabled: bool) -> Iterator[Path | None]:
    """Within the block, the tuner reads its choices from, and writes each new one (atomically)
    to, ``FLASH_ATTENTION_TUNE_CACHE`` if set, else :func:`default_tune_cache`; the file (None
    when not ``enabled``: a run without the kernels leaves the environment alone)."""
    if not enabled:
        yield None
        return
    before = os.environ.get(tuning.TUNE_CACHE_ENV)
    path = Path(before) if before else default_tune_cache()
    os.environ[tuning.TUNE_CACHE_ENV] = str(path)
    try:
        yield path
    finally:
        if before is None:
            os.environ.pop(tuning.TUNE_CACHE_ENV, None)


def record_launches(model: Transformer, process: Process, loss: Loss) -> list[runtime.Launch]:
    """Every kernel launch the run's steps and validation make, for every class of lengths,
    recorded (with every configuration the tuner may time), not run. The model is left as it
    was: its mode, no gradients, the random number generators' states."""
    devices = [process.device] if process.device.type == "cuda" else []
    was_training = model.training
    with warm.recording("every") as launches, torch.random.fork_rng(devices=devices):
        try:
            model.train()
            for shape in itertools.product(BATCHES, LENGTHS, LENGTHS):
                _train_shapes(model, process, loss, *shape)
            model.eval()
            with torch.no_grad():
                for batch, src_len in itertools.product(BATCHES, LENGTHS):
                    steps = DECODE_STEPS if src_len == LENGTHS[-1] else 1
                    _decode_shapes(model, process, batch, src_len, steps)
        finally:
            model.train(was_training)
            model.zero_grad(set_to_none=True)
    return launches


def _tokens(model: Transformer, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """A stand-in batch (batch, length) of one token that is not padding."""
    vocab = min(model.config.src_vocab_size, model.config.tgt_vocab_size)
    token = (model.config.pad_id + 1) % vocab
    return torch.full((batch, length), token, dtype=torch.long, device=device)


def _train_shapes(model, process, loss, batch, src_len, tgt_len) -> None:
    """A training step's launches at these sizes: forward, loss and backward, as train_step."""
    src = _tokens(model, batch, src_len, process.device)
    tgt = _tokens(model, batch, tgt_len, process.device)
    with autocast(process.device, process.amp):
        logits = model(src, tgt)
    loss(logits, tgt).backward()


def _decode_shapes(model, process, batch, src_len, steps) -> None:
    """Validation's launches: its teacher-forced loss is a training forward; decoding encodes,
    then feeds one token at a time with a growing key/value cache, as greedy and beam search do
    (cross-attention's launches are the same at every step, self-attention's keys grow)."""
    src = _tokens(model, batch, src_len, process.device)
    with autocast(process.device, process.amp):
        memory, src_key_mask = model.encode(src)
        cache, tokens = DecoderCache(), src[:, :1]
        for _ in range(steps):
            _, cache = model.decode(tokens, memory, src_key_mask, cache)


def warm_kernels(
    model: Transformer,
    process: Process,
    loss: Loss,
    progress: bool,
    compile: Callable[[warm.CompileJob], object] = warm.compile_job,
) -> KernelWarmup:
    """Compile every kernel specialisation the run will launch (:func:`record_launches`) into
    Triton's cache, in parallel; on one process per machine (local rank 0), the other ranks
    waiting for it. ``compile``: :func:`kernels.common.warm.compile_job` (the real compile)."""
    start = time.perf_counter()
    report, launches = warm.CompileReport(0, 0, 0.0), []
    if process.local_rank == 0:
        launches = record_launches(model, process, loss)
        jobs = warm.compile_jobs(launches)
        report = warm.compile_ahead(jobs, compile=compile, progress=progress)
    if process.distributed:
        dist.barrier()
    done = KernelWarmup(
        len(launches), report.builds, len(report.failed), time.perf_counter() - start,
        report.processes,
    )  # fmt: skip
    if process.is_main:
        print(
            f"kernel warm-up: {done.builds} kernel builds ({done.launches} launches recorded) "
            f"on {done.processes} processes in {done.seconds:.1f} s, before the time budget",
            file=sys.stderr,
            flush=True,
        )
        for failure in report.failed[:3]:
            print(f"  could not compile {failure[:500]}", file=sys.stderr)
    return done
