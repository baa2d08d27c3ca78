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


@triton.jit
def _packed_sequence(
    Q, K, V, Rows, stride_qm, stride_kn, stride_vn, stride_rm, CuSeqlensQ, CuSeqlensK,
    off_b, off_h, H, LEN_Q, LEN_K, rng_offset,
):  # fmt: skip
    """Packed sequences (VARLEN): sequence ``off_b`` of the packed tensors, as its programs see it.

    LEN_Q and LEN_K are the packed totals; CuSeqlensQ and CuSeqlensK the int32 cumulative
    lengths (batch + 1,); Q, K, V and Rows (the output, or its gradient) point at token 0 of the
    (batch, h, total, d) views whose batch stride is 0. Returns (Q, K, V, Rows, len_q, len_k,
    row_base, rng_offset, q_start, k_start): the pointers moved to the sequence's first query
    and key token, its own lengths (from here on the program works on the sequence alone: its
    causal anchoring, bounds and blocks are its own), the packed (h, total_q) row of head
    ``off_h``'s first query (log-sum-exp, delta, dQ), the dropout counter offset that makes
    every pair's Philox counter unique across sequences -- with ``tiles._dropout_keep``'s
    (row_base + i) * len_k + j it is ``rng_offset + off_b * H * LEN_Q * LEN_K +
    (off_h * LEN_Q + i) * len_k + j`` for query i and key j of the sequence -- and the
    sequence's first query and key token (int64).
    """
    q_start = tl.load(CuSeqlensQ + off_b).to(tl.int64)
    k_start = tl.load(CuSeqlensK + off_b).to(tl.int64)
    len_q = tl.load(CuSeqlensQ + off_b + 1) - tl.load(CuSeqlensQ + off_b)
    len_k = tl.load(CuSeqlensK + off_b + 1) - tl.load(CuSeqlensK + off_b)
    row_base = off_h * LEN_Q + q_start
    rng_offset = rng_offset + off_b * H * LEN_Q * LEN_K - q_start * len_k
    Q, Rows = Q + q_start * stride_qm, Rows + q_start * stride_rm
    K, V = K + k_start * stride_kn, V + k_start * stride_vn
    return Q, K, V, Rows, len_q, len_k, row_base, rng_offset, q_start, k_start


@triton.jit
def _packed_row(off_h, rows_per_head, first, padded_row, VARLEN: tl.constexpr):
    """The first row of head ``off_h`` in a per-row buffer: ``padded_row`` in a padded call, and
    with packed sequences (VARLEN) ``off_h * rows_per_head + first``, the (h, total) rows."""
    if VARLEN:
        return off_h * rows_per_head + first
    return padded_row
