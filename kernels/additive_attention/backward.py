"""The backward kernels: dV, dKf and the score vector's partial gradients per key block, and dQf
per query block; the rowsum(dO * O) pass is both kernels' own
(:func:`kernels.common.jit.attn_bwd_delta`).

LARGE_OFFSETS: every row and lane offset in int64 (see :mod:`kernels.common.jit`).
"""

import triton
import triton.language as tl

from kernels.additive_attention.tiles import (
    TWO_LOG2_E,
    _additive_scores,
    _feature_rows,
    _probabilities,
)
from kernels.common.jit import (
    LOG2_E,
    dot,
    head_rows,
    head_tile,
    key_is_valid,
    program_tile,
    round_to,
    widen,
)


@triton.jit
def _dkdv_query_blocks(
    dv, dkf, dw, v, k_ptrs, w_ptr, q_base, g_base, Lse, Delta, row_base,
    stride_qm, stride_qa, stride_ka, stride_wa, stride_gm,
    cols, col_ok, key_valid, offs_m, offs_a, e_ok, lo, LEN_Q, LEN_K, A,
    IS_CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Accumulate dV, dKf and dw of one key block over the query blocks from ``lo`` on."""
    for start_m in range(lo, LEN_Q, BLOCK_M):
        rows = start_m + offs_m
        row_ok = rows < LEN_Q
        q_ptrs = q_base + rows * stride_qm
        do = tl.load(
            g_base + rows[:, None] * stride_gm, mask=row_ok[:, None] & e_ok[None, :], other=0.0
        )
        lse = tl.load(Lse + row_base + rows, mask=row_ok, other=0.0)
        delta = tl.load(Delta + row_base + rows, mask=row_ok, other=0.0)
        # Rows that saw no key saved lse = -inf and have no valid pair either; any finite
        # stand-in gives p = 0 rather than exp2(-inf + inf) = NaN.
        lse_log2 = tl.where(lse == float("-inf"), 0.0, lse * LOG2_E)

        s = _additive_scores(
            q_ptrs, k_ptrs, w_ptr, row_ok, col_ok,
            stride_qa, stride_ka, stride_wa, A, BLOCK_M, BLOCK_N,
        )  # fmt: skip
        valid = row_ok[:, None] & key_valid[None, :]
        if IS_CAUSAL:
            valid = valid & (cols[None, :] <= rows[:, None] + (LEN_K - LEN_Q))
        p = _probabilities(s, lse_log2, valid)  # (i, j)

        dv += dot(tl.trans(round_to(p, do.dtype, EMULATE_BF16)), do, EMULATE_BF16, PRECISION)
        dp = dot(do, tl.trans(v), EMULATE_BF16, PRECISION)  # (i, j)
        ds = p * (dp - delta[:, None])  # gradient w.r.t. the scores

        # The feature gradients need tanh per channel again: recompute it channel by channel
        # and put each channel's column into its lane of the (j, A) accumulator.
        for c in range(0, A):
            qc = tl.load(q_ptrs + c * stride_qa, mask=row_ok, other=0.0).to(tl.float32)
            kc = tl.load(k_ptrs + c * stride_ka, mask=col_ok, other=0.0).to(tl.float32)
            wc = tl.load(w_ptr + c * stride_wa).to(tl.float32)
            e2x = tl.exp2((qc * TWO_LOG2_E)[:, None] + (kc * TWO_LOG2_E)[None, :])
            t = 1.0 - 2.0 / (1.0 + e2x)  # tanh, as in _additive_scores  # (i, j)
            lane = offs_a == c
            dkf += tl.where(lane[None, :], (wc * tl.sum(ds * (1.0 - t * t), 0))[:, None], 0.0)
            dw += tl.where(lane, tl.sum(tl.sum(ds * t, 1), 0), 0.0)

    return dv, dkf, dw


@triton.jit
def _additive_bwd_dkdv(
    QF, KF, W, V, Mask, DOut, Lse, Delta, DKF, DV, DWPartial,
    stride_qb, stride_qh, stride_qm, stride_qa,
    stride_kb, stride_kh, stride_kn, stride_ka,
    stride_wh, stride_wa,
    stride_vb, stride_vh, stride_vn, stride_ve,
    stride_gb, stride_gh, stride_gm, stride_ge,
    stride_mb, stride_mh, stride_mn,
    H, LEN_Q, LEN_K, A, VALUE_DIM,
    HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_A: tl.constexpr,
    EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr, LARGE_OFFSETS: tl.constexpr = False,
):  # fmt: skip
    """One program per key block: accumulates dV_j, dKf_j and this block's share of dw.

    DKF (b, h, len_k, a) and DV (b, h, len_k, e) are contiguous; DWPartial is a contiguous
    float32 (b, h, cdiv(len_k, BLOCK_N), a) buffer that the host sums over key blocks and batch.
    """
    off_bh, off_b, off_h, start_n = program_tile(H, BLOCK_N)
    cols = start_n + tl.arange(0, BLOCK_N)
    col_ok = cols < LEN_K
    offs_m = tl.arange(0, BLOCK_M)
    offs_e = tl.arange(0, BLOCK_E)
    offs_a = tl.arange(0, BLOCK_A)
    e_ok = offs_e < VALUE_DIM
    v_ok = col_ok[:, None] & e_ok[None, :]

    k_ptrs, stride_ka = _feature_rows(
        KF, off_b, off_h, stride_kb, stride_kh, cols, stride_kn, stride_ka, LARGE_OFFSETS
    )  # (j,), channel 0
    v_ptrs = head_tile(
        V, off_b, off_h, stride_vb, stride_vh, cols, stride_vn, offs_e, stride_ve, LARGE_OFFSETS
    )
    v = tl.load(v_ptrs, mask=v_ok, other=0.0)
    w_ptr = W + off_h * stride_wh
    stride_wa, stride_mn = widen(stride_wa, LARGE_OFFSETS), widen(stride_mn, LARGE_OFFSETS)
    # The key mask is per key, so this block's slice of it is read once, outside the loop.
    key_valid = key_is_valid(
        Mask, off_b * stride_mb + off_h * stride_mh, stride_mn, cols, LEN_K, HAS_MASK
    )
    q_base = QF + off_b * stride_qb + off_h * stride_qh
    stride_qm, stride_qa = widen(stride_qm, LARGE_OFFSETS), widen(stride_qa, LARGE_OFFSETS)
    g_base, stride_gm = head_rows(
        DOut, off_b, off_h, stride_gb, stride_gh, stride_gm, offs_e, stride_ge, LARGE_OFFSETS
    )
    row_base = off_bh.to(tl.int64) * LEN_Q

    dv = tl.zeros((BLOCK_N, BLOCK_E), dtype=tl.float32)
    dkf = tl.zeros((BLOCK_N, BLOCK_A), dtype=tl.float32)
    dw = tl.zeros((BLOCK_A,), dtype=tl.float32)

    # Bottom-right causal: key j is seen by rows i >= j - (len_k - len_q); earlier query
    # blocks contribute nothing and are skipped.
    lo = 0
    if IS_CAUSAL:
        lo = tl.maximum(0, start_n - (LEN_K - LEN_Q)) // BLOCK_M * BLOCK_M
    dv, dkf, dw = _dkdv_query_blocks(
        dv, dkf, dw, v, k_ptrs, w_ptr, q_base, g_base, Lse, Delta, row_base,
        stride_qm, stride_qa, stride_ka, stride_wa, stride_gm,
        cols, col_ok, key_valid, offs_m, offs_a, e_ok, lo, LEN_Q, LEN_K, A,
        IS_CAUSAL, BLOCK_M, BLOCK_N, EMULATE_BF16, PRECISION,
    )  # fmt: skip

    a_ok = offs_a < A
    row_a, row_e = widen(A, LARGE_OFFSETS), widen(VALUE_DIM, LARGE_OFFSETS)  # output row strides
    dkf_ptrs = DKF + off_bh.to(tl.int64) * LEN_K * A + cols[:, None] * row_a + offs_a[None, :]
    tl.store(
        dkf_ptrs,
        round_to(dkf, DKF.dtype.element_ty, EMULATE_BF16),
        mask=col_ok[:, None] & a_ok[None, :],
    )
    dv_ptrs = DV + off_bh.to(tl.int64) * LEN_K * VALUE_DIM + cols[:, None] * row_e
    tl.store(dv_ptrs + offs_e[None, :], round_to(dv, DV.dtype.element_ty, EMULATE_BF16), mask=v_ok)
    key_block = off_bh.to(tl.int64) * tl.num_programs(1) + tl.program_id(1)
    dw_ptrs = DWPartial + key_block * A + offs_a
    tl.store(dw_ptrs, dw, mask=a_ok)


@triton.jit
def _dq_key_blocks(
    dqf, do, v_base, q_ptrs, k_base, w_ptr, Mask, mask_base, lse_log2, delta,
    stride_kn, stride_vn, stride_qa, stride_ka, stride_wa, stride_mn,
    rows, row_ok, offs_n, offs_a, e_ok, hi, LEN_Q, LEN_K, A,
    HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Accumulate dQf of one query block over the key blocks before ``hi``."""
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < LEN_K
        k_ptrs = k_base + cols * stride_kn
        v = tl.load(
            v_base + cols[:, None] * stride_vn, mask=col_ok[:, None] & e_ok[None, :], other=0.0
        )

        s = _additive_scores(
            q_ptrs, k_ptrs, w_ptr, row_ok, col_ok,
            stride_qa, stride_ka, stride_wa, A, BLOCK_M, BLOCK_N,
        )  # fmt: skip
        valid = (
            row_ok[:, None]
            & key_is_valid(Mask, mask_base, stride_mn, cols, LEN_K, HAS_MASK)[None, :]
        )
        if IS_CAUSAL:
            valid = valid & (cols[None, :] <= rows[:, None] + (LEN_K - LEN_Q))
        p = _probabilities(s, lse_log2, valid)
        dp = dot(do, tl.trans(v), EMULATE_BF16, PRECISION)  # (i, j)
        ds = p * (dp - delta[:, None])

        for c in range(0, A):  # as in _additive_bwd_dkdv, summing over keys instead
            qc = tl.load(q_ptrs + c * stride_qa, mask=row_ok, other=0.0).to(tl.float32)
            kc = tl.load(k_ptrs + c * stride_ka, mask=col_ok, other=0.0).to(tl.float32)
            wc = tl.load(w_ptr + c * stride_wa).to(tl.float32)
            e2x = tl.exp2((qc * TWO_LOG2_E)[:, None] + (kc * TWO_LOG2_E)[None, :])
            t = 1.0 - 2.0 / (1.0 + e2x)  # tanh, as in _additive_scores
            column = wc * tl.sum(ds * (1.0 - t * t), 1)  # (i,)
            dqf += tl.where((offs_a == c)[None, :], column[:, None], 0.0)
    return dqf


@triton.jit
def _additive_bwd_dq(
    QF, KF, W, V, Mask, DOut, Lse, Delta, DQF,
    stride_qb, stride_qh, stride_qm, stride_qa,
    stride_kb, stride_kh, stride_kn, stride_ka,
    stride_wh, stride_wa,
    stride_vb, stride_vh, stride_vn, stride_ve,
    stride_gb, stride_gh, stride_gm, stride_ge,
    stride_mb, stride_mh, stride_mn,
    H, LEN_Q, LEN_K, A, VALUE_DIM,
    HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_A: tl.constexpr,
    EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr, LARGE_OFFSETS: tl.constexpr = False,
):  # fmt: skip
    """One program per query block: accumulates dQf_i over key blocks. DQF is a contiguous
    (b, h, len_q, a) buffer."""
    off_bh, off_b, off_h, start_m = program_tile(H, BLOCK_M)
    rows = start_m + tl.arange(0, BLOCK_M)
    row_ok = rows < LEN_Q
    offs_n = tl.arange(0, BLOCK_N)
    offs_e = tl.arange(0, BLOCK_E)
    offs_a = tl.arange(0, BLOCK_A)
    e_ok = offs_e < VALUE_DIM

    q_ptrs, stride_qa = _feature_rows(
        QF, off_b, off_h, stride_qb, stride_qh, rows, stride_qm, stride_qa, LARGE_OFFSETS
    )  # (i,), channel 0
    stride_gm, stride_ge = widen(stride_gm, LARGE_OFFSETS), widen(stride_ge, LARGE_OFFSETS)
    g_ptrs = DOut + off_b * stride_gb + off_h * stride_gh
    do = tl.load(
        g_ptrs + rows[:, None] * stride_gm + offs_e[None, :] * stride_ge,
        mask=row_ok[:, None] & e_ok[None, :],
        other=0.0,
    )
    row_base = off_bh.to(tl.int64) * LEN_Q
    lse = tl.load(Lse + row_base + rows, mask=row_ok, other=0.0)
    delta = tl.load(Delta + row_base + rows, mask=row_ok, other=0.0)
    lse_log2 = tl.where(lse == float("-inf"), 0.0, lse * LOG2_E)  # see _dkdv_query_blocks

    k_base = KF + off_b * stride_kb + off_h * stride_kh
    stride_kn, stride_ka = widen(stride_kn, LARGE_OFFSETS), widen(stride_ka, LARGE_OFFSETS)
    v_base, stride_vn = head_rows(
        V, off_b, off_h, stride_vb, stride_vh, stride_vn, offs_e, stride_ve, LARGE_OFFSETS
    )
    w_ptr = W + off_h * stride_wh
    stride_wa, stride_mn = widen(stride_wa, LARGE_OFFSETS), widen(stride_mn, LARGE_OFFSETS)
    mask_base = off_b * stride_mb + off_h * stride_mh

    dqf = tl.zeros((BLOCK_M, BLOCK_A), dtype=tl.float32)
    hi = LEN_K
    if IS_CAUSAL:
        hi = tl.minimum(LEN_K, start_m + BLOCK_M + LEN_K - LEN_Q)  # as in the forward
    dqf = _dq_key_blocks(
        dqf, do, v_base, q_ptrs, k_base, w_ptr, Mask, mask_base, lse_log2, delta,
        stride_kn, stride_vn, stride_qa, stride_ka, stride_wa, stride_mn,
        rows, row_ok, offs_n, offs_a, e_ok, hi, LEN_Q, LEN_K, A,
        HAS_MASK, IS_CAUSAL, BLOCK_M, BLOCK_N, EMULATE_BF16, PRECISION,
    )  # fmt: skip

    dqf_ptrs = DQF + row_base * A + rows[:, None] * widen(A, LARGE_OFFSETS) + offs_a[None, :]
    tl.store(
        dqf_ptrs,
        round_to(dqf, DQF.dtype.element_ty, EMULATE_BF16),
        mask=row_ok[:, None] & (offs_a < A)[None, :],
    )
