"""Hugging Face ``transformers`` models on :func:`kernels.flash_attention`.

::

    from kernels.integrations import huggingface

    huggingface.register()  # once; then any model that dispatches through AttentionInterface:
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="triton_transformer")

:func:`register` adds :func:`attention_forward` to ``transformers.AttentionInterface`` under
:data:`NAME`, and :func:`~kernels.integrations.huggingface_masks.build_mask` to
``AttentionMaskInterface`` under the same name. The mask builder hands the kernel what it needs
instead of an (n x n) mask where the model's mask is causal (with a sliding window, or over
packed sequences) or bidirectional, with padding: a key padding mask (one value per key) or
nothing, plus the flags; every other pattern gets SDPA's boolean mask (True = attend), which the
kernel reads as it is. The function reads its arguments as ``transformers``' own SDPA function
does (``transformers.integrations.sdpa_attention``): causality through ``is_causal`` (or the
module's) when the mask does not carry it, grouped-query attention from the head counts, T5's
learnt ``position_bias`` as a float mask (whose gradient the kernel computes).
``transformers`` is an optional dependency (``pip install -e ".[huggingface]"``); importing
this module does not need it, registering does.

Beyond SDPA, it takes what today's decoders pass: the layer's ``sliding_window`` (a query sees
that many keys, itself included, so the kernel gets ``window_size=(sliding_window - 1, 0)``
and skips the key blocks outside it; the window a compact mask carries wins, for models that
build a sliding-window mask without passing it, PhiMoE and Qwen2-MoE), Gemma 2's logit
``softcap`` and GPT-OSS's attention sinks ``s_aux`` (with their gradient).
Packed sequences (``position_ids`` that restart, with no padding and no cache: where
transformers' own masks separate them) run through ``flash_attn_varlen_func`` (window and
softcap and sinks included), or, with T5's position bias, through the kernel with a
same-sequence mask. Packing given by its lengths, as ``DataCollatorWithFlattening(
return_flash_attn_kwargs=True)`` gives it (``cu_seq_lens_q``/``cu_seq_lens_k``, and
``max_length_q``/``max_length_k``), runs through ``flash_attn_varlen_func`` with those lengths,
as transformers' FlashAttention path runs it; with a position bias or padding it is refused. Arguments it cannot honour (a paged cache's ``block_table``, ``output_attentions=True``)
raise a ``ValueError`` naming them.

Differences from ``"sdpa"``: a query that sees no key (a padding query under a padding mask)
gets zeros where SDPA averages the values; the outputs at every other position agree. Attention
dropout (the ``dropout`` transformers passes in training) is applied inside the kernel, with its
own random numbers, so a training step with dropout matches ``"sdpa"`` in distribution only.
"""

from __future__ import annotations

import torch
from einops import rearrange

from kernels import flash_attention
from kernels.integrations.huggingface_masks import build_mask, mask_packing, mask_window, packing_of

# Not "flash_transformer": transformers treats every implementation whose name contains
# "flash" as a FlashAttention kernel (unpadded, variable-length inputs; utils.generic's
# is_flash_attention_requested), which this function is not.
NAME = "triton_transformer"


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    position_bias: torch.Tensor | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    s_aux: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """``transformers``' attention-function signature: q (b, h, i, d), k and v (b, h_kv, j, d)
    -> ((b, i, h, d) output, no attention weights). ``sliding_window``: a query sees that many
    keys, itself included (transformers' convention); ``softcap``: Gemma 2's logit cap;
    ``s_aux``: GPT-OSS's sinks, one logit per head."""
    _refuse_what_it_cannot_honour(kwargs)
    # The window of a sliding-window mask the builder made compact: what eager and SDPA apply,
    # whether or not the model passes sliding_window (PhiMoE and Qwen2-MoE do not).
    attention_mask, carried_window = mask_window(attention_mask)
    if carried_window is not None:
        sliding_window = carried_window
    softcap = softcap or 0.0
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    given = _given_packing(kwargs, query.device)
    if given is not None:
        _refuse_what_given_packing_cannot_carry(attention_mask, position_bias)
        window = _window_size(sliding_window, bool(causal))
        out = _varlen(query, key, value, given, bool(causal), dropout, scaling, window, softcap,
                      s_aux)  # fmt: skip
        return out, None
    if _is_packed(attention_mask) and position_bias is None:
        # flash_attn_varlen_func takes no bias: T5's goes by a same-sequence mask below.
        packing = mask_packing(attention_mask) or packing_of(attention_mask)
        window = _window_size(sliding_window)
        out = _varlen(query, key, value, packing, True, dropout, scaling, window, softcap, s_aux)
        return out, None
    attention_mask, is_causal, window = _kernel_mask(
        attention_mask, bool(causal), sliding_window, query.shape[2], key.shape[2]
    )
    len_q = query.shape[2]
    if is_causal and key.shape[2] > len_q:
        # As transformers' SDPA function does: a prefill into an empty static cache. Its causal
        # mask is top-left aligned, so the keys past len_q are never seen.
        key, value = key[:, :, :len_q], value[:, :, :len_q]
        if position_bias is not None:
            position_bias = position_bias[..., :len_q]
    if position_bias is not None:
        attention_mask = _bias_mask(position_bias, attention_mask, is_causal)
        is_causal = False
    out = flash_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, is_causal=is_causal,
        scale=scaling, enable_gqa=key.shape[1] != query.shape[1], alignment="top_left",
        window_size=_window_size(window),
        softcap=softcap, sinks=s_aux,
    )  # fmt: skip
    return out.transpose(1, 2).contiguous(), None


def _window_size(window: int | None, causal: bool = True) -> tuple[int, int]:
    """FlashAttention-2's (left, right) for transformers' ``sliding_window``: a query sees
    ``window`` keys back, itself one of them (its masks keep kv > q - window), and, without
    causality, as many ahead (its bidirectional masks keep |q - kv| < window)."""
    if window is None:
        return (-1, -1)
    return (window - 1, 0 if causal else window - 1)


def _is_packed(attention_mask) -> bool:
    """Whether the mask is the builder's packed form: each token's sequence index (b, n)."""
    return (
        attention_mask is not None and attention_mask.dim() == 2
        and not attention_mask.dtype.is_floating_point and attention_mask.dtype != torch.bool
    )  # fmt: skip


def _given_packing(kwargs, device):
    """(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k) from the lengths transformers
    passes for a packed batch (``cu_seq_lens_q``/``_k``, ``max_length_q``/``_k``), or None; a
    missing longest length is read from the cumulative ones."""
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is None and cu_k is None:
        return None
    if cu_q is None or cu_k is None:
        missing = "cu_seq_lens_k" if cu_k is None else "cu_seq_lens_q"
        raise ValueError(f"attention {NAME!r}: packed sequences given without {missing}")
    cu_q, cu_k = (torch.as_tensor(cu, device=device).to(torch.int32) for cu in (cu_q, cu_k))
    longest = [kwargs.get("max_length_q"), kwargs.get("max_length_k")]
    for i, cu in enumerate((cu_q, cu_k)):
        if longest[i] is None:
            longest[i] = cu.diff().max() if cu.numel() > 1 else 0
    return cu_q, cu_k, int(longest[0]), int(longest[1])


def _refuse_what_given_packing_cannot_carry(attention_mask, position_bias):
    """Packing given by its lengths goes to ``flash_attn_varlen_func``, which takes no bias or
    mask: those are refused (``position_ids`` alone carry a bias, through a mask)."""
    what = (
        "a position bias" if position_bias is not None
        else None if attention_mask is None or _is_packed(attention_mask)
        else "padding" if attention_mask.dim() == 2
        else "a mask other than the packed sequences'"
    )  # fmt: skip
    if what is not None:
        raise ValueError(
            f"attention {NAME!r}: packed sequences given by their lengths (cu_seq_lens_q/k) "
            f"with {what}: pass position_ids without the lengths instead"
        )


def _varlen(query, key, value, packing, causal, dropout, scaling, window_size, softcap, sinks):
    """Attention within each packed sequence through ``flash_attn_varlen_func``, the rows'
    tokens laid end to end; ``packing``: (cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
    max_seqlen_k); ``sinks``: GPT-OSS's (its keyword, not FlashAttention-2's), or None.
    q (b, h, n, d), k and v (b, h_kv, n, d) -> (b, n, h, d_v)."""
    from kernels.flash_attention import flash_attn_varlen_func  # needs Triton, as the call does

    q, k, v = (rearrange(t, "b h n d -> (b n) h d") for t in (query, key, value))
    out = flash_attn_varlen_func(
        q, k, v, *packing, dropout_p=dropout, softmax_scale=scaling, causal=causal,
        softcap=softcap, window_size=window_size, sinks=sinks,
    )  # fmt: skip
    return rearrange(out, "(b n) h d -> b n h d", b=query.shape[0])


# Arguments transformers may pass that change the result and that the kernel does not take.
# Everything else it passes (position_ids, use_cache, ...) the mask already accounts for.
UNSUPPORTED = {"block_table": "a paged key/value cache"}


def _refuse_what_it_cannot_honour(kwargs):
    for name, what in UNSUPPORTED.items():
        if kwargs.get(name) is not None:
            raise ValueError(f"attention {NAME!r} does not support {what} ({name}): use 'eager'")
    if kwargs.get("output_attentions"):
        # The kernel never forms the weights; transformers' own "sdpa" returns None with a
        # logged warning, which leaves the model's ``attentions`` silently empty.
        raise ValueError(
            f"attention {NAME!r} returns no attention weights (output_attentions=True): use "
            "'eager' for them"
        )


def _kernel_mask(attention_mask, causal, sliding_window, len_q, len_k):
    """(attn_mask, is_causal, window) for the kernel from the mask the model passes, read as
    :mod:`~kernels.integrations.huggingface_masks` made it: ``window`` is how many keys back a
    query sees, itself included (transformers' ``sliding_window``), or None."""
    if attention_mask is not None and attention_mask.dim() == 2:
        if attention_mask.dtype == torch.bool:  # keys that are not padding, causal
            return attention_mask[:, None, None, :], True, sliding_window
        same = attention_mask[:, :, None] == attention_mask[:, None, :]  # packed sequences
        return same[:, None], True, sliding_window
    if attention_mask is not None:  # SDPA's own mask: everything is in it
        return attention_mask, False, None
    causal = causal and len_q > 1
    if not causal and sliding_window is not None and len_k > sliding_window:
        raise ValueError(
            f"attention {NAME!r}: a sliding window ({sliding_window}) without a mask in "
            "non-causal attention; transformers builds such masks itself (use 'sdpa')"
        )
    return None, causal, sliding_window if causal else None


def _bias_mask(position_bias, attention_mask, is_causal):
    """One float mask: the bias where a pair takes part, -inf elsewhere (boolean mask, causal),
    or the sum of two float masks. Differentiable in the bias."""
    hidden = None
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        hidden = ~attention_mask
    elif attention_mask is not None:
        return position_bias + attention_mask
    if is_causal:
        len_q, len_k = position_bias.shape[-2:]
        rows = torch.arange(len_q, device=position_bias.device)[:, None]
        future = torch.arange(len_k, device=position_bias.device)[None, :] > rows
        hidden = future if hidden is None else hidden | future
    if hidden is None:
        return position_bias
    return position_bias.masked_fill(hidden, float("-inf"))


def register() -> None:
    """Make ``attn_implementation="triton_transformer"`` available to ``transformers`` models."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, build_mask)
