"""Running kernels: where they run, their buffers, their grid, and the one :func:`launch`.

Every kernel launch of both kernels goes through :func:`launch`, so there is one place to watch
or redirect them: a :class:`Hook`, installed for a block with :func:`hooked`, receives each
launch (a :class:`Launch`) instead of the GPU. The compile gate records launches on ``meta``
tensors to compile them for an architecture it does not have; the warm-up hands them to
Triton's ``JITFunction.warmup`` (compile, do not run); tests record or refuse them. A hook also
answers the compute capability (meta tensors have no GPU to ask) and may tell the tuner which
configurations to launch (:mod:`kernels.common.tuning`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch

from kernels.common import jit

# INTERPRETED: whether the kernels are interpreted (on the CPU, with numpy, taking CPU tensors)
# rather than compiled; Triton decides when ``@triton.jit`` runs (kernels.common.jit).
INTERPRETED = jit.INTERPRETED


def empty(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """Every buffer a launcher hands to a kernel is allocated here (uninitialised: the kernels
    write every element of their outputs, which ``tests/test_flash_launch.py`` checks)."""
    return torch.empty(shape, dtype=dtype, device=device)


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


class Launch(NamedTuple):
    """One kernel launch: ``kernel[grid](*args, **meta)``; ``meta`` holds the constexprs and
    ``num_warps``/``num_stages``."""

    kernel: Any  # a triton JITFunction
    grid: tuple[int, ...]
    args: tuple
    meta: dict

    def run(self):
        """Launch it; Triton's compiled kernel."""
        return self.kernel[self.grid](*self.args, **self.meta)


@dataclass(frozen=True)
class Hook:
    """Where launches go while it is installed (:func:`hooked`), instead of the GPU.

    ``on_launch(launch)`` gets every launch of a non-empty grid and returns what
    :meth:`Launch.run` would (Triton's compiled kernel, whose spills the tuner reads), or None
    (nothing compiled here: counts as no spill). ``arch``: the compute capability to choose
    launch tables for (None: ask the tensors' GPU). ``configs``: which candidate
    configurations a tuned launch runs: ``"pick"`` as without a hook (the tuner's choice),
    ``"every"`` each in turn (to compile them all ahead of time), ``"first"`` the first only.
    """

    on_launch: Callable[[Launch], Any] = Launch.run
    arch: int | None = None
    configs: Literal["pick", "every", "first"] = "pick"


_NO_HOOK = Hook()
_hook = _NO_HOOK  # process-wide: the autograd engine runs backward passes on its own threads


def active_hook() -> Hook:
    """The hook installed now (one that launches as usual when none is)."""
    return _hook


@contextlib.contextmanager
def hooked(hook: Hook) -> Iterator[Hook]:
    """Install ``hook`` for the block (the one before it comes back after)."""
    global _hook
    before, _hook = _hook, hook
    try:
        yield hook
    finally:
        _hook = before


def launch(kernel, grid_: tuple[int, ...], *args, **meta):
    """Launch ``kernel[grid_](*args, **meta)``: every launch of the kernels goes through here.

    Returns Triton's compiled kernel (the tuner reads its spills), or None for an empty grid,
    which a GPU refuses and which has nothing to compute. While a :class:`Hook` is installed the
    launch goes to it instead.
    """
    if is_empty(grid_):
        return None
    return _hook.on_launch(Launch(kernel, tuple(grid_), args, meta))


def capability(device: torch.device) -> int:
    """The compute capability launch tables are chosen for, as an int (90 for an H100): the
    hook's ``arch`` when one is installed with it, else the device's."""
    if _hook.arch is not None:
        return _hook.arch
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def capturing() -> bool:
    """Whether the current CUDA stream is being captured into a CUDA graph: nothing may be
    timed, synchronized or launched but the call's own kernels then."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def emulate_bf16(dtype: torch.dtype) -> bool:
    """The kernels' EMULATE_BF16 constexpr: under the interpreter, which multiplies bfloat16
    blocks as raw bits and narrows to bfloat16 by truncation, bfloat16 products and roundings
    are done through float32 instead."""
    return INTERPRETED and dtype == torch.bfloat16
