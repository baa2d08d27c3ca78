"""Size the default model to the compute the run will get.

A model that is right for 10 minutes of one CPU is wrong for 10 minutes of another: with half
the compute, a smaller model that trains more steps ends ahead of the default one (see
docs/cpu_sizing.md for the measurements). So a run that leaves its size to the default
(``--config auto``) first times a matrix product shaped like the default model's feed-forward
layer (2048 tokens × 256 → 512) for about a second, in the dtype it will train in (bf16 under
autocast, else float32) and with the thread count it will train with, and picks:

- ``cpu`` (the defaults tuned on a 2-core CPU with bf16 units, ~9,350 tokens/s) at
  ``FAST_GFLOPS`` or more;
- ``cpu-small`` (narrower, smaller vocabulary, SDPA attention, validation only at the end) below.

The threshold lies between the two machines the presets were measured on: a 2-core AVX2 CPU
training in float32 (88 GFLOP/s matmul rate, ~4,700 tokens/s with the default model: the
default scores 29.6 there) and the 2-core CPU with bf16 units (its default run sustains
~131 GFLOP/s in the whole training step, ~9,350 tokens/s at ~14 MFLOP a token, so its matmul
rate is higher still; docs/cpu_sizing.md).

On a GPU, and in a torchrun run (whose ranks must agree without talking yet), there is no probe:
the choice is ``cpu``, as before. The choice and the measured rate are saved in the run's
``config.json``; a resumed run reads them from there and never probes again.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

FAST_PRESET = "cpu"
SMALL_PRESET = "cpu-small"
PRESETS = (FAST_PRESET, SMALL_PRESET)  # what the probe can choose
FAST_GFLOPS = 110.0  # probe rate from which the default-sized model trains well in the budget
PROBE_SHAPE = (2048, 256, 512)  # (tokens, d_model, d_ff) of the default model's feed-forward


@dataclass(frozen=True)
class Sizing:
    """What the probe measured and which preset it chose (``gflops`` is None when it did not run)."""

    preset: str
    gflops: float | None
    dtype: str
    threads: int
    reason: str

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"sizing preset must be one of {PRESETS}, got {self.preset!r}")


def preset_for(gflops: float) -> str:
    """The preset a run whose probe measured ``gflops`` (GFLOP/s) trains."""
    if not gflops > 0:
        raise ValueError(f"a measured rate must be positive, got {gflops}")
    return FAST_PRESET if gflops >= FAST_GFLOPS else SMALL_PRESET


def measure_gflops(dtype: torch.dtype, seconds: float = 1.0, windows: int = 10) -> float:
    """GFLOP/s of the ``PROBE_SHAPE`` matmul in ``dtype`` on the CPU, with torch's current threads.

    Times the product over ``windows`` windows of ``seconds / windows`` each, after two untimed
    warm-up products, and returns the best window's rate: a first slow window (clock ramping up,
    caches cold) or a moment of someone else's work does not decide the run's size, while a
    machine that stays busy reads slow in every window. Measured on an idle 2-core AMD EPYC with
    bf16 units (torch 2.13.0): the mean over one second read 290-400 GFLOP/s in bfloat16 and
    110-159 in float32 on 2 threads (64-92 on one thread), the first process the lowest.
    """
    tokens, d_model, d_ff = PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(tokens, d_model, generator=generator).to(dtype)
    b = torch.randn(d_model, d_ff, generator=generator).to(dtype)
    for _ in range(2):
        a @ b
    flop, best = 2 * tokens * d_model * d_ff, 0.0
    for _ in range(windows):
        products, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / windows or not products:
            a @ b
            products += 1
        best = max(best, flop * products / elapsed / 1e9)
    return best


def choose(device: str, bf16: bool, threads: int | None) -> Sizing:
    """Measure and choose the preset of a new run on ``device``.

    ``bf16``: whether the run will train under bf16 autocast; ``threads``: its thread count
    (None: torch's default). Sets torch's thread count to ``threads`` as the run will.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    dtype = torch.bfloat16 if bf16 else torch.float32
    name, used = str(dtype).removeprefix("torch."), torch.get_num_threads()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return Sizing(FAST_PRESET, None, name, used, "torchrun: no probe, the ranks must agree")
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return Sizing(FAST_PRESET, None, name, used, "GPU: no probe")
    gflops = measure_gflops(dtype)
    preset = preset_for(gflops)
    side = ">=" if preset == FAST_PRESET else "<"
    reason = f"{name} matmul {gflops:.1f} GFLOP/s on {used} thread(s) {side} {FAST_GFLOPS:g}"
    return Sizing(preset, round(gflops, 2), name, used, reason)
