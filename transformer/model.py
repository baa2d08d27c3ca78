"""The encoder-decoder Transformer: embeddings, sinusoidal positions, encoder, decoder, output.

einops legend: b batch, s source positions, t target positions, d model width, v vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .config import ModelConfig
from .layers import AttentionRecord, Decoder, DecoderCache, Encoder


def sinusoidal_positions(
    length: int, d_model: int, offset: int = 0, device: torch.device | None = None
) -> torch.Tensor:
    """Sine/cosine position encodings (length, d_model) for positions offset..offset+length-1."""
    positions = torch.arange(offset, offset + length, device=device, dtype=torch.float32)
    frequencies = torch.exp(
        torch.arange(0, d_model, 2, device=device, dtype=torch.float32)
        * (-math.log(10000.0) / d_model)
    )
    angles = positions[:, None] * frequencies[None, :]
    encoding = torch.zeros(length, d_model, device=device)
    encoding[:, 0::2] = torch.sin(angles)
    encoding[:, 1::2] = torch.cos(angles[:, : d_model // 2])
    return encoding


class TokenEmbedding(nn.Module):
    """Token embeddings scaled by √d_model, plus sinusoidal positions, then dropout."""

    def __init__(self, vocab_size: int, config: ModelConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, config.d_model, padding_idx=config.pad_id)
        nn.init.normal_(self.embedding.weight, std=config.d_model**-0.5)
        with torch.no_grad():
            self.embedding.weight[config.pad_id].zero_()
        self.scale = math.sqrt(config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, tokens: torch.Tensor, offset: int = 0) -> torch.Tensor:
        x = self.embedding(tokens) * self.scale
        positions = sinusoidal_positions(tokens.shape[1], x.shape[-1], offset, tokens.device)
        return self.dropout(x + positions.to(x.dtype))


@dataclass
class AttentionMaps:
    """Attention weights of every layer, each (b, h, query_len, key_len)."""

    encoder_self: list[torch.Tensor]
    decoder_self: list[torch.Tensor]
    cross: list[torch.Tensor]


class Transformer(nn.Module):
    """Encoder-decoder Transformer for sequence-to-sequence tasks such as translation.

    Token tensors are (b, s) / (b, t) LongTensors, right-padded with ``config.pad_id``; the
    source padding is masked out of every attention over the source.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.src_embed = TokenEmbedding(config.src_vocab_size, config)
        self.tgt_embed = (
            self.src_embed
            if config.tie_embeddings
            else TokenEmbedding(config.tgt_vocab_size, config)
        )
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.generator = nn.Linear(config.d_model, config.tgt_vocab_size, bias=False)
        if config.tie_embeddings:
            self.generator.weight = self.tgt_embed.embedding.weight

    def _check_tokens(self, tokens: torch.Tensor, name: str, vocab_size: int) -> None:
        if tokens.dim() != 2:
            raise ValueError(f"{name} must be (batch, length) token ids, got {tuple(tokens.shape)}")
        if tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{name} must hold int64 or int32 token ids, got {tokens.dtype}")
        message = f"{name} holds ids outside the vocabulary [0, {vocab_size})"
        if torch.compiler.is_compiling():
            # Branching on values would break the graph; an assertion node compiles instead and
            # raises a RuntimeError with the message when the compiled code runs (on a GPU,
            # asynchronously: no device sync).
            in_range = ((tokens >= 0) & (tokens < vocab_size)).all()
            torch._assert_async(in_range, message)
        # Eager, the range check reads values back, which on a GPU would stall every step on a
        # device sync; there an out-of-range id trips the embedding's device-side assertion.
        elif tokens.device.type == "cpu" and tokens.numel():
            if tokens.min() < 0 or tokens.max() >= vocab_size:
                raise ValueError(message)

    def encode(
        self, src: torch.Tensor, record: AttentionRecord | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``src`` (b, s) into a memory (b, s, d) and its key mask (b, s), True = real."""
        self._check_tokens(src, "src", self.config.src_vocab_size)
        src_key_mask = src != self.config.pad_id
        memory = self.encoder(self.src_embed(src), src_key_mask, record)
        return memory, src_key_mask

    def decode(
        self,
        tgt_in: torch.Tensor,
        memory: torch.Tensor,
        src_key_mask: torch.Tensor,
        cache: DecoderCache | None = None,
        record: AttentionRecord | None = None,
    ) -> tuple[torch.Tensor, DecoderCache | None]:
        """Next-token logits (b, t, v) for ``tgt_in`` (b, t) given the encoder memory.

        With a ``cache`` (start from ``DecoderCache()``), ``tgt_in`` holds only the new tokens;
        the returned cache holds every position so far.
        """
        self._check_tokens(tgt_in, "tgt_in", self.config.tgt_vocab_size)
        offset = 0 if cache is None else cache.length
        x = self.tgt_embed(tgt_in, offset=offset)
        x, cache = self.decoder(x, memory, src_key_mask, cache, record)
        return self.generator(x), cache

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (b, t, v) of the target given the source."""
        memory, src_key_mask = self.encode(src)
        logits, _ = self.decode(tgt_in, memory, src_key_mask)
        return logits

    def attention_maps(self, src: torch.Tensor, tgt_in: torch.Tensor) -> AttentionMaps:
        """The attention weights each layer uses on this teacher-forced pair, per head."""
        record: AttentionRecord = {}
        memory, src_key_mask = self.encode(src, record)
        self.decode(tgt_in, memory, src_key_mask, record=record)
        return AttentionMaps(
            record.get("encoder_self", []), record.get("decoder_self", []), record.get("cross", [])
        )


def mark_dynamic_batch(*tokens: torch.Tensor) -> None:
    """Tell ``torch.compile`` that the batch size and length of these (b, n) token tensors vary.

    Batches come in many lengths; without this, a compiled model would compile one graph per
    new shape (then, after the second, fall back to dynamic shapes on its own). Marked before
    the first call, one graph serves every batch. Sizes 0 and 1 may still get their own graph.
    """
    for t in tokens:
        torch._dynamo.maybe_mark_dynamic(t, 0)
        torch._dynamo.maybe_mark_dynamic(t, 1)
