"""The forward kernel: one program per tile of queries, an online softmax over key blocks.

Dropout (HAS_DROPOUT), as ``F.scaled_dot_product_attention`` applies it: the softmax's
normaliser l (and so the log-sum-exp) sums the probabilities *before* dropout, and
O_i = sum_j P_ij * Z_ij * V_j with Z_ij = keep_ij / (1 - p), keep_ij from tiles._dropout_keep.
The kernel accumulates sum_j exp(s_ij - m_i) keep_ij V_j and multiplies by 1 / (1 - p) once,
with the division by l, at the end.

LARGE_OFFSETS: every row and lane offset in int64 (see :mod:`kernels.common.jit`).
"""

import triton
import triton.language as tl

from kernels.common.jit import (
    LOG2_E,
    dot,
    head_rows,
    normalise,
    online_softmax_step,
    program_tile,
    round_to,
    widen,
)
from kernels.flash_attention.tiles import (
    _block_ranges,
    _dropout_keep,
    _head_dim_lanes,
    _load_rows,
    _mask_key_block,
    _modify_scores,
    _packed_sequence,
    _stage_blocks,
    alibi_slope,
)


@triton.jit
def _fwd_key_blocks(
    acc, l_i, m_i, q, K, V, M,
    stride_kn, stride_vn, stride_mm, stride_mn,
    rows, offs_n, dqk_ok, dv_ok, start, stop, LEN_Q, LEN_K, qk_scale_log2,
    anchor_shift, window_left, window_right, softcap_log2, slope_log2,
    seed, rng_offset, dropout_p, row_ids,
    MASKED: tl.constexpr, HAS_MASK: tl.constexpr, MASK_FLOAT: tl.constexpr,
    MASK_ROWS: tl.constexpr, WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    EVEN_DQK: tl.constexpr, EVEN_DV: tl.constexpr, BLOCK_N: tl.constexpr,
    EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """The online softmax over key blocks [start, stop) for one tile of queries; MASKED blocks
    check bounds and the window (see _mask_key_block), the others load without any check. With
    HAS_DROPOUT the dropped pairs join the row sum l but not the output (unscaled here)."""
    for start_n in range(start, stop, BLOCK_N):
        cols = start_n + offs_n
        k = _load_rows(K + cols[:, None] * stride_kn, cols, LEN_K, dqk_ok, MASKED, EVEN_DQK)
        v = _load_rows(V + cols[:, None] * stride_vn, cols, LEN_K, dv_ok, MASKED, EVEN_DV)

        s = dot(q, tl.trans(k), EMULATE_BF16, PRECISION) * qk_scale_log2  # (i, j), log2 units
        s, _ = _modify_scores(
            s, rows, cols, anchor_shift, softcap_log2, slope_log2, HAS_SOFTCAP, HAS_ALIBI
        )
        s = _mask_key_block(
            s, M, stride_mm, stride_mn, rows, cols, LEN_Q, LEN_K,
            anchor_shift, window_left, window_right,
            MASKED, HAS_MASK, MASK_FLOAT, MASK_ROWS, WINDOW_LEFT, WINDOW_RIGHT,
        )  # fmt: skip

        p, alpha, l_i, m_i = online_softmax_step(s, m_i, l_i)
        if HAS_DROPOUT:
            p = tl.where(_dropout_keep(seed, rng_offset, row_ids, cols, LEN_K, dropout_p), p, 0.0)
        # p is rounded to the value dtype so the second product runs on 16-bit tensor cores.
        acc = acc * alpha[:, None] + dot(
            round_to(p, v.dtype, EMULATE_BF16), v, EMULATE_BF16, PRECISION
        )
    return acc, l_i, m_i


@triton.jit
def _visible_key_blocks(start_m, LEN_Q, LEN_K, anchor_shift, window_left, window_right,
                        WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """(start, whole_start, whole_stop, stop) of the key blocks the query tile at start_m
    visits (see _block_ranges): query i sees keys a(i) - left <= j <= a(i) + right, a(i) =
    i + anchor_shift. stop may be <= start: then no key is visible at all."""
    last = tl.minimum(start_m + BLOCK_M, LEN_Q) - 1
    return _block_ranges(
        start_m, last, LEN_K, anchor_shift, window_left, window_right,
        WINDOW_LEFT, WINDOW_RIGHT, BLOCK_N,
    )  # fmt: skip


@triton.jit
def _initial_stats(Sinks, off_h, BLOCK_M: tl.constexpr, HAS_SINKS: tl.constexpr):
    """(m, l) the online softmax starts from: (-inf, 0), or with a sink (its logit, 1): the
    sink joins every row's denominator as one more score, which adds to no output."""
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)  # running max, log2 units
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)  # running sum of exp2(s - m_i)
    if HAS_SINKS:
        sink = tl.load(Sinks + off_h).to(tl.float32) * LOG2_E
        m_i = tl.zeros((BLOCK_M,), dtype=tl.float32) + sink
        l_i = l_i + 1.0
    return m_i, l_i


# seed and rng_offset change every call: no specialisation on their values (a recompile).
@triton.jit(do_not_specialize=["seed", "rng_offset"])
def _attn_fwd(
    Q, K, V, Mask, Out, Lse,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_mb, stride_mh, stride_mm, stride_mn,
    H, GROUP, LEN_Q, LEN_K, HEAD_DIM_QK, HEAD_DIM_V, qk_scale_log2,
    anchor_shift, window_left, window_right, softcap_log2, Slopes, stride_sb, stride_sh, Sinks,
    seed, rng_offset, dropout_p, keep_scale, CuSeqlensQ, CuSeqlensK,
    HAS_MASK: tl.constexpr, MASK_FLOAT: tl.constexpr, MASK_ROWS: tl.constexpr,
    WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    HAS_ALIBI: tl.constexpr, HAS_SINKS: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    EVEN_DQK: tl.constexpr, EVEN_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr, LARGE_OFFSETS: tl.constexpr = False,
    VARLEN: tl.constexpr = False,
):  # fmt: skip
    off_bh, off_b, off_h, start_m = program_tile(H, BLOCK_M)
    row_base = off_bh.to(tl.int64) * LEN_Q  # this tile's first row in (b * h * len_q)
    if VARLEN:  # packed sequences: from here on LEN_Q, LEN_K are sequence off_b's own
        Q, K, V, Out, LEN_Q, LEN_K, anchor_shift, row_base, rng_offset, _, _ = _packed_sequence(
            Q, K, V, Out, stride_qm, stride_kn, stride_vn, stride_om, CuSeqlensQ, CuSeqlensK,
            off_b, off_h, H, LEN_Q, LEN_K, rng_offset,
        )  # fmt: skip
        if start_m >= LEN_Q:
            return
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_dqk, offs_dv, dqk_ok, dv_ok = _head_dim_lanes(HEAD_DIM_QK, HEAD_DIM_V, BLOCK_DQK, BLOCK_DV)

    stride_qm, stride_qd = widen(stride_qm, LARGE_OFFSETS), widen(stride_qd, LARGE_OFFSETS)
    q_ptrs = Q + off_b * stride_qb + off_h * stride_qh
    q_ptrs += rows[:, None] * stride_qm + offs_dqk[None, :] * stride_qd
    q = _load_rows(q_ptrs, rows, LEN_Q, dqk_ok, True, EVEN_DQK)  # (i, DQK)
    off_hk = off_h // GROUP  # the key/value head this query head reads (GROUP > 1: GQA)
    k_base, stride_kn = head_rows(
        K, off_b, off_hk, stride_kb, stride_kh, stride_kn, offs_dqk, stride_kd, LARGE_OFFSETS
    )
    v_base, stride_vn = head_rows(
        V, off_b, off_hk, stride_vb, stride_vh, stride_vn, offs_dv, stride_vd, LARGE_OFFSETS
    )
    m_base = Mask + off_b * stride_mb + off_h * stride_mh  # this (batch, head)'s mask
    stride_mm, stride_mn = widen(stride_mm, LARGE_OFFSETS), widen(stride_mn, LARGE_OFFSETS)
    slope_log2 = alibi_slope(Slopes, off_b, off_h, stride_sb, stride_sh, HAS_ALIBI)

    m_i, l_i = _initial_stats(Sinks, off_h, BLOCK_M, HAS_SINKS)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)  # unnormalised output

    # Three stages, generalising Triton's fused-attention tutorial: the key blocks that
    # straddle the window's lower edge (masked), the whole, fully visible ones (no bounds
    # checks, no window mask), then those that straddle its upper edge or the end (masked);
    # blocks outside the window are never visited.
    ranges = _visible_key_blocks(
        start_m, LEN_Q, LEN_K, anchor_shift, window_left, window_right,
        WINDOW_LEFT, WINDOW_RIGHT, BLOCK_M, BLOCK_N,
    )  # fmt: skip
    row_ids = row_base + rows  # this tile's rows in (b * h * len_q), or packed (h * total_q)
    for stage in tl.static_range(0 if WINDOW_LEFT else 1, 3):  # no lower edge: no stage 0
        start, stop = _stage_blocks(stage, ranges)
        acc, l_i, m_i = _fwd_key_blocks(
            acc, l_i, m_i, q, k_base, v_base, m_base, stride_kn, stride_vn, stride_mm,
            stride_mn, rows, offs_n, dqk_ok, dv_ok, start, stop, LEN_Q, LEN_K, qk_scale_log2,
            anchor_shift, window_left, window_right, softcap_log2, slope_log2,
            seed, rng_offset, dropout_p, row_ids,
            stage != 1, HAS_MASK, MASK_FLOAT, MASK_ROWS, WINDOW_LEFT, WINDOW_RIGHT,
            HAS_SOFTCAP, HAS_ALIBI, HAS_DROPOUT, EVEN_DQK, EVEN_DV, BLOCK_N, EMULATE_BF16,
            PRECISION,
        )  # fmt: skip

    out, lse = normalise(acc, l_i, m_i, keep_scale, HAS_DROPOUT)
    stride_om, stride_od = widen(stride_om, LARGE_OFFSETS), widen(stride_od, LARGE_OFFSETS)
    o_ptrs = Out + off_b * stride_ob + off_h * stride_oh
    o_ptrs += rows[:, None] * stride_om + offs_dv[None, :] * stride_od
    o_ok = (rows[:, None] < LEN_Q) & dv_ok[None, :]
    tl.store(o_ptrs, round_to(out, Out.dtype.element_ty, EMULATE_BF16), mask=o_ok)
    tl.store(Lse + row_ids, lse, mask=rows < LEN_Q)
