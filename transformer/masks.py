"""The one mask convention of this package, and the helpers that build and check masks.

Convention (the same as ``torch.nn.functional.scaled_dot_product_attention``):

* A mask is a ``torch.bool`` tensor broadcastable to ``(batch, heads, len_q, len_k)``.
* ``True`` means *this key takes part* in the query's softmax; ``False`` means it is hidden.
* Key padding masks are ``(batch, len_k)`` with ``True`` on real tokens; they are lifted to
  ``(batch, 1, 1, len_k)`` by :func:`key_padding_to_attn_mask`, where
  :class:`~transformer.attention.MultiHeadAttention` takes its ``key_mask``.
* Causal masks are aligned **bottom-right**: query ``i`` sees key ``j`` iff
  ``j <= i + (len_k - len_q)``. With ``len_q == len_k`` this is the usual lower triangle; with a
  key/value cache (``len_q < len_k``) the last query sees every key. SDPA's ``is_causal`` aligns
  top-left instead, which is why the ``sdpa`` backend is given an explicit mask in that case.
* A query whose every key is hidden gets an output of zeros (and zero gradients), never NaN.
"""

from __future__ import annotations

import torch


def causal_mask(len_q: int, len_k: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Bottom-right aligned causal mask of shape ``(len_q, len_k)``, ``True`` = visible."""
    offset = len_k - len_q
    rows = torch.arange(len_q, device=device).unsqueeze(1)
    cols = torch.arange(len_k, device=device).unsqueeze(0)
    return cols <= rows + offset


def key_padding_to_attn_mask(key_padding_mask: torch.Tensor) -> torch.Tensor:
    """Lift a ``(batch, len_k)`` key mask (``True`` = real token) to ``(batch, 1, 1, len_k)``."""
    if key_padding_mask.dtype != torch.bool:
        raise TypeError(
            f"key padding mask must be torch.bool (True = real token), got {key_padding_mask.dtype}"
        )
    if key_padding_mask.dim() != 2:
        raise ValueError(
            f"key padding mask must have shape (batch, len_k), got {tuple(key_padding_mask.shape)}"
        )
    return key_padding_mask[:, None, None, :]


def check_attn_mask(
    attn_mask: torch.Tensor | None, batch: int, heads: int, len_q: int, len_k: int
) -> None:
    """Raise a clear error unless ``attn_mask`` follows the convention for these sizes."""
    if attn_mask is None:
        return
    if not isinstance(attn_mask, torch.Tensor):
        raise TypeError(f"attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
    if attn_mask.dtype != torch.bool:
        raise TypeError(
            "attn_mask must be torch.bool with True = this key takes part "
            f"(the convention of F.scaled_dot_product_attention), got {attn_mask.dtype}"
        )
    target = (batch, heads, len_q, len_k)
    if attn_mask.dim() > 4:
        raise ValueError(f"attn_mask has {attn_mask.dim()} dims; it must broadcast to {target}")
    shape = (1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape)
    for size, want, name in zip(shape, target, ("batch", "heads", "len_q", "len_k"), strict=True):
        if size not in (1, want):
            raise ValueError(
                f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to "
                f"(batch, heads, len_q, len_k) = {target}: its {name} dim is {size}, "
                "expected " + (f"1 or {want}" if want != 1 else "1")
            )


def combine_masks(
    attn_mask: torch.Tensor | None,
    is_causal: bool,
    len_q: int,
    len_k: int,
    device: torch.device,
) -> torch.Tensor | None:
    """One boolean mask (broadcastable, ``True`` = visible) from a mask and the causal flag."""
    if not is_causal:
        return attn_mask
    causal = causal_mask(len_q, len_k, device=device)
    return causal if attn_mask is None else attn_mask & causal


def is_key_only_mask(attn_mask: torch.Tensor) -> bool:
    """Whether the mask varies only along batch and keys, i.e. is ``(batch|1, 1, 1, len_k)``."""
    shape = (1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape)
    return shape[1] == 1 and shape[2] == 1
