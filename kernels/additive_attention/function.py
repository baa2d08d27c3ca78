"""additive_attention: the two PyTorch operators and the public function."""

import torch

from kernels import ops
from kernels.additive_attention.checks import _blocks, check_inputs
from kernels.additive_attention.launcher import launch_backward, launch_forward
from kernels.common.checks import check_flag


def _fake_forward(qf, kf, w, v, attn_mask, is_causal):
    """What launch_forward returns, as empty tensors: out (b, h, len_q, value_dim), lse (b, h, len_q)."""
    out = v.new_empty((*qf.shape[:3], v.shape[3]))
    return out, qf.new_empty(qf.shape[:3], dtype=torch.float32)


def _fake_backward(qf, kf, w, v, attn_mask, is_causal, out, lse, dout, dlse):
    """What launch_backward returns, as empty tensors: contiguous dqf, dkf, dw, dv."""
    return (
        qf.new_empty(qf.shape),
        kf.new_empty(kf.shape),
        w.new_empty(w.shape),
        v.new_empty(v.shape),
    )


@ops.kernel_op("additive_attention_backward", fake=_fake_backward)
def _backward_op(
    qf: torch.Tensor, kf: torch.Tensor, w: torch.Tensor, v: torch.Tensor,
    attn_mask: torch.Tensor | None, is_causal: bool, out: torch.Tensor, lse: torch.Tensor,
    dout: torch.Tensor, dlse: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    block_a, block_e = _blocks(qf, v)
    return launch_backward(
        qf, kf, w, v, attn_mask, is_causal, block_a, block_e, out, lse, dout, dlse
    )


# The one autograd definition (kernels.ops): gradients of the features, the score vector and
# the values from the backward operator above.
@ops.kernel_op(
    "additive_attention", fake=_fake_forward, backward=_backward_op, wrt=("qf", "kf", "w", "v")
)
def _forward_op(
    qf: torch.Tensor, kf: torch.Tensor, w: torch.Tensor, v: torch.Tensor,
    attn_mask: torch.Tensor | None, is_causal: bool,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    return launch_forward(qf, kf, w, v, attn_mask, is_causal, *_blocks(qf, v))


def additive_attention(
    query_features,
    key_features,
    score_weight,
    v,
    attn_mask=None,
    is_causal=False,
    *,
    return_lse=False,
):
    """Additive (Bahdanau) attention ``softmax_j(sum_c w_c tanh(qf_ic + kf_jc)) v``, fused.

    Args:
        query_features: (batch, heads, len_q, a), the queries' features ``q W_q``; float16,
            bfloat16 or float32.
        key_features: (batch, heads, len_k, a), the keys' features ``k W_k + bias``.
        score_weight: (heads, a), the score vector ``w`` of each head; float16, bfloat16 or
            float32 (its gradient comes back in its own dtype).
        v: (batch, heads, len_k, value_dim), same dtype and device as the features.
        attn_mask: optional boolean key mask, True = this key takes part, shaped
            (batch or 1, heads or 1, 1, len_k).
        is_causal: causal masking aligned to the **bottom-right** corner: query i sees keys
            j <= i + len_k - len_q. May be combined with attn_mask.
        return_lse: also return the row-wise log-sum-exp of the masked scores.

    Returns:
        out (batch, heads, len_q, value_dim) in v's dtype; with ``return_lse`` also lse
        (batch, heads, len_q) in float32 (natural log). A query that sees no key gets zeros
        in out (and zero gradients) and -inf in lse.

    Raises:
        TypeError / ValueError: on a bad input, naming it, before anything is launched.
        RuntimeError: for CPU tensors when Triton was imported without TRITON_INTERPRET=1.
    """
    check_inputs(query_features, key_features, score_weight, v, attn_mask)
    is_causal = check_flag(is_causal, "is_causal", "additive_attention")
    return_lse = check_flag(return_lse, "return_lse", "additive_attention")
    out, lse = _forward_op(query_features, key_features, score_weight, v, attn_mask, is_causal)
    return (out, lse) if return_lse else out
