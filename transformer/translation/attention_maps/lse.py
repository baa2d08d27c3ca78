"""Attention weights rebuilt from the flash kernel's row-wise log-sum-exp: the kernels never
form the (i, j) matrix, so the weights are ``exp(score(q, k) − lse)``, a block of query rows
at a time.

einops legend: b batch, h heads, i query positions, j key positions, d head dim."""

from __future__ import annotations

import torch
from einops import einsum

from transformer.kernel_package import kernel_function
from transformer.model import Transformer
from transformer.translation.attention_maps.inputs import capture_attention_inputs


def weights_from_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
    scale: float | None,
    block_rows: int = 64,
    score=None,
    *,
    alignment: str = "bottom_right",
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention probabilities (b, h, i, j) rebuilt from the row-wise log-sum-exp (b, h, i).

    ``exp(q kᵀ · scale − lse)`` on visible keys, 0 elsewhere, ``block_rows`` query rows at a
    time (so the only temporaries are a block of rows). With ``score`` (a module with
    ``logits(q, k)``, e.g. the additive score) its logits stand in for ``q kᵀ · scale``. A row
    with no visible key (lse = -inf) gets zeros.

    The flash kernel's score options, given as it was given them, are applied the same way
    (``kernels.flash_attention``): causality, the window and ALiBi anchored at ``alignment``
    (bottom-right, this package's causality, unless "top_left"), the logits softcapped, then
    ALiBi's distances added. Sinks need nothing here: the kernel's lse includes them, so each
    row's weights sum to one minus its sink's share.
    """
    if alignment not in ("top_left", "bottom_right"):
        raise ValueError(f"alignment must be 'top_left' or 'bottom_right', got {alignment!r}")
    len_q, len_k = q.shape[-2], k.shape[-2]
    shift = len_k - len_q if alignment == "bottom_right" else 0
    left, right = window_size
    right = 0 if is_causal else right
    cols = torch.arange(len_k, device=q.device)
    blocks = []
    for start in range(0, len_q, block_rows):
        rows = slice(start, min(start + block_rows, len_q))
        if score is None:
            logits = einsum(q[:, :, rows].float(), k.float(), "b h i d, b h j d -> b h i j") * scale
        else:
            logits = score.logits(q[:, :, rows], k).float()
        anchored = torch.arange(rows.start, rows.stop, device=q.device)[:, None] + shift
        if softcap > 0.0:
            logits = softcap * torch.tanh(logits / softcap)
        if alibi_slopes is not None:
            slopes = alibi_slopes.float().expand(*logits.shape[:2])[..., None, None]
            logits = logits - slopes * (anchored - cols[None, :]).abs()
        visible = torch.ones_like(logits, dtype=torch.bool)
        if attn_mask is not None:
            visible = visible & attn_mask
        if right >= 0:  # causality (right = 0) or the window's upper edge
            visible = visible & (cols[None, :] <= anchored + right)
        if left >= 0:
            visible = visible & (cols[None, :] >= anchored - left)
        # where(), not a product: exp(logits + inf) of a fully hidden row must not become NaN.
        blocks.append(torch.where(visible, torch.exp(logits - lse[:, :, rows, None]), 0.0))
    if not blocks:
        return q.new_zeros(*q.shape[:2], 0, len_k, dtype=torch.float32)
    return torch.cat(blocks, dim=2)


def flash_layer_weights(
    model: Transformer,
    src: torch.Tensor,
    tgt_in: torch.Tensor,
    kind: str,
    layer: int,
    head: int | None = None,
    block_rows: int = 64,
) -> torch.Tensor:
    """One layer's weights (b, h, i, j), from the flash (or fused additive) kernel's lse.

    With ``head`` the kernel runs on that head alone and h is 1. On the CPU the kernel needs
    ``TRITON_INTERPRET=1`` set before triton is first imported.
    """
    flash_attention = kernel_function("flash_attention")

    inputs = capture_attention_inputs(model, src, tgt_in, kind, layer)
    heads = slice(None) if head is None else [head % model.config.heads]
    q, k, v = inputs.q, inputs.k, inputs.v
    if inputs.scale is None:  # the additive score: every head's features, then pick the head
        with torch.no_grad():
            _, lse = inputs.score.fused(q, k, v, inputs.attn_mask, inputs.is_causal, True)
            weights = weights_from_lse(
                q, k, lse, inputs.attn_mask, inputs.is_causal, None, block_rows, inputs.score
            )
        return weights[:, heads]
    q, k, v = q[:, heads], k[:, heads], v[:, heads]
    with torch.no_grad():
        _, lse = flash_attention(
            q.contiguous(),
            k.contiguous(),
            v.contiguous(),
            attn_mask=inputs.attn_mask,
            is_causal=inputs.is_causal,
            scale=inputs.scale,
            return_lse=True,
            alignment="bottom_right",  # the model's causality (transformer.masks)
        )
    return weights_from_lse(q, k, lse, inputs.attn_mask, inputs.is_causal, inputs.scale, block_rows)
