"""Jitted helpers of the additive kernels: a tile of scores and its probabilities, and the
pointers of the features (what the flash kernel uses too lives in :mod:`kernels.common.jit`)."""

import triton
import triton.language as tl

from kernels.common.jit import LOG2_E, widen

# tanh(x) = 1 - 2 / (1 + e^(2x)) = 1 - 2 / (1 + 2^(x * 2 log2 e)): each channel of features is
# multiplied by 2 log2(e) as a vector, so each (i, j, c) element costs one add and one exp2.
TWO_LOG2_E = tl.constexpr(2.8853900817779268)


@triton.jit
def _feature_rows(
    Base, off_b, off_h, stride_b, stride_h, rows, stride_row, stride_channel,
    LARGE_OFFSETS: tl.constexpr,
):  # fmt: skip
    """(ptrs, stride_channel): (rows,) pointers to channel 0 of these rows of one (batch, head)'s
    (rows, a) features, and the channel stride, widened as the row stride is (under
    LARGE_OFFSETS, int64: see kernels.common.jit): channel c is ``ptrs + c * stride_channel``."""
    ptrs = Base + off_b * stride_b + off_h * stride_h + rows * widen(stride_row, LARGE_OFFSETS)
    return ptrs, widen(stride_channel, LARGE_OFFSETS)


@triton.jit
def _additive_scores(
    q_ptrs, k_ptrs, w_ptr, row_ok, col_ok, stride_qa, stride_ka, stride_wa, A,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """(BLOCK_M, BLOCK_N) float32 scores s_ij = sum_c w_c tanh(qf_ic + kf_jc).

    One channel at a time: only the 2-D tile is ever live, whatever ``a`` is.
    """
    s = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for c in range(0, A):
        # The channel loops call no @triton.jit helper: the interpreter pays for every call.
        qc = tl.load(q_ptrs + c * stride_qa, mask=row_ok, other=0.0).to(tl.float32)  # (i,)
        kc = tl.load(k_ptrs + c * stride_ka, mask=col_ok, other=0.0).to(tl.float32)  # (j,)
        wc = tl.load(w_ptr + c * stride_wa).to(tl.float32)
        # tanh(x) = 1 - 2 / (1 + 2^(x * 2 log2 e)). exp2 overflows to inf for large x (giving
        # 1) and underflows to 0 for very negative x (giving -1): no input makes it NaN.
        e2x = tl.exp2((qc * TWO_LOG2_E)[:, None] + (kc * TWO_LOG2_E)[None, :])  # (i, j)
        s += wc * (1.0 - 2.0 / (1.0 + e2x))
    return s


@triton.jit
def _probabilities(s, lse_log2, valid):
    """P = exp(s - lse) where valid, else 0, from the saved log-sum-exp (log2 units)."""
    return tl.exp2(tl.where(valid, s * LOG2_E, float("-inf")) - lse_log2[:, None])
