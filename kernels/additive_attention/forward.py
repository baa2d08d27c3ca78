"""The forward kernel: one program per tile of queries, an online softmax over key blocks."""

import triton
import triton.language as tl

from kernels.additive_attention.tiles import LN_2, LOG2_E, _additive_scores
from kernels.flash_attention.tiles import _dot, _key_is_valid, _round


@triton.jit
def _additive_fwd(
    QF, KF, W, V, Mask, Out, Lse,
    stride_qb, stride_qh, stride_qm, stride_qa,
    stride_kb, stride_kh, stride_kn, stride_ka,
    stride_wh, stride_wa,
    stride_vb, stride_vh, stride_vn, stride_ve,
    stride_ob, stride_oh, stride_om, stride_oe,
    stride_mb, stride_mh, stride_mn,
    H, LEN_Q, LEN_K, A, VALUE_DIM,
    HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr,
    EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    off_bh = tl.program_id(0)  # batch * heads on axis 0: see kernels.launch.grid
    start_m = tl.program_id(1) * BLOCK_M
    # int64 batch/head offsets: b * stride_b overflows int32 for large tensors.
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)

    rows = start_m + tl.arange(0, BLOCK_M)
    row_ok = rows < LEN_Q
    offs_n = tl.arange(0, BLOCK_N)
    offs_e = tl.arange(0, BLOCK_E)
    e_ok = offs_e < VALUE_DIM  # the padded value lanes load as 0 and are never stored

    q_ptrs = QF + off_b * stride_qb + off_h * stride_qh + rows * stride_qm  # (i,), channel 0
    k_base = KF + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh + offs_e[None, :] * stride_ve
    w_ptr = W + off_h * stride_wh
    mask_base = off_b * stride_mb + off_h * stride_mh

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)  # running max, log2 units
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)  # running sum of exp2(s - m_i)
    acc = tl.zeros((BLOCK_M, BLOCK_E), dtype=tl.float32)  # unnormalised output

    # Bottom-right causal: row i sees keys j <= i + (len_k - len_q); key blocks past the last
    # row's horizon are skipped (hi may be <= 0: then no key is visible at all).
    hi = LEN_K
    if IS_CAUSAL:
        hi = tl.minimum(LEN_K, start_m + BLOCK_M + LEN_K - LEN_Q)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < LEN_K
        s = _additive_scores(
            q_ptrs, k_base + cols * stride_kn, w_ptr, row_ok, col_ok,
            stride_qa, stride_ka, stride_wa, A, BLOCK_M, BLOCK_N,
        ) * LOG2_E  # (i, j), log2 units  # fmt: skip
        valid = _key_is_valid(Mask, mask_base, stride_mn, cols, LEN_K, HAS_MASK)[None, :]
        if IS_CAUSAL:
            valid = valid & (cols[None, :] <= rows[:, None] + (LEN_K - LEN_Q))
        s = tl.where(valid, s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, 1))
        # While a row has seen no valid key its max is -inf, and -inf - -inf would be NaN;
        # subtracting 0 instead keeps p = 0 and alpha = 0 for such rows.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)  # rescales what was summed under the old max
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            v_base + cols[:, None] * stride_vn, mask=col_ok[:, None] & e_ok[None, :], other=0.0
        )
        # p is rounded to the value dtype so the product runs on 16-bit tensor cores.
        acc = acc * alpha[:, None] + _dot(
            _round(p, v.dtype, EMULATE_BF16), v, EMULATE_BF16, PRECISION
        )
        m_i = m_new

    # A row with no valid key has l = 0 and acc = 0: it gets zeros and lse = -inf, never 0/0.
    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(seen, (m_i + tl.log2(l_safe)) * LN_2, float("-inf"))  # natural log

    o_ptrs = Out + off_b * stride_ob + off_h * stride_oh
    o_ptrs += rows[:, None] * stride_om + offs_e[None, :] * stride_oe
    tl.store(
        o_ptrs,
        _round(out, Out.dtype.element_ty, EMULATE_BF16),
        mask=row_ok[:, None] & e_ok[None, :],
    )
    tl.store(Lse + off_bh.to(tl.int64) * LEN_Q + rows, lse, mask=row_ok)
