"""The weights of a map: one layer's, by the naive path or from the kernel's log-sum-exp, and
their mean or grid over layers and heads.

einops legend: b batch, h heads, i query positions, j key positions, l layers."""

from __future__ import annotations

import torch
from einops import reduce

from transformer.model import Transformer
from transformer.translation.attention_maps.inputs import (
    check_kind,
    check_layer_head,
    normalize_layer_head,
    num_layers,
)
from transformer.translation.attention_maps.lse import flash_layer_weights

METHODS = ("naive", "flash")
MAP_NAMES = {"cross": "cross", "encoder": "encoder_self", "decoder": "decoder_self"}


@torch.no_grad()
def layer_weights(
    model: Transformer,
    src: torch.Tensor,
    tgt_in: torch.Tensor,
    kind: str,
    layer: int,
    head: int | None = None,
    method: str = "naive",
) -> torch.Tensor:
    """The weights (b, h, i, j) one layer used on this teacher-forced pair (h = 1 with ``head``).

    ``method`` ``naive`` takes them from the model's einops path, ``flash`` rebuilds them from
    the Triton kernel's log-sum-exp; the two agree to float32 tolerance.
    """
    check_layer_head(model, kind, layer, head)
    if method == "flash":
        return flash_layer_weights(model, src, tgt_in, kind, layer, head)
    if method != "naive":
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    was_training = model.training
    model.eval()
    try:
        maps = model.attention_maps(src, tgt_in)
    finally:
        model.train(was_training)
    weights = getattr(maps, MAP_NAMES[kind])[layer].float()
    return weights if head is None else weights[:, [head]]


@torch.no_grad()
def attention_map(
    model: Transformer,
    src: torch.Tensor,
    tgt_in: torch.Tensor,
    kind: str = "cross",
    layer: int | None = None,
    head: int | None = None,
    grid: bool = False,
    method: str = "naive",
) -> torch.Tensor:
    """The map of the first sentence in the batch, reduced as asked.

    ``layer`` None means every layer, ``head`` None every head. Without ``grid`` the result
    is (i, j): the mean over the chosen layers and heads. With ``grid`` it is (l, h, i, j),
    one map per layer and head, and ``head`` must be None. Layers are computed one at a time.
    """
    check_kind(kind)
    layer, head = normalize_layer_head(model, kind, layer, head)
    if grid and head is not None:
        raise ValueError("a grid shows every head; do not pick one head as well")
    layers = range(num_layers(model, kind)) if layer is None else [layer]
    per_layer = [layer_weights(model, src, tgt_in, kind, n, head, method)[0] for n in layers]
    stacked = torch.stack(per_layer)  # (l, h, i, j)
    return stacked if grid else reduce(stacked, "l h i j -> i j", "mean")
