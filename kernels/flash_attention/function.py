"""flash_attention: the two PyTorch operators and the public, SDPA-shaped function."""

import math

import torch
from torch.nn.attention.bias import CausalBias

from kernels import ops
from kernels.common.checks import check_flag
from kernels.flash_attention.checks import check_inputs
from kernels.flash_attention.dropout import Dropout, check_dropout_p, draw_seed_offset
from kernels.flash_attention.launcher import launch_backward, launch_forward, output_buffer
from kernels.flash_attention.options import ScoreOptions, score_options
from kernels.flash_attention.varlen import Packed


def _packed(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
    """The operators' packed-sequence arguments as a varlen.Packed, or None (padded tensors)."""
    if cu_seqlens_q is None:
        return None
    return Packed(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)


def _options(bottom_right, window_left, window_right, softcap, alibi_slopes, sinks):
    """The operators' flat score arguments as the launcher takes them."""
    return ScoreOptions(bottom_right, (window_left, window_right), softcap, alibi_slopes, sinks)


def _fake_forward(
    q, k, v, attn_mask, is_causal, scale, dropout_p=0.0, seed=0, offset=0,
    bottom_right=False, window_left=-1, window_right=-1, softcap=0.0, alibi_slopes=None,
    sinks=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0,
):  # fmt: skip
    """What launch_forward returns, as empty tensors: out (b, h, len_q, d_v) laid out as
    launcher.output_buffer lays it out, lse (b, h, len_q); packed: out (total_q, h, d_v)
    contiguous, lse (h, total_q)."""
    if cu_seqlens_q is not None:
        out = q.new_empty((*q.shape[:2], v.shape[2]))
        return out, q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)
    out = output_buffer(q, v.shape[3])
    return out, q.new_empty(q.shape[:3], dtype=torch.float32)


def _fake_backward(
    q, k, v, attn_mask, is_causal, scale, out, lse, dout, dlse, mask_grad,
    dropout_p=0.0, seed=0, offset=0, bottom_right=False, window_left=-1, window_right=-1,
    softcap=0.0, alibi_slopes=None, sinks=None,
    cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0,
):  # fmt: skip
    """What launch_backward returns, as empty tensors: contiguous dq, dk, dv, dmask (the mask's
    shape with mask_grad, else empty) and dsinks (the sinks' shape, else empty); packed: dq,
    dk, dv (total, h, d) views of contiguous (h, total, d) buffers."""
    dmask = q.new_empty(0)
    if attn_mask is not None:
        dmask = attn_mask.new_empty(attn_mask.shape if mask_grad else (0,))
    dsinks = q.new_empty(0, dtype=torch.float32) if sinks is None else sinks.new_empty(sinks.shape)
    if cu_seqlens_q is not None:
        grads = (
            t.new_empty((t.shape[1], t.shape[0], t.shape[2])).transpose(0, 1) for t in (q, k, v)
        )
        return *grads, dmask, dsinks
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dmask, dsinks


@ops.kernel_op("flash_attention_backward", fake=_fake_backward)
def _backward_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
    is_causal: bool, scale: float, out: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor,
    dlse: torch.Tensor | None, mask_grad: bool,
    dropout_p: float = 0.0, seed: int = 0, offset: int = 0,
    bottom_right: bool = False, window_left: int = -1, window_right: int = -1,
    softcap: float = 0.0, alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    cu_seqlens_q: torch.Tensor | None = None, cu_seqlens_k: torch.Tensor | None = None,
    max_seqlen_q: int = 0, max_seqlen_k: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    dropout = Dropout(dropout_p, seed, offset)
    options = _options(bottom_right, window_left, window_right, softcap, alibi_slopes, sinks)
    packed = _packed(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    return launch_backward(
        q, k, v, attn_mask, is_causal, scale, out, lse, dout, dlse, mask_grad, dropout, options,
        packed,
    )  # fmt: skip


def _gradients(
    q, k, v, attn_mask, is_causal, scale, dropout_p, seed, offset,
    bottom_right, window_left, window_right, softcap, alibi_slopes, sinks,
    cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
    out, lse, dout, dlse, *, needs_grad,
):  # fmt: skip
    """dq, dk, dv, the mask's gradient when it is a float mask that needs one (else None), and
    the sinks' (None without sinks). The forward's dropout_p, seed and offset regenerate its
    keep-mask."""
    mask_grad = bool(needs_grad[3] and attn_mask is not None and attn_mask.is_floating_point())
    dq, dk, dv, dmask, dsinks = _backward_op(
        q, k, v, attn_mask, is_causal, scale, out, lse, dout, dlse, mask_grad,
        dropout_p, seed, offset, bottom_right, window_left, window_right, softcap,
        alibi_slopes, sinks, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
    )  # fmt: skip
    return dq, dk, dv, (dmask if mask_grad else None), (dsinks if sinks is not None else None)


# The one autograd definition: gradients of q, k, v (and of a float mask and the sinks) from
# the backward operator above, given the inputs, (out, lse) and their gradients (dlse is zeros
# when lse took no part in the loss). seed and offset are the dropout's Philox seed and counter
# offset, drawn by flash_attention (unused when dropout_p == 0); then the checked ScoreOptions,
# flat (an operator's schema takes no structures). With cu_seqlens_q (and the rest of a
# varlen.Packed) q, k, v are packed sequences (total, h, d): flash_attn_varlen_func's call.
@ops.kernel_op(
    "flash_attention", fake=_fake_forward, backward=_gradients,
    wrt=("q", "k", "v", "attn_mask", "sinks"),
)  # fmt: skip
def _forward_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
    is_causal: bool, scale: float, dropout_p: float = 0.0, seed: int = 0, offset: int = 0,
    bottom_right: bool = False, window_left: int = -1, window_right: int = -1,
    softcap: float = 0.0, alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    cu_seqlens_q: torch.Tensor | None = None, cu_seqlens_k: torch.Tensor | None = None,
    max_seqlen_q: int = 0, max_seqlen_k: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    dropout = Dropout(dropout_p, seed, offset)
    options = _options(bottom_right, window_left, window_right, softcap, alibi_slopes, sinks)
    packed = _packed(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    return launch_forward(q, k, v, attn_mask, is_causal, scale, dropout, options, packed)


def flash_attention(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
    enable_gqa=False, *, return_lse=False, window_size=(-1, -1), softcap=0.0,
    alibi_slopes=None, sinks=None, alignment=None,
):  # fmt: skip
    """Scaled dot-product attention with ``F.scaled_dot_product_attention``'s signature.

    Args:
        query: (batch, heads, len_q, head_dim), float16, bfloat16 or float32.
        key: (batch, heads_kv, len_k, head_dim), value: (batch, heads_kv, len_k, value_dim),
            same dtype and device as query; heads_kv == heads, or with ``enable_gqa`` any
            divisor of heads. head_dim and value_dim are each 1 to 256 and may differ.
        attn_mask: optional mask broadcastable to (batch, heads, len_q, len_k) as SDPA reads
            it (from the right: a 2-D mask is (len_q, len_k)); boolean, True = the pair takes
            part, or float (float16, bfloat16 or float32), added to the scaled scores and
            differentiable. Read in place, with stride 0 on its broadcast axes.
        dropout_p: the probability, in [0, 1], of dropping each attention probability (as
            SDPA does, always: pass 0 in evaluation): out = (P * keep / (1 - p)) V, with the
            softmax normalised before dropout (lse is the same whatever p). The keep bits are
            Philox numbers made inside the kernels from a seed and offset drawn on each call
            from torch's default CPU generator (one ``torch.randint``), so ``torch.manual_seed``
            makes a call reproducible; the backward regenerates them. p == 1 gives zeros (and
            zero gradients but through lse), as SDPA. See ``kernels.flash_attention.dropout``.
        is_causal: causal masking aligned to the **top-left** corner, as SDPA's: query i sees
            keys j <= i. With ``alignment="bottom_right"``, j <= i + len_k - len_q instead, as
            a decoder with a key/value cache needs (the two agree when len_q == len_k). May be
            combined with attn_mask. attn_mask may also be PyTorch's
            ``torch.nn.attention.bias.causal_upper_left(len_q, len_k)`` or
            ``causal_lower_right(len_q, len_k)`` (then is_causal must be False, as in SDPA): read
            as is_causal with that alignment, never materialised.
        scale: the softmax scale; defaults to 1 / sqrt(head_dim) (query's, as in SDPA).
        enable_gqa: grouped-query attention: query head i reads key/value head
            i // (heads / heads_kv); nothing is repeated in memory, and dK, dV are summed over
            each group inside the kernel.
        return_lse: also return the row-wise log-sum-exp of the scaled, masked scores (the
            sinks included).
        window_size: (left, right), FlashAttention-2's sliding window: query i sees key j iff
            a(i) - left <= j <= a(i) + right, -1 for an unbounded side; with causality right
            is 0. a(i) is the query's anchored position, as its causality: i (top-left, the
            default), or i + len_k - len_q with ``alignment="bottom_right"`` or a
            ``causal_lower_right`` mask. Key blocks wholly outside the window are never
            visited (forward and both backward passes): a window of w costs O(len_q * w).
        softcap: 0 (off) or c > 0: the scaled scores become c * tanh(s / c) (Gemma 2), before
            ALiBi, the mask and the window; differentiated through.
        alibi_slopes: float32 (heads,) or (batch, heads): ALiBi adds -slope * |a(i) - j| to the
            scaled (and capped) scores; no bias tensor is built. No gradient (as in
            FlashAttention-2): slopes that require grad are refused.
        sinks: (heads,) logits, float32 or query's dtype: each joins its head's softmax
            denominators as one more score whose value is dropped (GPT-OSS's ``s_aux``): a row
            that sees no key gets zeros and lse = sink. Differentiable: its gradient is
            -sum over batch and rows of exp(sink - lse) * rowsum(dO * out).
        alignment: "top_left" (the default) or "bottom_right": where causality, the window and
            ALiBi's distances are anchored (see is_causal, window_size).

    Returns:
        out (batch, heads, len_q, value_dim) in query's dtype; with ``return_lse`` also
        lse (batch, heads, len_q) in float32 (natural log). A query that sees no key gets
        zeros in out (and zero gradients) and -inf in lse.

    Raises:
        TypeError / ValueError: on a bad input, naming it, before anything is launched.
        RuntimeError: for CPU tensors when Triton was imported without TRITON_INTERPRET=1.
    """
    q, k, v = query, key, value
    dropout_p = check_dropout_p(dropout_p)
    is_causal = check_flag(is_causal, "is_causal", "flash_attention")
    causal_bias = attn_mask if isinstance(attn_mask, CausalBias) else None
    attn_mask = None if causal_bias is not None else attn_mask
    check_inputs(q, k, v, attn_mask, scale, enable_gqa)
    is_causal, options = score_options(
        q, k, causal_bias, is_causal, alignment, window_size, softcap, alibi_slopes, sinks
    )
    out, lse = forward_checked(q, k, v, attn_mask, is_causal, options, scale, dropout_p)
    return (out, lse) if return_lse else out


def forward_checked(q, k, v, attn_mask, is_causal, options, scale, dropout_p, packed=()):
    """(out, lse) of the forward operator, on inputs already checked: ``is_causal`` and
    ``options`` as :func:`score_options` returned them, ``dropout_p`` as :func:`check_dropout_p`
    did; ``packed``: the :class:`Packed` sequences of a varlen call. The FlashAttention-2
    functions check under their own names and call this, not :func:`flash_attention`, so that
    nothing is checked twice."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    seed, offset = draw_seed_offset() if dropout_p > 0.0 else (0, 0)
    return _forward_op(
        q, k, v, attn_mask, is_causal, scale, dropout_p, seed, offset, options.bottom_right,
        *options.window, options.softcap, options.alibi_slopes, options.sinks, *packed,
    )  # fmt: skip
