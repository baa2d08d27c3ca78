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
def _tanh(x):
    """tanh in float32 as ``1 - 2 / (1 + e^(2x))`` (Triton has no tanh of its own): exact at
    the limits (e^(2x) = inf gives 1, 0 gives -1), a float32 ulp of 1 off near 0."""
    return 1.0 - 2.0 / (1.0 + tl.exp2(x * (2.0 * LOG2_E)))


@triton.jit
def _block_ranges(first, last, LEN_OTHER, shift, reach_lo, reach_hi, HAS_LO: tl.constexpr,
                  HAS_HI: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    """The blocks of the other axis that a tile of rows [first, last] visits, when row x sees
    index y of the other axis iff ``x + shift - reach_lo <= y <= x + shift + reach_hi`` (each
    edge only where bounded: HAS_LO, HAS_HI) and ``0 <= y < LEN_OTHER``.

    Returns (start, whole_start, whole_stop, stop), block-aligned but for stop: blocks in
    [start, whole_start) straddle the lower edge and mask; [whole_start, whole_stop) are whole
    and seen by every row of the tile, unmasked; [whole_stop, stop) straddle the upper edge or
    the end, masked. Blocks before start or from stop on are seen by no row: never visited.
    The forward and dQ passes call it over key blocks (x a query, shift the anchor shift,
    reaches the window's left and right); the dK/dV pass over query blocks (x a key, -shift,
    the reaches swapped). Everything stays >= 0 before a division (C and Python round
    negative quotients differently).
    """
    start = first * 0  # 0, as the type of the other bounds
    whole_start = start
    stop = LEN_OTHER + start
    whole_stop = LEN_OTHER // BLOCK * BLOCK
    first_seen = start
    if HAS_LO:
        first_seen = tl.maximum(first + shift - reach_lo, 0)
        start = first_seen // BLOCK * BLOCK
        seen_by_all = tl.maximum(last + shift - reach_lo, 0)
        whole_start = (seen_by_all + BLOCK - 1) // BLOCK * BLOCK
    if HAS_HI:
        stop = tl.minimum(last + shift + reach_hi + 1, LEN_OTHER)
        seen_by_all = tl.maximum(first + shift + reach_hi + 1, 0)
        whole_stop = tl.minimum(whole_stop, seen_by_all // BLOCK * BLOCK)
    if HAS_LO:
        stop = tl.where(first_seen < stop, stop, start)  # nothing seen: nothing visited
        none_whole = whole_stop <= whole_start  # no whole block: every visited block masks
        whole_start = tl.where(none_whole, start, whole_start)
        whole_stop = tl.where(none_whole, start, whole_stop)
    return start, whole_start, whole_stop, stop


@triton.jit
def _stage_blocks(STAGE: tl.constexpr, ranges):
    """(start, stop) of stage 0 (lower-edge blocks, masked), 1 (whole, unmasked) or 2
    (upper-edge and last blocks, masked) from _block_ranges' four bounds."""
    if STAGE == 0:
        lo, hi = ranges[0], ranges[1]
    elif STAGE == 1:
        lo, hi = ranges[1], ranges[2]
    else:
        lo, hi = ranges[2], ranges[3]
    return lo, hi


@triton.jit
def alibi_slope(Slopes, off_b, off_h, stride_sb, stride_sh, HAS_ALIBI: tl.constexpr):
    """This (batch, head)'s ALiBi slope times log2 e (the scores' units); 0 without ALiBi."""
    slope = 0.0
    if HAS_ALIBI:
        slope = tl.load(Slopes + off_b * stride_sb + off_h * stride_sh) * LOG2_E
    return slope


@triton.jit
def _in_window(valid, rows, cols, anchor_shift, window_left, window_right,
               WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr):  # fmt: skip
    """valid (i, j) and, for each bounded edge, a(i) - left <= j <= a(i) + right, where
    a(i) = i + anchor_shift (causality is right = 0)."""
    if WINDOW_RIGHT:
        valid = valid & (cols[None, :] <= rows[:, None] + (anchor_shift + window_right))
    if WINDOW_LEFT:
        valid = valid & (cols[None, :] >= rows[:, None] + (anchor_shift - window_left))
    return valid


@triton.jit
def _modify_scores(s, rows, cols, anchor_shift, softcap_log2, slope_log2,
                   HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr):  # fmt: skip
    """(scores, capped) of a tile of scaled scores s (log2 units): softcapped,
    ``c tanh(s / c)`` with softcap_log2 = c log2 e (the cap in the same units), then ALiBi's
    ``-slope |a(i) - j|`` added (slope_log2 = slope log2 e). ``capped`` is the softcapped score
    before ALiBi, whose (1 - tanh^2) the backward needs; s itself without HAS_SOFTCAP."""
    if HAS_SOFTCAP:
        s = softcap_log2 * _tanh(s / softcap_log2)
    capped = s
    if HAS_ALIBI:
        distance = rows[:, None] + anchor_shift - cols[None, :]
        s = s - slope_log2 * tl.abs(distance).to(tl.float32)
    return s, capped


@triton.jit
def _mask_key_block(
    s, M, stride_mm, stride_mn, rows, cols, LEN_Q, LEN_K,
    anchor_shift, window_left, window_right,
    MASKED: tl.constexpr, HAS_MASK: tl.constexpr, MASK_FLOAT: tl.constexpr,
    MASK_ROWS: tl.constexpr, WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr,
):  # fmt: skip
    """Scores (i, j) of one key block with the mask applied and hidden pairs set to -inf.

    A MASKED block may run past len_k or straddle a window edge (causality's diagonal is one),
    so it checks bounds and the window; any other block is whole and wholly visible to every
    query of the tile, and only the attention mask, when given, is read.
    """
    if HAS_MASK:
        s = _apply_mask(s, M, stride_mm, stride_mn, rows, cols, LEN_Q, LEN_K, MASK_FLOAT, MASK_ROWS)
    if MASKED:
        valid = _in_window(
            (cols < LEN_K)[None, :], rows, cols, anchor_shift, window_left, window_right,
            WINDOW_LEFT, WINDOW_RIGHT,
        )  # fmt: skip
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
    anchor_shift, row_base, rng_offset, q_start, k_start): the pointers moved to the
    sequence's first query and key token, its own lengths (from here on the program works on
    the sequence alone: its bounds and blocks are its own), its anchor shift len_k - len_q
    (causality, the window and ALiBi anchored bottom-right in each sequence, as
    FlashAttention-2's varlen anchors them), the packed (h, total_q) row of head
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
    return Q, K, V, Rows, len_q, len_k, len_k - len_q, row_base, rng_offset, q_start, k_start


@triton.jit
def _packed_row(off_h, rows_per_head, first, padded_row, VARLEN: tl.constexpr):
    """The first row of head ``off_h`` in a per-row buffer: ``padded_row`` in a padded call, and
    with packed sequences (VARLEN) ``off_h * rows_per_head + first``, the (h, total) rows."""
    if VARLEN:
        return off_h * rows_per_head + first
    return padded_row
