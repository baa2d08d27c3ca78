"""Attention dropout's random numbers: each call's seed and offset, and the keep-mask for tests.

The kernels never store a keep-mask: every (query, key) pair's keep bit is a Philox number
computed where it is used (``tiles._dropout_keep``), from the call's (seed, offset) and the
pair's place in the (b * h, len_q, len_k) score tensor, so the backward regenerates the
forward's mask exactly. A call with ``dropout_p > 0`` draws its (seed, offset) with one
``torch.randint`` on torch's default CPU generator (:func:`draw_seed_offset`): after
``torch.manual_seed(s)`` a call is reproducible, and two calls differ. ``dropout_p == 0``
draws nothing and compiles the kernels without any dropout code (HAS_DROPOUT=False).

:func:`dropout_keep_mask` runs the same keep-bit helper in a small kernel of its own, so a test
can feed the kernels' mask to a reference: seed torch, call :func:`draw_seed_offset`, seed torch
again the same way, and the next ``flash_attention`` call uses that (seed, offset).
"""

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from kernels import ops
from kernels.common import runtime
from kernels.flash_attention.tiles import _dropout_keep

# Philox seeds and counter offsets are drawn below 2^31: a kernel argument that fits int32 is
# always passed as one (a larger one would be int64: another signature, another compile).
_RNG_LIMIT = 2**31 - 1


class Dropout(NamedTuple):
    """What the kernels need for dropout: the probability p of dropping a pair, and the
    Philox seed and counter offset of this call. p == 0: no dropout, the rest unused."""

    p: float = 0.0
    seed: int = 0
    offset: int = 0

    @property
    def keep_scale(self) -> float:
        """1 / (1 - p), what a kept probability is multiplied by; 0 when p == 1 (nothing is
        kept, and SDPA returns zeros)."""
        return 1.0 / (1.0 - self.p) if self.p < 1.0 else 0.0


NO_DROPOUT = Dropout()


def draw_seed_offset() -> tuple[int, int]:
    """(seed, offset) for one call with dropout: one ``torch.randint`` draw of two numbers on
    torch's default CPU generator (so ``torch.manual_seed`` governs it, and no GPU sync)."""
    seed, offset = torch.randint(0, _RNG_LIMIT, (2,), dtype=torch.int64).tolist()
    return seed, offset


def check_dropout_p(dropout_p, caller="flash_attention") -> float:
    """dropout_p as a float in [0, 1], or a clear error naming ``caller``. (1 is allowed, as
    SDPA allows it: every probability is dropped and the output is zeros.)"""
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, int | float):
        raise TypeError(
            f"{caller}: dropout_p must be a float in [0, 1], got {type(dropout_p).__name__}"
        )
    dropout_p = float(dropout_p)
    if not (math.isfinite(dropout_p) and 0.0 <= dropout_p <= 1.0):
        raise ValueError(f"{caller}: dropout_p must be in [0, 1], got {dropout_p}")
    return dropout_p


@triton.jit(do_not_specialize=["seed", "rng_offset"])
def _keep_mask_kernel(
    Keep, seed, rng_offset, dropout_p, LEN_Q, LEN_K,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Keep (b * h, len_q, len_k) uint8: one (BLOCK_M, BLOCK_N) tile per program."""
    off_bh = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ids = off_bh.to(tl.int64) * LEN_Q + rows
    keep = _dropout_keep(seed, rng_offset, row_ids, cols, LEN_K, dropout_p)
    ok = (rows[:, None] < LEN_Q) & (cols[None, :] < LEN_K)
    tl.store(Keep + row_ids[:, None] * LEN_K + cols[None, :], keep.to(tl.uint8), mask=ok)


_MASK_BLOCK = 32  # rows and columns per program of the keep-mask kernel


def dropout_keep_mask(seed, offset, batch, heads, len_q, len_k, dropout_p, device):
    """(batch, heads, len_q, len_k) bool: True where a flash_attention call with this dropout_p
    and (seed, offset) keeps the pair (``heads`` are the query heads). For tests: the kernels
    compute exactly these bits, with the same helper, and never store them."""
    dropout_p = check_dropout_p(dropout_p)
    keep = torch.zeros((batch, heads, len_q, len_k), dtype=torch.uint8, device=device)
    grid = (
        batch * heads,
        triton.cdiv(len_q, _MASK_BLOCK),
        triton.cdiv(len_k, _MASK_BLOCK),
    )
    with ops.device_guard(keep):  # Triton launches on the current device, not on keep's
        runtime.launch(
            _keep_mask_kernel, grid,
            keep, seed, offset, dropout_p, len_q, len_k, BLOCK_M=_MASK_BLOCK, BLOCK_N=_MASK_BLOCK,
        )  # fmt: skip
    return keep.bool()
