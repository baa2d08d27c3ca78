"""Which attention module a map is of, and what it scored: the q, k and v one layer saw,
taken by a forward hook for one forward pass.

einops legend: b batch, h heads, i query positions, j key positions, d head dim."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from transformer.attention import MultiHeadAttention
from transformer.model import Transformer

KINDS = ("cross", "encoder", "decoder")


def num_layers(model: Transformer, kind: str) -> int:
    """How many layers have an attention of this ``kind``."""
    check_kind(kind)
    stack = model.encoder if kind == "encoder" else model.decoder
    return len(stack.layers)


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; choose one of {KINDS}")


def check_layer_head(model: Transformer, kind: str, layer: int | None, head: int | None) -> None:
    """Raise ``ValueError`` naming the valid range unless ``layer``/``head`` exist (or are None).

    Negative indices count from the end, as in Python.
    """
    layers, heads = num_layers(model, kind), model.config.heads
    if layers == 0:
        raise ValueError(f"this model has no {kind} attention layers")
    if layer is not None and not -layers <= layer < layers:
        raise ValueError(
            f"layer {layer} is out of range: the model has {layers} {kind} attention layers, "
            f"numbered 0 to {layers - 1} (or -{layers} to -1 from the end)"
        )
    if head is not None and not -heads <= head < heads:
        raise ValueError(
            f"head {head} is out of range: the model has {heads} heads, numbered 0 to "
            f"{heads - 1} (or -{heads} to -1 from the end)"
        )


def normalize_layer_head(
    model: Transformer, kind: str, layer: int | None, head: int | None
) -> tuple[int | None, int | None]:
    """Check ``layer``/``head`` and turn negative indices into the non-negative ones they mean."""
    check_layer_head(model, kind, layer, head)
    layer = None if layer is None else layer % num_layers(model, kind)
    head = None if head is None else head % model.config.heads
    return layer, head


def attention_module(model: Transformer, kind: str, layer: int) -> MultiHeadAttention:
    """The :class:`MultiHeadAttention` of ``kind`` in ``layer``."""
    check_layer_head(model, kind, layer, None)
    if kind == "encoder":
        return model.encoder.layers[layer].self_attention
    if kind == "decoder":
        return model.decoder.layers[layer].self_attention
    return model.decoder.layers[layer].cross_attention


@dataclass
class AttentionInputs:
    """What one attention module scored: q, k, v, each (b, h, n, d).

    For a dot-product score q is after the score's query map and ``scale`` multiplies q·k; for
    the additive score q is what the score takes (its features are computed from it) and
    ``scale`` is None. ``score`` is the module's score function. ``attn_mask`` is the key mask
    (b, 1, 1, j), True = real key, or None; ``is_causal`` is bottom-right aligned. ``out`` is
    the module's output (b, i, d_model).
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    attn_mask: torch.Tensor | None
    is_causal: bool
    scale: float | None
    out: torch.Tensor
    score: torch.nn.Module


@torch.no_grad()
def capture_attention_inputs(
    model: Transformer, src: torch.Tensor, tgt_in: torch.Tensor, kind: str, layer: int
) -> AttentionInputs:
    """Run the model once on (src, tgt_in) and take the inputs of one layer's attention.

    A forward hook on that one module, removed before returning, sees the call's arguments
    and output; nothing is stored on the module.
    """
    attention = attention_module(model, kind, layer)
    signature = inspect.signature(attention.forward)
    captured: dict[str, object] = {}

    def hook(module, args, kwargs, output):
        captured["call"] = signature.bind(*args, **kwargs).arguments
        captured["out"] = output[0]

    handle = attention.register_forward_hook(hook, with_kwargs=True)
    was_training = model.training
    model.eval()
    try:
        memory, src_key_mask = model.encode(src)
        if kind != "encoder":
            model.decode(tgt_in, memory, src_key_mask)
    finally:
        handle.remove()
        model.train(was_training)
    call = captured["call"]
    x = call["x"]
    kv = call.get("kv")
    kv = attention.project_kv(x) if kv is None else kv
    key_mask = call.get("key_mask")
    score = attention.score
    q = attention.split_heads(attention.to_q(x))
    dot_product = hasattr(score, "queries")
    return AttentionInputs(
        q=score.queries(q) if dot_product else q,
        k=kv.k,
        v=kv.v,
        attn_mask=None if key_mask is None else key_mask[:, None, None, :],
        is_causal=bool(call.get("is_causal", False)),
        scale=score.scale if dot_product else None,
        out=captured["out"],
        score=score,
    )
