"""The backward's first pass, shared by both kernels: ``delta = rowsum(dO * O) - dlse``, launched.

Both backward passes recompute the probabilities P and need, per query row, the sum that
softmax's backward subtracts: dS = P * (dP - delta). A small kernel
(:func:`kernels.common.jit.attn_bwd_delta`) computes it once from the output and its gradient,
before the dK/dV and dQ passes read it.
"""

import torch
import triton

from kernels.common import runtime
from kernels.common.jit import DELTA_ROWS, attn_bwd_delta


def launch_delta(out, dout, dlse, block_d: int, large_offsets: bool) -> torch.Tensor:
    """delta (b, h, len_q) float32 for out and dout (b, h, len_q, d_v), dlse (b, h, len_q)
    contiguous float32 (zeros when the log-sum-exp took no part in the loss); ``block_d``:
    d_v padded to the kernels' power of two; ``large_offsets``: the LARGE_OFFSETS the call's
    other passes take (:func:`kernels.common.jit.needs_int64_offsets`)."""
    b, h, len_q, d_v = out.shape
    delta = runtime.empty((b, h, len_q), torch.float32, out.device)
    runtime.launch(
        attn_bwd_delta, runtime.grid(b * h, triton.cdiv(len_q, DELTA_ROWS)),
        out, dout, dlse, delta, *out.stride(), *dout.stride(), h, len_q, d_v,
        BLOCK_M=DELTA_ROWS, BLOCK_D=block_d, LARGE_OFFSETS=large_offsets,
    )  # fmt: skip
    return delta
