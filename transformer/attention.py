"""Multi-head attention, written from einops pieces.

einops legend used throughout:
    b  batch            h  heads           d  head dim (e: a second feature dim)
    n  positions        i  query positions j  key/value positions
    a  hidden size of the additive (Bahdanau) score

Projections live in :class:`MultiHeadAttention`; the scaled dot-product math lives in one
function, :func:`attend`, whose ``backend`` switch lets PyTorch's SDPA (a peer and test oracle)
or our Triton kernel stand in for the reference einops math.

Masks follow one convention everywhere (see :mod:`transformer.masks`): boolean, ``True`` = this
key takes part, causal aligned bottom-right, and a query with no visible key gets zeros.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import einsum
from einops.layers.torch import EinMix, Rearrange
from torch import nn

from .config import BACKENDS, ModelConfig
from .kernel_package import kernel_function
from .masks import check_attn_mask, combine_masks, is_key_only_mask, key_padding_to_attn_mask


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must have shape (batch, heads, len, head_dim), got {tuple(t.shape)}"
            )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.dtype.is_floating_point:
        raise TypeError(f"q, k, v must be floating point, got {q.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"head dims differ: q has head_dim {q.shape[-1]} but k has {k.shape[-1]}")
    if k.shape[:-1] != v.shape[:-1]:
        raise ValueError(
            f"k {tuple(k.shape)} and v {tuple(v.shape)} must agree in (batch, heads, len_k)"
        )
    if q.shape[:2] != k.shape[:2]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree in (batch, heads)")


def _checked_scale(scale):
    """``scale``: None (1/√d) or a real number: a Python or NumPy number, a traced one under
    ``torch.compile``, or a one-element real tensor, returned 0-dim (as SDPA takes it, and so
    that it neither promotes nor broadcasts the scores)."""
    if scale is None:
        return None
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1 or scale.dtype.is_complex or scale.dtype == torch.bool:
            raise TypeError(
                f"scale must be a real number, got a {scale.dtype} tensor {scale.shape}"
            )
        return scale.reshape(())
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real | torch.SymFloat):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
    return scale


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last dim of ``logits`` (b h i j) where ``mask`` is True.

    Hidden keys get weight exactly 0; a row with no visible key gets all zeros. Hidden logits are
    filled with the dtype's most negative *finite* value rather than -inf, so that a fully hidden
    row stays finite (uniform) through the softmax and its backward, and is then zeroed by the
    mask: no NaN appears forward or backward.
    """
    if mask is None:
        return logits.softmax(dim=-1)
    filled = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    return filled.softmax(dim=-1) * mask


def weigh_values(
    logits: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference math after the scores, which every naive path shares: the masked softmax of
    ``logits`` (b, h, i, j), dropout on it, and the weighted sum of ``v`` (b, h, j, e).

    Returns the output (b, h, i, e) and the weights before dropout (b, h, i, j).
    """
    weights = masked_softmax(logits, mask)
    dropped = F.dropout(weights, dropout_p) if dropout_p else weights
    return einsum(dropped, v, "b h i j, b h j e -> b h i e"), weights


def attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """The attention probabilities ``softmax(q kᵀ · scale)`` of shape (b, h, i, j).

    ``q`` is (b, h, i, d), ``k`` is (b, h, j, d); ``attn_mask`` is boolean, broadcastable to
    (b, h, i, j), True = the key takes part; ``is_causal`` aligns bottom-right. Rows sum to one,
    or to zero where every key is hidden.
    """
    scale = _check_inputs(q, k, k, attn_mask, is_causal, scale)  # k stands in for v
    return masked_softmax(*dot_product_logits(q, k, attn_mask, is_causal, scale))


def _check_inputs(q, k, v, attn_mask, is_causal, scale):
    """What :func:`attend` and :func:`attention_weights` refuse: q, k, v (ranks, dtypes, devices,
    head dims, lengths), a mask that is not boolean or broadcastable, an ``is_causal`` that is
    not a bool and a bad scale. Returns the scale, a one-element tensor made 0-dim."""
    _check_qkv(q, k, v)
    batch, heads, len_q, _ = q.shape
    check_attn_mask(attn_mask, batch, heads, len_q, k.shape[-2])
    if attn_mask is not None and attn_mask.device != q.device:
        raise ValueError(f"attn_mask is on {attn_mask.device}, but q, k, v are on {q.device}")
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be True or False, got {is_causal!r}")
    return _checked_scale(scale)


def dot_product_logits(
    q: torch.Tensor,
    k: torch.Tensor,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
    scale: float | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``q kᵀ · scale`` (b, h, i, j), scale 1/√d by default, and the one mask it takes."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = einsum(q, k, "b h i d, b h j d -> b h i j") * scale
    return logits, combine_masks(attn_mask, is_causal, q.shape[-2], k.shape[-2], q.device)


def _sdpa(q, k, v, attn_mask, is_causal, scale, dropout_p):
    len_q, len_k = q.shape[-2], k.shape[-2]
    if attn_mask is None and (not is_causal or len_q == len_k):
        # SDPA's own causal flag aligns top-left, which equals bottom-right only when square.
        return F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout_p, is_causal=is_causal, scale=scale
        )
    mask = combine_masks(attn_mask, is_causal, len_q, len_k, q.device)
    if mask.dim() < 2:  # SDPA reads a 1-D mask (len_k,) wrongly when len_k is 1: lift it
        mask = mask.expand(len_q, len_k)
    has_key = mask.any(dim=-1, keepdim=True)
    # A row with no visible key would give NaN inside SDPA: let it see every key, then zero it.
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask | ~has_key, dropout_p=dropout_p, scale=scale
    )
    return out * has_key


def _triton(q, k, v, attn_mask, is_causal, scale, dropout_p):
    flash_attention = kernel_function("flash_attention")

    # The kernel reads any mask broadcastable to (b, h, i, j) as SDPA does, in place, and
    # drops probabilities as SDPA does, with its own random numbers (seeded from torch's).
    # Its causality aligns top-left by default, as SDPA's; this library's is bottom-right
    # (a decoder's new queries are the last positions of its key/value cache).
    return flash_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
        alignment="bottom_right",
    )  # fmt: skip


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    backend: str = "naive",
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Scaled dot-product attention ``softmax(q kᵀ · scale) v``, shaped like SDPA.

    Shapes: ``q`` (b, h, i, d), ``k`` (b, h, j, d), ``v`` (b, h, j, e) -> (b, h, i, e).
    ``attn_mask``: boolean, broadcastable to (b, h, i, j), True = this key takes part.
    ``is_causal``: query i sees key j iff j <= i + (j_len - i_len) (bottom-right aligned).
    ``scale`` defaults to 1/√d. A query with no visible key gets zeros, never NaN.
    ``backend``: ``naive`` (the einops reference), ``sdpa`` (PyTorch's kernel, a peer and an
    oracle) or ``triton`` (our flash kernel). They agree to floating-point tolerance (with
    dropout, in distribution: each draws its own random numbers).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    scale = _check_inputs(q, k, v, attn_mask, is_causal, scale)
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real | torch.SymFloat):
        raise TypeError(f"dropout_p must be a number in [0, 1), got {dropout_p!r}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if backend == "sdpa":
        return _sdpa(q, k, v, attn_mask, is_causal, scale, dropout_p)
    if backend == "triton":
        return _triton(q, k, v, attn_mask, is_causal, scale, dropout_p)
    logits, mask = dot_product_logits(q, k, attn_mask, is_causal, scale)
    return weigh_values(logits, v, mask, dropout_p)[0]


# --- score functions: how a query meets a key ------------------------------------------------


class DotProductScore(nn.Module):
    """``q · k`` times a fixed scale: 1/√d for scaled dot-product (default), 1 for plain."""

    def __init__(self, config: ModelConfig, scaled: bool = True) -> None:
        super().__init__()
        self.scale = config.head_dim**-0.5 if scaled else 1.0

    def queries(self, q: torch.Tensor) -> torch.Tensor:
        """What is dotted with the keys; the identity here."""
        return q

    def logits(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Raw scores (b, h, i, j) before masking and softmax."""
        return einsum(self.queries(q), k, "b h i d, b h j d -> b h i j") * self.scale

    def forward(self, q, k, v, attn_mask, is_causal, backend, dropout_p) -> torch.Tensor:
        return attend(self.queries(q), k, v, attn_mask, is_causal, self.scale, backend, dropout_p)


class GeneralScore(DotProductScore):
    """Luong's multiplicative ("general") score ``q W kᵀ`` with one learnt W per head.

    Since ``q W kᵀ = (q W) kᵀ`` it runs through :func:`attend` with scale 1, so every backend,
    the flash kernel too, computes it. W starts at I/√d, i.e. at scaled dot-product.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, scaled=False)
        d = config.head_dim
        self.mix = EinMix("b h i d -> b h i e", weight_shape="h d e", h=config.heads, d=d, e=d)
        with torch.no_grad():
            self.mix.weight.copy_(torch.eye(d).expand(config.heads, d, d) / math.sqrt(d))

    def queries(self, q: torch.Tensor) -> torch.Tensor:
        return self.mix(q)


class AdditiveScore(nn.Module):
    """Bahdanau's additive score ``vᵀ tanh(W_q q + W_k k + b)``, per head.

    The naive path builds a (b, h, i, j, a) tensor. The ``triton`` backend computes the features
    ``W_q q`` and ``W_k k + b`` here (ordinary matmuls) and hands them with the score vector to
    the fused kernel :func:`kernels.additive_attention`, which sums the tanh terms tile by tile
    and never stores anything of size i x j. SDPA computes dot products only.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h, d = config.heads, config.head_dim
        self.to_query_features = EinMix("b h i d -> b h i a", weight_shape="h d a", h=h, d=d, a=d)
        self.to_key_features = EinMix(
            "b h j d -> b h j a", weight_shape="h d a", bias_shape="h a", h=h, d=d, a=d
        )
        self.to_score = EinMix("b h i j a -> b h i j", weight_shape="h a", h=h, a=d)

    def logits(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        query_features = self.to_query_features(q)[:, :, :, None, :]
        key_features = self.to_key_features(k)[:, :, None, :, :]
        return self.to_score(torch.tanh(query_features + key_features))

    def fused(self, q, k, v, attn_mask, is_causal, return_lse=False):
        """The fused kernel's output (and log-sum-exp): key masks only, no dropout."""
        if attn_mask is not None and not is_key_only_mask(attn_mask):
            raise ValueError(
                "backend 'triton' takes key masks only, shaped (batch, 1, 1, len_k); got "
                f"attn_mask of shape {tuple(attn_mask.shape)}. Pass causality with is_causal=True."
            )
        additive_attention = kernel_function("additive_attention")

        # Under autocast the features come out of the matmuls in 16 bits but the key bias
        # promotes its sum to float32: the kernel takes one dtype, v's.
        query_features = self.to_query_features(q).to(v.dtype)
        key_features = self.to_key_features(k).to(v.dtype)
        return additive_attention(
            query_features,
            key_features,
            self.to_score.weight,
            v,
            attn_mask=attn_mask,
            is_causal=is_causal,
            return_lse=return_lse,
        )

    def forward(self, q, k, v, attn_mask, is_causal, backend, dropout_p) -> torch.Tensor:
        if backend == "triton":
            if dropout_p:
                raise ValueError("backend 'triton' does not apply attention dropout; use 0")
            return self.fused(q, k, v, attn_mask, is_causal)
        if backend != "naive":
            raise ValueError(
                f"the additive score runs on backend 'naive' or 'triton', not {backend!r}"
            )
        mask = combine_masks(attn_mask, is_causal, q.shape[-2], k.shape[-2], q.device)
        return weigh_values(self.logits(q, k), v, mask, dropout_p)[0]


def build_score(config: ModelConfig) -> nn.Module:
    """The score module named by ``config.score``."""
    if config.score == "scaled_dot":
        return DotProductScore(config, scaled=True)
    if config.score == "dot":
        return DotProductScore(config, scaled=False)
    if config.score == "general":
        return GeneralScore(config)
    if config.score == "additive":
        return AdditiveScore(config)
    raise ValueError(f"unknown score function {config.score!r}")


# --- the module ------------------------------------------------------------------------------


@dataclass
class KeyValue:
    """Keys and values already projected and split into heads, each (b, h, j, d)."""

    k: torch.Tensor
    v: torch.Tensor

    def extend(self, new: KeyValue) -> KeyValue:
        """These keys/values followed by ``new`` along the positions."""
        return KeyValue(torch.cat([self.k, new.k], dim=2), torch.cat([self.v, new.v], dim=2))

    def index_select(self, rows: torch.Tensor) -> KeyValue:
        """Keep (and reorder) batch rows, as beam search does."""
        return KeyValue(self.k.index_select(0, rows), self.v.index_select(0, rows))

    @property
    def length(self) -> int:
        return self.k.shape[2]


class MultiHeadAttention(nn.Module):
    """Project, split into heads, score, mask, softmax, weigh the values, merge, project out.

    Used for self-attention (keys from ``x``), cross-attention (keys from an encoder memory of
    another length, given as ``kv=attention.project_kv(memory)``) and cached decoding (``kv``
    holding past keys/values extended by the new ones).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d_model = config.d_model
        self.d_model, self.heads, self.head_dim = d_model, config.heads, config.head_dim
        self.backend = config.backend
        self.attention_dropout = config.attention_dropout
        self.to_q = nn.Linear(d_model, d_model)
        self.to_k = nn.Linear(d_model, d_model)
        self.to_v = nn.Linear(d_model, d_model)
        self.split_heads = Rearrange("b n (h d) -> b h n d", h=config.heads)
        self.merge_heads = Rearrange("b h n d -> b n (h d)")
        self.to_out = nn.Linear(d_model, d_model)
        self.score = build_score(config)

    def _check_inputs(self, x, kv, key_mask) -> None:
        """Refuse, naming the argument, an ``x`` that is not (batch, len, d_model), a ``kv``
        that is not this module's heads for x's batch, and a ``key_mask`` that does not fit."""
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.d_model:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be (batch, len, d_model) = (*, *, {self.d_model}), got {got}")
        batch, len_k = x.shape[0], x.shape[1]
        if kv is not None:
            if not isinstance(kv, KeyValue):
                raise TypeError(
                    f"kv must be a KeyValue (from project_kv) or None, got {type(kv).__name__}"
                )
            want = (batch, self.heads, kv.length, self.head_dim)
            for name, t in (("kv.k", kv.k), ("kv.v", kv.v)):
                if tuple(t.shape) != want:
                    raise ValueError(
                        f"{name} of shape {tuple(t.shape)} must be (batch, heads, len_k, "
                        f"head_dim) = ({batch}, {self.heads}, *, {self.head_dim}), from "
                        "project_kv of a (batch, len_k, d_model) context with x's batch"
                    )
            len_k = kv.length
        if isinstance(key_mask, torch.Tensor) and key_mask.dim() == 2:
            sizes = zip(key_mask.shape, (batch, len_k), ("batch", "len_k"), strict=True)
            for size, want, name in sizes:
                if size not in (1, want):
                    raise ValueError(
                        f"key_mask of shape {tuple(key_mask.shape)} does not fit (batch, len_k) "
                        f"= ({batch}, {len_k}): its {name} dim is {size}, expected "
                        + (f"1 or {want}" if want != 1 else "1")
                    )
            if key_mask.device != x.device:
                raise ValueError(f"key_mask is on {key_mask.device}, but x is on {x.device}")

    def project_kv(self, context: torch.Tensor) -> KeyValue:
        """Keys and values of ``context`` (b, j, d_model), split into heads."""
        return KeyValue(self.split_heads(self.to_k(context)), self.split_heads(self.to_v(context)))

    def forward(
        self,
        x: torch.Tensor,
        kv: KeyValue | None = None,
        key_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from ``x`` (b, i, d_model) to ``kv`` (self-attention over ``x`` when None).

        ``key_mask``: boolean (b, j), True = real key. Returns the output (b, i, d_model) and,
        when ``need_weights``, the weights (b, h, i, j) the output was computed from, before
        attention dropout (which, in training, applies on this path as on the other).
        """
        self._check_inputs(x, kv, key_mask)  # here, once, not on each score's path
        q = self.split_heads(self.to_q(x))
        kv = self.project_kv(x) if kv is None else kv
        attn_mask = None if key_mask is None else key_padding_to_attn_mask(key_mask)
        check_attn_mask(attn_mask, q.shape[0], q.shape[1], q.shape[2], kv.length)
        dropout_p = self.attention_dropout if self.training else 0.0
        weights = None
        if need_weights:
            mask = combine_masks(attn_mask, is_causal, q.shape[-2], kv.length, q.device)
            out, weights = weigh_values(self.score.logits(q, kv.k), kv.v, mask, dropout_p)
        else:
            out = self.score(q, kv.k, kv.v, attn_mask, is_causal, self.backend, dropout_p)
        return self.to_out(self.merge_heads(out)), weights
