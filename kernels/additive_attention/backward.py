"""The backward kernels: dV, dKf and the score vector's partial gradients per key block, and dQf
per query block; the rowsum(dO * O) pass is the flash kernel's own."""

import triton
import triton.language as tl

from kernels.additive_attention.tiles import LOG2_E, TWO_LOG2_E, _additive_scores, _probabilities
from kernels.flash_attention.tiles import _dot, _key_is_valid, _round


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
    EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """One program per key block: accumulates dV_j, dKf_j and this block's share of dw.

    DKF (b, h, len_k, a) and DV (b, h, len_k, e) are contiguous; DWPartial is a contiguous
    float32 (b, h, cdiv(len_k, BLOCK_N), a) buffer that the host sums over key blocks and batch.
    """
    off_bh = tl.program_id(0)  # batch * heads on axis 0: see kernels.launch.grid
    pid_n = tl.program_id(1)
    start_n = pid_n * BLOCK_N
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)

    cols = start_n + tl.arange(0, BLOCK_N)
    col_ok = cols < LEN_K
    offs_m = tl.arange(0, BLOCK_M)
    offs_e = tl.arange(0, BLOCK_E)
    offs_a = tl.arange(0, BLOCK_A)
    e_ok = offs_e < VALUE_DIM
    v_ok = col_ok[:, None] & e_ok[None, :]

    k_ptrs = KF + off_b * stride_kb + off_h * stride_kh + cols * stride_kn  # (j,), channel 0
    v_ptrs = V + off_b * stride_vb + off_h * stride_vh
    v = tl.load(
        v_ptrs + cols[:, None] * stride_vn + offs_e[None, :] * stride_ve, mask=v_ok, other=0.0
    )
    w_ptr = W + off_h * stride_wh
    # The key mask is per key, so this block's slice of it is read once, outside the loop.
    key_valid = _key_is_valid(
        Mask, off_b * stride_mb + off_h * stride_mh, stride_mn, cols, LEN_K, HAS_MASK
    )
    q_base = QF + off_b * stride_qb + off_h * stride_qh
    g_base = DOut + off_b * stride_gb + off_h * stride_gh + offs_e[None, :] * stride_ge
    row_base = off_bh.to(tl.int64) * LEN_Q

    dv = tl.zeros((BLOCK_N, BLOCK_E), dtype=tl.float32)
    dkf = tl.zeros((BLOCK_N, BLOCK_A), dtype=tl.float32)
    dw = tl.zeros((BLOCK_A,), dtype=tl.float32)

    # Bottom-right causal: key j is seen by rows i >= j - (len_k - len_q); earlier query
    # blocks contribute nothing and are skipped.
    lo = 0
    if IS_CAUSAL:
        lo = tl.maximum(0, start_n - (LEN_K - LEN_Q)) // BLOCK_M * BLOCK_M
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

        dv += _dot(tl.trans(_round(p, do.dtype, EMULATE_BF16)), do, EMULATE_BF16, PRECISION)
        dp = _dot(do, tl.trans(v), EMULATE_BF16, PRECISION)  # (i, j)
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

    a_ok = offs_a < A
    dkf_ptrs = DKF + off_bh.to(tl.int64) * LEN_K * A + cols[:, None] * A + offs_a[None, :]
    tl.store(
        dkf_ptrs,
        _round(dkf, DKF.dtype.element_ty, EMULATE_BF16),
        mask=col_ok[:, None] & a_ok[None, :],
    )
    dv_ptrs = DV + off_bh.to(tl.int64) * LEN_K * VALUE_DIM + cols[:, None] * VALUE_DIM
    tl.store(dv_ptrs + offs_e[None, :], _round(dv, DV.dtype.element_ty, EMULATE_BF16), mask=v_ok)
    dw_ptrs = DWPartial + (off_bh.to(tl.int64) * tl.num_programs(1) + pid_n) * A + offs_a
    tl.store(dw_ptrs, dw, mask=a_ok)


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
    EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """One program per query block: accumulates dQf_i over key blocks. DQF is a contiguous
    (b, h, len_q, a) buffer."""
    off_bh = tl.program_id(0)  # batch * heads on axis 0: see kernels.launch.grid
    start_m = tl.program_id(1) * BLOCK_M
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)

    rows = start_m + tl.arange(0, BLOCK_M)
    row_ok = rows < LEN_Q
    offs_n = tl.arange(0, BLOCK_N)
    offs_e = tl.arange(0, BLOCK_E)
    offs_a = tl.arange(0, BLOCK_A)
    e_ok = offs_e < VALUE_DIM

    q_ptrs = QF + off_b * stride_qb + off_h * stride_qh + rows * stride_qm
    g_ptrs = DOut + off_b * stride_gb + off_h * stride_gh
    do = tl.load(
        g_ptrs + rows[:, None] * stride_gm + offs_e[None, :] * stride_ge,
        mask=row_ok[:, None] & e_ok[None, :],
        other=0.0,
    )
    row_base = off_bh.to(tl.int64) * LEN_Q
    lse = tl.load(Lse + row_base + rows, mask=row_ok, other=0.0)
    delta = tl.load(Delta + row_base + rows, mask=row_ok, other=0.0)
    lse_log2 = tl.where(lse == float("-inf"), 0.0, lse * LOG2_E)  # see _additive_bwd_dkdv

    k_base = KF + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh + offs_e[None, :] * stride_ve
    w_ptr = W + off_h * stride_wh
    mask_base = off_b * stride_mb + off_h * stride_mh

    dqf = tl.zeros((BLOCK_M, BLOCK_A), dtype=tl.float32)
    hi = LEN_K
    if IS_CAUSAL:
        hi = tl.minimum(LEN_K, start_m + BLOCK_M + LEN_K - LEN_Q)  # as in the forward
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
            & _key_is_valid(Mask, mask_base, stride_mn, cols, LEN_K, HAS_MASK)[None, :]
        )
        if IS_CAUSAL:
            valid = valid & (cols[None, :] <= rows[:, None] + (LEN_K - LEN_Q))
        p = _probabilities(s, lse_log2, valid)
        dp = _dot(do, tl.trans(v), EMULATE_BF16, PRECISION)  # (i, j)
        ds = p * (dp - delta[:, None])

        for c in range(0, A):  # as in _additive_bwd_dkdv, summing over keys instead
            qc = tl.load(q_ptrs + c * stride_qa, mask=row_ok, other=0.0).to(tl.float32)
            kc = tl.load(k_ptrs + c * stride_ka, mask=col_ok, other=0.0).to(tl.float32)
            wc = tl.load(w_ptr + c * stride_wa).to(tl.float32)
            e2x = tl.exp2((qc * TWO_LOG2_E)[:, None] + (kc * TWO_LOG2_E)[None, :])
            t = 1.0 - 2.0 / (1.0 + e2x)  # tanh, as in _additive_scores
            column = wc * tl.sum(ds * (1.0 - t * t), 1)  # (i,)
            dqf += tl.where((offs_a == c)[None, :], column[:, None], 0.0)

    dqf_ptrs = DQF + row_base * A + rows[:, None] * A + offs_a[None, :]
    tl.store(
        dqf_ptrs,
        _round(dqf, DQF.dtype.element_ty, EMULATE_BF16),
        mask=row_ok[:, None] & (offs_a < A)[None, :],
    )
