"""What flash_attention does to its scores beyond SDPA's arguments, checked and gathered in one
place: the anchoring of causality, a sliding window, softcapping, ALiBi slopes and sinks.

Every position-dependent option is measured from a query's **anchored position** a(i):
``a(i) = i`` top-left (the default, as ``F.scaled_dot_product_attention``'s ``is_causal``) or
``a(i) = i + len_k - len_q`` bottom-right (``torch.nn.attention.bias.causal_lower_right``, a
decoder's cache, FlashAttention-2). Query i sees key j iff
``a(i) - left <= j <= a(i) + right`` (FlashAttention-2's ``window_size=(left, right)``, -1
unbounded); causality is ``right = 0``. The scores, in order: scaled, softcapped
(``c * tanh(s / c)``), ALiBi's ``-slope * |a(i) - j|`` added, the attention mask applied, the
window applied; each row's softmax denominator then takes ``exp(sink)`` as well.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch

ALIGNMENTS = ("top_left", "bottom_right")


class ScoreOptions(NamedTuple):
    """The checked options of one call, as the launcher reads them. ``window``: (left, right),
    -1 where unbounded, right = 0 under causality; ``softcap`` 0 when off; ``alibi_slopes``
    float32 (b|1, h) or None; ``sinks`` (h,) or None."""

    bottom_right: bool = False
    window: tuple[int, int] = (-1, -1)
    softcap: float = 0.0
    alibi_slopes: torch.Tensor | None = None
    sinks: torch.Tensor | None = None

    def anchor_shift(self, len_q: int, len_k: int) -> int:
        """a(i) - i: 0 top-left, len_k - len_q bottom-right."""
        return len_k - len_q if self.bottom_right else 0

    def edges(self, len_q: int, len_k: int, is_causal: bool) -> tuple[int, int]:
        """The window's (left, right) as the kernels take it: right = 0 under causality, and
        -1 for an edge that hides nothing at these lengths (a reach of len_q + len_k or more:
        nothing is compiled for it, and no int32 overflows)."""
        left, right = self.window
        if is_causal:
            right = 0
        reach = len_q + len_k
        return tuple(-1 if n < 0 or n >= reach else n for n in (left, right))


PLAIN = ScoreOptions()


def score_options(
    q, k, causal_bias, is_causal, alignment, window_size, softcap, alibi_slopes, sinks,
    caller="flash_attention",
) -> tuple[bool, ScoreOptions]:  # fmt: skip
    """(is_causal, the checked options) of one flash_attention call (after q, k, v are
    checked). ``causal_bias``: a ``torch.nn.attention.bias.CausalBias`` passed as attn_mask,
    read without materialising it: causal, anchored as its variant says. ``caller``: the
    function the errors name."""
    bottom_right = check_alignment(alignment)
    if causal_bias is not None:
        if is_causal:
            raise ValueError(
                "flash_attention: attn_mask is a CausalBias, which is causal already; pass "
                "is_causal=False with it (as F.scaled_dot_product_attention requires)"
            )
        lower_right = _causal_bias_is_lower_right(causal_bias, q, k)
        if bottom_right is not None and bottom_right != lower_right:
            raise ValueError(
                f"flash_attention: alignment={alignment!r} contradicts attn_mask, a CausalBias "
                f"aligned {ALIGNMENTS[lower_right]}"
            )
        is_causal, bottom_right = True, lower_right
    options = ScoreOptions(
        bottom_right=bool(bottom_right),
        window=check_window(window_size, caller),
        softcap=check_softcap(softcap, caller),
        alibi_slopes=check_alibi_slopes(alibi_slopes, q, caller),
        sinks=check_sinks(sinks, q, caller),
    )
    return is_causal, options


def _causal_bias_is_lower_right(causal_bias, q, k) -> bool:
    """Whether a CausalBias is lower-right (else upper-left); its lengths must be q's and k's."""
    from torch.nn.attention.bias import CausalVariant

    lengths = (causal_bias.seq_len_q, causal_bias.seq_len_kv)
    if lengths != (q.shape[-2], k.shape[-2]):
        raise ValueError(
            f"flash_attention: attn_mask is a CausalBias for (len_q, len_k) = {lengths}, but the "
            f"inputs have ({q.shape[-2]}, {k.shape[-2]})"
        )
    return causal_bias.variant == CausalVariant.LOWER_RIGHT


def check_alignment(alignment) -> bool | None:
    """True for "bottom_right", False for "top_left", None when not given."""
    if alignment is None:
        return None
    if alignment not in ALIGNMENTS:
        raise ValueError(
            f"flash_attention: alignment must be one of {ALIGNMENTS}, got {alignment!r}"
        )
    return alignment == "bottom_right"


def check_window(window_size, caller="flash_attention") -> tuple[int, int]:
    """window_size as (left, right) ints >= -1."""
    if not (isinstance(window_size, tuple | list) and len(window_size) == 2):
        raise TypeError(
            f"{caller}: window_size must be a pair (left, right) of ints >= -1 "
            f"(-1: unbounded), got {window_size!r:.60}"
        )
    for n in window_size:
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise TypeError(f"{caller}: window_size must hold ints, got {window_size!r:.60}")
        if n < -1:
            raise ValueError(
                f"{caller}: window_size entries must be >= -1 (-1: unbounded), got "
                f"{tuple(window_size)}"
            )
    return int(window_size[0]), int(window_size[1])


def check_softcap(softcap, caller="flash_attention") -> float:
    """softcap as a finite float >= 0 (0: off)."""
    if isinstance(softcap, bool) or not isinstance(softcap, numbers.Real):
        raise TypeError(f"{caller}: softcap must be a float >= 0, got {type(softcap).__name__}")
    softcap = float(softcap)
    if not (math.isfinite(softcap) and softcap >= 0.0):
        raise ValueError(f"{caller}: softcap must be finite and >= 0 (0: off), got {softcap}")
    return softcap


def check_alibi_slopes(slopes, q, caller="flash_attention") -> torch.Tensor | None:
    """ALiBi slopes as a float32 (b|1, h) view (stride 0 over the batch for (h,))."""
    if slopes is None:
        return None
    b, h = q.shape[:2]
    _check_small_tensor(slopes, "alibi_slopes", q, (torch.float32,), caller)
    if tuple(slopes.shape) not in ((h,), (b, h)):
        raise ValueError(
            f"{caller}: alibi_slopes must be ({h},) or ({b}, {h}) (heads, or batch and "
            f"heads), got {tuple(slopes.shape)}"
        )
    if slopes.requires_grad:
        raise ValueError(
            f"{caller}: alibi_slopes get no gradient (as in FlashAttention-2); detach them"
        )
    return slopes.expand(b, h) if slopes.dim() == 1 else slopes


def check_sinks(sinks, q, caller="flash_attention") -> torch.Tensor | None:
    """Sinks: (h,) logits, float32 or q's dtype."""
    if sinks is None:
        return None
    _check_small_tensor(sinks, "sinks", q, (torch.float32, q.dtype), caller)
    if tuple(sinks.shape) != (q.shape[1],):
        raise ValueError(
            f"{caller}: sinks must be one logit per query head, ({q.shape[1]},), got "
            f"{tuple(sinks.shape)}"
        )
    return sinks


def _check_small_tensor(t, name, q, dtypes, caller) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{caller}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        allowed = " or ".join(dict.fromkeys(str(d) for d in dtypes))  # float32 once, not twice
        raise TypeError(f"{caller}: {name} must be {allowed}, got {t.dtype}")
    if t.device != q.device:
        raise ValueError(f"{caller}: {name} is on {t.device}, the inputs on {q.device}")
