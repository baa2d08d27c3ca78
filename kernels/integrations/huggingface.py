"""Hugging Face ``transformers`` models on :func:`kernels.flash_attention`.

::

    from kernels.integrations import huggingface

    huggingface.register()  # once; then any model that dispatches through AttentionInterface:
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="triton_transformer")

:func:`register` adds :func:`attention_forward` to ``transformers.AttentionInterface`` under
:data:`NAME`, and SDPA's mask builder to ``AttentionMaskInterface`` under the same name, so the
models build the boolean masks (True = attend) they build for ``"sdpa"``, which the kernel reads
as they are. The function reads its arguments as ``transformers``' own SDPA function does
(``transformers.integrations.sdpa_attention``): causality only through ``is_causal`` when no
mask is given, grouped-query attention from the head counts, T5's learnt ``position_bias`` as a
float mask (whose gradient the kernel computes). ``transformers`` is an optional dependency
(``pip install -e ".[huggingface]"``); importing this module does not need it, registering does.

Differences from ``"sdpa"``: a query that sees no key (a padding query under a padding mask)
gets zeros where SDPA averages the values; the outputs at every other position agree. Attention
dropout (the ``dropout`` transformers passes in training) is applied inside the kernel, with its
own random numbers, so a training step with dropout matches ``"sdpa"`` in distribution only.
Logit softcapping (``softcap``, Gemma 2) and attention sinks (``s_aux``, GPT-OSS) are refused with
a ``ValueError``: the kernel does not compute them, and leaving them out would change the outputs.
"""

from __future__ import annotations

import torch

from kernels import flash_attention

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
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """``transformers``' attention-function signature: q (b, h, i, d), k and v (b, h_kv, j, d)
    -> ((b, i, h, d) output, no attention weights)."""
    for name in ("softcap", "s_aux"):
        if kwargs.get(name) is not None:
            raise ValueError(f"attention {NAME!r} does not support {name} yet: use 'eager'")
    len_q = query.shape[2]
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    is_causal = bool(len_q > 1 and attention_mask is None and is_causal)
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
        scale=scaling, enable_gqa=key.shape[1] != query.shape[1],
    )  # fmt: skip
    return out.transpose(1, 2).contiguous(), None


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
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
