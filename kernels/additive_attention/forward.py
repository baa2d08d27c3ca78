"""The forward kernel: one program per tile of queries, an online softmax over key blocks.

LARGE_OFFSETS: every row and lane offset in int64 (see :mod:`kernels.common.jit`).
"""

import triton
import triton.language as tl

from kernels.additive_attention.tiles import _additive_scores, _feature_rows
from kernels.common.jit import (
    LOG2_E,
    dot,
    head_rows,
    key_is_valid,
    normalise,
    online_softmax_step,
    program_tile,
    round_to,
    widen,
)


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
    EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr, LARGE_OFFSETS: tl.constexpr = False,
):  # fmt: skip
    off_bh, off_b, off_h, start_m = program_tile(H, BLOCK_M)
    rows = start_m + tl.arange(0, BLOCK_M)
    row_ok = rows < LEN_Q
    offs_n = tl.arange(0, BLOCK_N)
    offs_e = tl.arange(0, BLOCK_E)
    e_ok = offs_e < VALUE_DIM  # the padded value lanes load as 0 and are never stored

    q_ptrs, stride_qa = _feature_rows(
        QF, off_b, off_h, stride_qb, stride_qh, rows, stride_qm, stride_qa, LARGE_OFFSETS
    )  # (i,), channel 0
    k_base = KF + off_b * stride_kb + off_h * stride_kh
    stride_kn, stride_ka = widen(stride_kn, LARGE_OFFSETS), widen(stride_ka, LARGE_OFFSETS)
    v_base, stride_vn = head_rows(
        V, off_b, off_h, stride_vb, stride_vh, stride_vn, offs_e, stride_ve, LARGE_OFFSETS
    )
    w_ptr = W + off_h * stride_wh
    stride_wa, stride_mn = widen(stride_wa, LARGE_OFFSETS), widen(stride_mn, LARGE_OFFSETS)
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
        valid = key_is_valid(Mask, mask_base, stride_mn, cols, LEN_K, HAS_MASK)[None, :]
        if IS_CAUSAL:
            valid = valid & (cols[None, :] <= rows[:, None] + (LEN_K - LEN_Q))
        s = tl.where(valid, s, float("-inf"))

        p, alpha, l_i, m_i = online_softmax_step(s, m_i, l_i)
        v = tl.load(
            v_base + cols[:, None] * stride_vn, mask=col_ok[:, None] & e_ok[None, :], other=0.0
        )
        # p is rounded to the value dtype so the product runs on 16-bit tensor cores.
        acc = acc * alpha[:, None] + dot(
            round_to(p, v.dtype, EMULATE_BF16), v, EMULATE_BF16, PRECISION
        )

    out, lse = normalise(acc, l_i, m_i, 1.0, False)
    stride_om, stride_oe = widen(stride_om, LARGE_OFFSETS), widen(stride_oe, LARGE_OFFSETS)
    o_ptrs = Out + off_b * stride_ob + off_h * stride_oh
    o_ptrs += rows[:, None] * stride_om + offs_e[None, :] * stride_oe
    tl.store(
        o_ptrs,
        round_to(out, Out.dtype.element_ty, EMULATE_BF16),
        mask=row_ok[:, None] & e_ok[None, :],
    )
    tl.store(Lse + off_bh.to(tl.int64) * LEN_Q + rows, lse, mask=row_ok)
