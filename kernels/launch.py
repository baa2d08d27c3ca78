"""Launch configurations for the Triton kernels: per GPU architecture, pruned, autotuned.

One job: choose ``BLOCK_M``, ``BLOCK_N``, ``num_warps`` and ``num_stages`` for a kernel launch.

* Each kernel module lists, per kernel, head-dim class and architecture class, a few
  configurations to tune over (best guess first), drawn from BLOCK_M/BLOCK_N 16-128, 4/8 warps
  and 2-3 software-pipeline stages and kept to those the ahead-of-time compile gate
  (:mod:`kernels.compile_gate`) measured to compile without register spills.
* :func:`candidates` prunes that list for one architecture, head dim and dtype *before anything
  is compiled*: a configuration whose estimated shared memory exceeds the architecture's
  per-block limit (:data:`SHARED_MEMORY_PER_BLOCK`: an RTX 30xx/40xx block gets 99 KB where an
  H100's gets 227 KB) is dropped. The estimate is a guide, not a bound: the full compile sweep
  measured the compiler's figure up to 1.7x above it (mask tiles and layout conversions it does
  not count). So the gate checks the real figure for every configuration left on every
  architecture we claim, and one that still does not fit fails to launch and is passed over.
* :func:`pick` autotunes on a GPU: the first launch for a key (kernel, architecture, dtype,
  head dim, masking, and the lengths rounded up to a power of two, so that a new length does
  not re-tune forever) times each candidate with ``triton.testing.do_bench`` and keeps the
  fastest; later launches with that key reuse it. A candidate whose compiled kernel spills
  registers is passed over. ``FLASH_ATTENTION_AUTOTUNE=0`` (or false, off, no) turns timing
  off (the first candidate that compiles without spills, the heuristic choice, is used), as
  does a CUDA-graph capture. Under the Triton interpreter the
  kernels take :data:`INTERPRETER_CONFIG`, one config (tests vary it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch
import triton

# The largest shared memory one block may opt into, in bytes, by compute capability
# (CUDA programming guide, "Technical Specifications per Compute Capability"). Architectures
# not listed get the smallest limit: the kernels are only claimed for these.
SHARED_MEMORY_PER_BLOCK = {
    80: 166912,  # A100
    86: 101376,  # RTX 30xx, A10, A40
    87: 166912,  # Jetson Orin
    89: 101376,  # RTX 40xx, L4, L40
    90: 232448,  # H100, H200
}
CLAIMED_ARCHS = (80, 86, 89, 90)
_SMALLEST_LIMIT = min(SHARED_MEMORY_PER_BLOCK.values())

# Autotuning compiles and times every candidate once per key; keep the list short.
MAX_CANDIDATES = 4


@dataclass(frozen=True)
class LaunchConfig:
    block_m: int  # query rows per tile
    block_n: int  # key rows per tile
    num_warps: int
    num_stages: int

    def meta(self) -> dict:
        return dict(
            BLOCK_M=self.block_m,
            BLOCK_N=self.block_n,
            num_warps=self.num_warps,
            num_stages=self.num_stages,
        )


INTERPRETER_CONFIG = LaunchConfig(64, 64, 4, 1)  # numpy: fewer, larger blocks run faster


@dataclass(frozen=True)
class TileShape:
    """What one program of a kernel keeps in shared memory, in tiles of (rows, head dim).

    ``resident`` tiles are loaded once and held; ``streamed`` tiles are loaded every iteration,
    once per software-pipeline stage. ``resident_is_query``: True when a tile of BLOCK_M query
    rows stays and key blocks stream (forward, dQ), False for the dK/dV pass.
    """

    resident: int
    streamed: int
    resident_is_query: bool

    def shared_memory(self, config: LaunchConfig, block_d: int, itemsize: int) -> int:
        """Bytes: resident tiles, streamed tiles once per pipeline stage, one score tile, and
        1 KiB of barriers. An estimate of what Triton 3.6-3.9 allocate, not a bound: the
        compiler allocated up to 1.7x more in the full compile sweep (the gate checks)."""
        held, streamed = (config.block_m, config.block_n)
        if not self.resident_is_query:
            held, streamed = streamed, held
        tiles = (
            self.resident * held * block_d + config.num_stages * self.streamed * streamed * block_d
        )
        return itemsize * (tiles + config.block_m * config.block_n) + 1024


def shared_memory_limit(capability: int) -> int:
    return SHARED_MEMORY_PER_BLOCK.get(capability, _SMALLEST_LIMIT)


def candidates(
    tile: TileShape, configs: list[LaunchConfig], capability: int, block_d: int, dtype: torch.dtype
) -> list[LaunchConfig]:
    """``configs`` (best guess first) less those that would not fit this architecture's shared
    memory, at most MAX_CANDIDATES of them; never empty (the smallest is kept as a floor)."""
    limit = shared_memory_limit(capability)
    fits = [c for c in configs if tile.shared_memory(c, block_d, dtype.itemsize) <= limit]
    if not fits:
        fits = [min(configs, key=lambda c: tile.shared_memory(c, block_d, dtype.itemsize))]
    return fits[:MAX_CANDIDATES]


def capability(device: torch.device) -> int:
    """Compute capability as an int, e.g. 90 for an H100."""
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def autotune_enabled() -> bool:
    """``FLASH_ATTENTION_AUTOTUNE`` is on unless set to 0, false, off or no (any case)."""
    setting = os.environ.get("FLASH_ATTENTION_AUTOTUNE", "1").strip().lower()
    return setting not in ("", "0", "false", "off", "no")


# CUDA's grid limits: x up to 2^31 - 1 blocks, y and z up to 65,535.
GRID_LIMITS = (2**31 - 1, 65535, 65535)


def grid(batch_heads: int, row_blocks: int) -> tuple[int, int]:
    """The launch grid of every attention kernel: (batch * heads, blocks of rows).

    batch * heads goes on axis 0, the only one that takes more than 65,535 blocks (batch 1024
    with 64 heads is 65,536 already); the kernels read it as ``tl.program_id(0)``. A grid past
    the limits is refused with the sizes that caused it, before anything is launched.
    """
    for axis, (size, limit) in enumerate(
        zip((batch_heads, row_blocks), GRID_LIMITS[:2], strict=True)
    ):
        if size > limit:
            what = "batch * heads" if axis == 0 else "blocks of rows (length / block size)"
            raise ValueError(
                f"launch grid axis {axis} ({what}) would be {size:,} blocks; CUDA allows at "
                f"most {limit:,}: split the batch or the sequence"
            )
    return batch_heads, row_blocks


def is_empty(grid_: tuple[int, ...]) -> bool:
    """A grid with a zero dimension (an empty batch or length) has nothing to launch or tune."""
    return any(size == 0 for size in grid_)


def capturing() -> bool:
    """Whether the current CUDA stream is being captured into a CUDA graph: nothing may be
    timed or synchronized then."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def length_bucket(n: int) -> int:
    """Lengths rounded up to a power of two, so tuning happens O(log n) times, not per length.
    Zero is a bucket of its own: a pass over keys with no queries (all zeros) must not choose
    for the one-token calls."""
    return triton.next_power_of_2(n) if n > 0 else 0


_TUNED: dict[tuple[Hashable, bool], LaunchConfig] = {}


def tuned_configs() -> dict[Hashable, LaunchConfig]:
    """What the launcher chose so far, by key (benchmarks record it)."""
    return {key: config for (key, _), config in _TUNED.items()}


def spills(compiled) -> bool:
    """Whether a compiled kernel keeps registers in local memory (ptxas spilled them)."""
    return bool(getattr(compiled, "n_spills", 0))


def pick(
    key: Hashable,
    configs: list[LaunchConfig],
    launch: Callable[[LaunchConfig], object],
) -> LaunchConfig:
    """The config to launch with, chosen on the first call for ``key`` and kept.

    ``launch(config)`` runs the kernel once (it must be safe to repeat: the kernels only write
    their outputs) and returns Triton's compiled kernel. A config that fails to compile or run
    (e.g. Triton's OutOfResources), or whose registers spill, is passed over: the estimates in
    :func:`candidates` are generous, and ptxas has the last word. With autotuning on, the
    others are timed with ``do_bench`` and the fastest wins; with it off, or while a CUDA graph
    is being captured (``do_bench`` synchronizes, which a capture forbids), the first one left.
    """
    if len(configs) == 1:
        return configs[0]
    tune = autotune_enabled() and not capturing()
    if (key, tune) in _TUNED:
        return _TUNED[key, tune]
    from triton.testing import do_bench

    timings, spilled, failures = {}, [], []
    for config in configs:
        try:
            compiled = launch(config)
        except ValueError:  # our own refusals (e.g. a grid past CUDA's limits) say what is wrong
            raise
        except Exception as err:  # a config this GPU cannot run is simply not chosen
            failures.append((config, f"{type(err).__name__}: {err}"))
            continue
        if spills(compiled):  # correct but slow: only if nothing else runs
            spilled.append(config)
            continue
        timings[config] = do_bench(lambda c=config: launch(c), warmup=5, rep=20) if tune else 0.0
        if not tune:
            break
    if not timings and not spilled:
        raise RuntimeError(f"no launch configuration could run for {key}: {failures}")
    _TUNED[key, tune] = min(timings, key=timings.get) if timings else spilled[0]
    return _TUNED[key, tune]
