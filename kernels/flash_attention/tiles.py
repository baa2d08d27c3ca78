"""Tile-level helpers of the flash-attention kernels (what the additive kernel uses too lives in
:mod:`kernels.common.jit`).

``@triton.jit`` functions inlined into the forward and backward kernels: the head-dim lanes,
bounds-checked tile loads, the attention mask of a tile and the dropout keep-mask.
"""

import triton
import triton.language as tl

from kernels.common.jit import LOG2_E


@triton.jit
def _head_dim_lanes(
    HEAD_DIM_QK, HEAD_DIM_V, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr
):  # fmt: skip
    """(offs_dqk, offs_dv, dqk_ok, dv_ok): q and k have head dim HEAD_DIM_QK (padded to
    BLOCK_DQK), v, dO and out HEAD_DIM_V (padded to BLOCK_DV); the padded lanes load as 0 and are
    never stored."""
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    return offs_dqk, offs_dv, offs_dqk < HEAD_DIM_QK, offs_dv < HEAD_DIM_V


@triton.jit
def _load_rows(ptrs, rows, n_rows, d_ok, PARTIAL: tl.constexpr, EVEN_D: tl.constexpr):
    """A (rows, D) tile. Rows are bounds-checked only in a PARTIAL block, head-dim lanes only
    when the head dim is padded (not EVEN_D); padding loads as 0."""
    if PARTIAL:
        ok = rows[:, None] < n_rows
        if not EVEN_D:
            ok = ok & d_ok[None, :]
        tile = tl.load(ptrs, mask=ok, other=0.0)
    elif EVEN_D:
        tile = tl.load(ptrs)
    else:
        tile = tl.load(ptrs, mask=d_ok[None, :], other=0.0)
    return tile


@triton.jit
def _apply_mask(
    s, M, stride_mm, stride_mn, rows, cols, LEN_Q, LEN_K,
    MASK_FLOAT: tl.constexpr, MASK_ROWS: tl.constexpr,
):  # fmt: skip
    """Scores s (i, j), in log2 units, with the attention mask of this tile applied.

    ``M`` points at this batch's and head's mask, read with its own strides (0 on an axis it
    broadcasts over). A boolean mask (read as bytes) sets the pairs that take no part to -inf;
    a float mask is added to the scores (times log2 e: s is in log2 units). Without MASK_ROWS
    the mask broadcasts over queries and one value per key is read; with it, an (i, j) tile.
    Reads past len_q or len_k give 0 (a pair there is hidden or never stored anyway).
    """
    if MASK_ROWS:
        ptrs = M + rows[:, None] * stride_mm + cols[None, :] * stride_mn
        m = tl.load(ptrs, mask=(rows[:, None] < LEN_Q) & (cols[None, :] < LEN_K), other=0)
    else:
        m = tl.load(M + cols * stride_mn, mask=cols < LEN_K, other=0)[None, :]
    if MASK_FLOAT:
        s = s + m.to(tl.float32) * LOG2_E
    else:
        s = tl.where(m != 0, s, float("-inf"))
    return s


@triton.jit
def _mask_key_block(
    s, M, stride_mm, stride_mn, rows, cols, LEN_Q, LEN_K, causal_shift,
    MASKED: tl.constexpr, HAS_MASK: tl.constexpr, MASK_FLOAT: tl.constexpr,
    MASK_ROWS: tl.constexpr, IS_CAUSAL: tl.constexpr,
):  # fmt: skip
    """Scores (i, j) of one key block with the mask applied and hidden pairs set to -inf.

    A MASKED block may run past len_k or cross the causal diagonal, so it checks bounds and
    builds the causal mask; any other block is whole and wholly visible to every query of the
    tile, and only the attention mask, when given, is read.
    """
    if HAS_MASK:
        s = _apply_mask(s, M, stride_mm, stride_mn, rows, cols, LEN_Q, LEN_K, MASK_FLOAT, MASK_ROWS)
    if MASKED:
        valid = (cols < LEN_K)[None, :]
        if IS_CAUSAL:
            valid = valid & (cols[None, :] <= rows[:, None] + causal_shift)
        s = tl.where(valid, s, float("-inf"))
    return s


@triton.jit
def _dropout_keep(seed, rng_offset, row_ids, cols, LEN_K, dropout_p):
    """(i, j) bool: which (query, key) pairs of this tile dropout keeps, each with chance 1 - p.

    One uniform number per pair from Philox, ``tl.rand(seed, counter)``, where the counter is
    the call's ``rng_offset`` plus the pair's place in the whole (b * h, len_q, len_k) score
    tensor: ``row_ids`` (BLOCK_M,) are b * h * len_q + i, so the counter is
    rng_offset + row_id * len_k + j. It is computed in int64 (tl.rand takes 64-bit counters:
    their high 32 bits become Philox's second counter word), so it cannot overflow at any size
    the launch grid allows (b * h * len_q * len_k < 2^62). Every kernel that touches a pair
    (the forward, both backward passes, and the test helper dropout.dropout_keep_mask) computes
    its keep bit here, from the same counter, so the backward sees exactly the forward's mask.
    Pairs past len_q or len_k get numbers too; they are hidden (p = 0) or never stored.
    """
    counters = rng_offset + row_ids.to(tl.int64)[:, None] * LEN_K + cols[None, :]
    return tl.rand(seed, counters) >= dropout_p
