"""Launch configurations for the Triton kernels: per GPU architecture, pruned, autotuned.

One job: choose ``BLOCK_M``, ``BLOCK_N``, ``num_warps`` and ``num_stages`` for a kernel launch.

* :data:`SEARCH_SPACE` is the small space a kernel is tuned over (BLOCK_M 64/128, BLOCK_N
  32/64/128, 4/8 warps, 2-4 software-pipeline stages; the dK/dV pass, which keeps a key block
  resident and streams query blocks, gets the transposed shapes).
* :func:`candidates` prunes it for one architecture, head dim and dtype *before anything is
  compiled*: a configuration whose estimated shared memory exceeds the architecture's per-block
  limit (:data:`SHARED_MEMORY_PER_BLOCK`), or whose tiles would not fit in registers, or that
  gives 8 warps too little work, is dropped. The estimates are deliberately generous; the
  ahead-of-time compile gate (:mod:`kernels.compile_gate`) compiles every configuration left
  for every architecture we claim and checks the real shared memory and spills.
* :func:`pick` autotunes on a GPU: the first launch for a key (kernel, architecture, dtype,
  head dim, masking, and the lengths rounded up to a power of two, so that a new length does
  not re-tune forever) times each candidate with ``triton.testing.do_bench`` and keeps the
  fastest; later launches with that key reuse it. A candidate whose compiled kernel spills
  registers is passed over. ``FLASH_ATTENTION_AUTOTUNE=0`` turns timing off (the first
  candidate that compiles without spills, the heuristic choice, is used). Under the Triton interpreter the
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

# TileShape.registers counts only the big tiles; ptxas allows 255 a thread and needs the rest
# for addresses, row statistics and temporaries. Configs estimated above the budget are not
# tried; those within SAFE come first (measured with the compile gate: above it, ptxas often
# spills a few bytes on sm_80-89).
_REGISTER_BUDGET = 200
_REGISTERS_SAFE = 128
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
    """What one program of a kernel keeps on chip, in tiles of (rows, head dim).

    ``resident`` tiles are loaded once and held; ``streamed`` tiles are loaded every iteration,
    once per pipeline stage; ``scores`` is the number of (BLOCK_M, BLOCK_N) float32 tiles live
    at once (scores, probabilities, their gradients); ``accumulators`` the float32 (rows, d)
    accumulators. ``resident_rows``/``streamed_rows`` say which block size each tile has.
    """

    resident: int
    streamed: int
    scores: int
    accumulators: int
    resident_is_query: bool  # True: tiles of BLOCK_M query rows stay, key blocks stream

    def rows(self, config: LaunchConfig) -> tuple[int, int]:
        """(resident rows, streamed rows) per tile."""
        if self.resident_is_query:
            return config.block_m, config.block_n
        return config.block_n, config.block_m

    def shared_memory(self, config: LaunchConfig, block_d: int, itemsize: int) -> int:
        """Bytes: resident tiles, streamed tiles once per pipeline stage, one score tile, and
        1 KiB of barriers. An upper bound of what Triton 3.6-3.9 allocate (the gate checks)."""
        held, streamed = self.rows(config)
        tiles = (
            self.resident * held * block_d + config.num_stages * self.streamed * streamed * block_d
        )
        return itemsize * (tiles + config.block_m * config.block_n) + 1024

    def registers(self, config: LaunchConfig, block_d: int, itemsize: int) -> float:
        """32-bit registers per thread for the big tiles, spread over the block's threads."""
        held, streamed = self.rows(config)
        words = (
            self.accumulators * held * block_d
            + self.resident * held * block_d * itemsize / 4
            + self.scores * config.block_m * config.block_n
        )
        return words / (32 * config.num_warps)


def _search_space(tile: TileShape) -> tuple[LaunchConfig, ...]:
    resident, streamed = (64, 128), (32, 64, 128)
    configs = []
    for held in resident:
        for other in streamed:
            m, n = (held, other) if tile.resident_is_query else (other, held)
            for warps in (4, 8):
                for stages in (2, 3, 4):
                    configs.append(LaunchConfig(m, n, warps, stages))
    return tuple(configs)


def shared_memory_limit(capability: int) -> int:
    return SHARED_MEMORY_PER_BLOCK.get(capability, _SMALLEST_LIMIT)


def candidates(
    tile: TileShape, capability: int, block_d: int, dtype: torch.dtype
) -> list[LaunchConfig]:
    """The configurations worth trying on this architecture, best guess first."""
    limit = shared_memory_limit(capability)
    itemsize = dtype.itemsize
    kept = [
        config
        for config in _search_space(tile)
        if tile.shared_memory(config, block_d, itemsize) <= limit
        and tile.registers(config, block_d, itemsize) <= _REGISTER_BUDGET
        # 8 warps on a small tile leave each warp too little to do
        and not (config.num_warps == 8 and config.block_m * config.block_n < 64 * 64)
    ]
    if not kept:  # does not happen for head dims <= 128 on the claimed GPUs; a safe floor
        return [LaunchConfig(32, 32, 4, 1)]
    # Best guess first: tiles that leave ptxas room, then big tiles (more reuse per load),
    # then 3 stages, then fewer warps.
    kept.sort(
        key=lambda c: (
            tile.registers(c, block_d, itemsize) > _REGISTERS_SAFE,
            -(c.block_m * c.block_n),
            abs(c.num_stages - 3),
            c.num_warps,
            -c.block_m,
        )
    )
    return kept[:MAX_CANDIDATES]


def capability(device: torch.device) -> int:
    """Compute capability as an int, e.g. 90 for an H100."""
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def autotune_enabled() -> bool:
    return os.environ.get("FLASH_ATTENTION_AUTOTUNE", "1") not in ("", "0")


def length_bucket(n: int) -> int:
    """Lengths rounded up to a power of two, so tuning happens O(log n) times, not per length."""
    return triton.next_power_of_2(max(1, n))


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
    others are timed with ``do_bench`` and the fastest wins; with it off, the first one left.
    """
    if len(configs) == 1:
        return configs[0]
    tune = autotune_enabled()
    if (key, tune) in _TUNED:
        return _TUNED[key, tune]
    from triton.testing import do_bench

    timings, failures = {}, []
    for config in configs:
        try:
            compiled = launch(config)
            if spills(compiled) and (timings or config is not configs[-1]):
                failures.append((config, "spills"))
                continue
            timings[config] = (
                do_bench(lambda c=config: launch(c), warmup=5, rep=20) if tune else 0.0
            )
        except Exception as err:  # a config this GPU cannot run is simply not chosen
            failures.append((config, f"{type(err).__name__}: {err}"))
            continue
        if not tune:
            break
    if not timings:
        raise RuntimeError(f"no launch configuration could run for {key}: {failures}")
    _TUNED[key, tune] = min(timings, key=timings.get)
    return _TUNED[key, tune]
