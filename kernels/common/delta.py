"""The backward's first pass, shared by both kernels: ``delta = rowsum(dO * O) - dlse``.

Both backward passes recompute the probabilities P and need, per query row, the sum that
softmax's backward subtracts: dS = P * (dP - delta). A small kernel computes it once from the
output and its gradient, before the dK/dV and dQ passes read it.
"""

import torch
import triton
import triton.language as tl

from kernels.common import runtime

DELTA_ROWS = 64  # query rows per program of this small pass (not worth tuning)


def launch_delta(out, dout, dlse, block_d: int) -> torch.Tensor:
    """delta (b, h, len_q) float32 for out and dout (b, h, len_q, d_v), dlse (b, h, len_q)
    contiguous float32 (zeros when the log-sum-exp took no part in the loss); ``block_d``:
    d_v padded to the kernels' power of two."""
    b, h, len_q, d_v = out.shape
    delta = runtime.empty((b, h, len_q), torch.float32, out.device)
    runtime.launch(
        _attn_bwd_delta, runtime.grid(b * h, triton.cdiv(len_q, DELTA_ROWS)),
        out, dout, dlse, delta, *out.stride(), *dout.stride(), h, len_q, d_v,
        BLOCK_M=DELTA_ROWS, BLOCK_D=block_d,
    )  # fmt: skip
    return delta


@triton.jit
def _attn_bwd_delta(
    Out, DOut, DLse, Delta,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_gb, stride_gh, stride_gm, stride_gd,
    H, LEN_Q, HEAD_DIM,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """delta_i = sum_d dO_id * O_id - dlse_i, one value per query row.

    From dS = P * (dP - rowsum(dO * O)) for the output, plus dS += P * dlse for the
    log-sum-exp (d lse_i / d s_ij = P_ij): folding -dlse into delta covers both at no cost.
    """
    off_bh = tl.program_id(0)  # batch * heads on axis 0: see kernels.common.runtime.grid
    start_m = tl.program_id(1) * BLOCK_M
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (rows[:, None] < LEN_Q) & (offs_d[None, :] < HEAD_DIM)

    o_ptrs = Out + off_b * stride_ob + off_h * stride_oh
    o = tl.load(
        o_ptrs + rows[:, None] * stride_om + offs_d[None, :] * stride_od, mask=ok, other=0.0
    )
    g_ptrs = DOut + off_b * stride_gb + off_h * stride_gh
    do = tl.load(
        g_ptrs + rows[:, None] * stride_gm + offs_d[None, :] * stride_gd, mask=ok, other=0.0
    )
    row_ptrs = off_bh.to(tl.int64) * LEN_Q + rows
    dlse = tl.load(DLse + row_ptrs, mask=rows < LEN_Q, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1) - dlse
    tl.store(Delta + row_ptrs, delta, mask=rows < LEN_Q)
