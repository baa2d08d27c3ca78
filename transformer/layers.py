"""Encoder and decoder stacks, named after "Attention Is All You Need".

einops legend: b batch, n/i positions, j memory positions, d model width, h heads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .attention import KeyValue, MultiHeadAttention
from .config import ModelConfig

AttentionRecord = dict[str, list[torch.Tensor]]


class FeedForward(nn.Sequential):
    """Position-wise feed-forward: d_model -> d_ff -> d_model with a ReLU between."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(
            nn.Linear(config.d_model, config.d_ff),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.d_ff, config.d_model),
        )


class SublayerConnection(nn.Module):
    """Residual connection around a sublayer, with layer norm before (pre-norm) or after it."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.norm_first = config.norm_first

    def forward(self, x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor]):
        if self.norm_first:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


def _record(record: AttentionRecord | None, name: str, weights: torch.Tensor | None) -> None:
    if record is not None:
        record.setdefault(name, []).append(weights)


class EncoderLayer(nn.Module):
    """Self-attention over the source, then feed-forward."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self_attention = MultiHeadAttention(config)
        self.feed_forward = FeedForward(config)
        self.sublayers = nn.ModuleList([SublayerConnection(config) for _ in range(2)])

    def forward(self, x, src_key_mask, record: AttentionRecord | None = None) -> torch.Tensor:
        def self_attend(h: torch.Tensor) -> torch.Tensor:
            out, weights = self.self_attention(
                h, key_mask=src_key_mask, need_weights=record is not None
            )
            _record(record, "encoder_self", weights)
            return out

        x = self.sublayers[0](x, self_attend)
        return self.sublayers[1](x, self.feed_forward)


@dataclass
class LayerCache:
    """What one decoder layer keeps between decoding steps."""

    self_kv: KeyValue | None = None
    cross_kv: KeyValue | None = None


@dataclass
class DecoderCache:
    """Per-layer key/value caches, so that generating token t costs O(t) rather than O(t²)."""

    layers: list[LayerCache] = field(default_factory=list)
    length: int = 0  # how many target positions are cached

    def reorder(self, rows: torch.Tensor) -> DecoderCache:
        """Keep batch ``rows`` of the self-attention caches (beam search). The cross-attention
        keys/values are left as they are: beams of one sentence share one encoder memory."""
        return DecoderCache(
            [LayerCache(layer.self_kv.index_select(rows), layer.cross_kv) for layer in self.layers],
            self.length,
        )


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder memory, then feed-forward."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self_attention = MultiHeadAttention(config)
        self.cross_attention = MultiHeadAttention(config)
        self.feed_forward = FeedForward(config)
        self.sublayers = nn.ModuleList([SublayerConnection(config) for _ in range(3)])

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        src_key_mask: torch.Tensor | None,
        cache: LayerCache | None = None,
        record: AttentionRecord | None = None,
    ) -> tuple[torch.Tensor, LayerCache | None]:
        need_weights = record is not None
        new_cache = None if cache is None else LayerCache()

        def self_attend(h: torch.Tensor) -> torch.Tensor:
            kv = self.self_attention.project_kv(h)
            if cache is not None:
                kv = kv if cache.self_kv is None else cache.self_kv.extend(kv)
                new_cache.self_kv = kv
            out, weights = self.self_attention(h, kv=kv, is_causal=True, need_weights=need_weights)
            _record(record, "decoder_self", weights)
            return out

        def cross_attend(h: torch.Tensor) -> torch.Tensor:
            if cache is not None and cache.cross_kv is not None:
                kv = cache.cross_kv
            else:
                kv = self.cross_attention.project_kv(memory)
            if cache is not None:
                new_cache.cross_kv = kv
            out, weights = self.cross_attention(
                h, kv=kv, key_mask=src_key_mask, need_weights=need_weights
            )
            _record(record, "cross", weights)
            return out

        x = self.sublayers[0](x, self_attend)
        x = self.sublayers[1](x, cross_attend)
        return self.sublayers[2](x, self.feed_forward), new_cache


class Encoder(nn.Module):
    """A stack of encoder layers (with a final norm when pre-norm)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList([EncoderLayer(config) for _ in range(config.encoder_layers)])
        self.norm = nn.LayerNorm(config.d_model) if config.norm_first else nn.Identity()

    def forward(self, x, src_key_mask, record: AttentionRecord | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, src_key_mask, record)
        return self.norm(x)


class Decoder(nn.Module):
    """A stack of decoder layers (with a final norm when pre-norm)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList([DecoderLayer(config) for _ in range(config.decoder_layers)])
        self.norm = nn.LayerNorm(config.d_model) if config.norm_first else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        src_key_mask: torch.Tensor | None,
        cache: DecoderCache | None = None,
        record: AttentionRecord | None = None,
    ) -> tuple[torch.Tensor, DecoderCache | None]:
        new_cache = None if cache is None else DecoderCache(length=cache.length + x.shape[1])
        for index, layer in enumerate(self.layers):
            layer_cache = None
            if cache is not None:
                layer_cache = cache.layers[index] if cache.layers else LayerCache()
            x, layer_cache = layer(x, memory, src_key_mask, layer_cache, record)
            if new_cache is not None:
                new_cache.layers.append(layer_cache)
        return self.norm(x), new_cache
