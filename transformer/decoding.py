"""Greedy and beam-search decoding with a key/value cache.

Both return, per source row, the generated token ids without the leading bos and the final eos.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .layers import DecoderCache
from .model import Transformer


def _length_caps(src: torch.Tensor, pad_id: int, max_len: int | None) -> torch.Tensor:
    """How many tokens each source row may generate, (b,): ``max_len``, or by default 1.5x the
    row's own length (its tokens that are not padding) + 10, so that a sentence decodes the
    same whatever else is in its batch."""
    if max_len is not None:
        return torch.full((src.shape[0],), max_len, dtype=torch.long, device=src.device)
    lengths = (src != pad_id).sum(dim=1)
    return (lengths * 3) // 2 + 10


def _check_decoding(model: Transformer, bos_id: int, eos_id: int, max_len: int | None) -> None:
    vocab_size = model.config.tgt_vocab_size
    for name, token_id in (("bos_id", bos_id), ("eos_id", eos_id)):
        if (
            isinstance(token_id, bool)
            or not isinstance(token_id, int)
            or not 0 <= token_id < vocab_size
        ):
            raise ValueError(
                f"{name} must be a target token id in [0, {vocab_size}), got {token_id!r}"
            )
    if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int)):
        raise TypeError(f"max_len must be an int or None, got {type(max_len).__name__}")
    if max_len is not None and max_len < 0:
        raise ValueError(f"max_len must be >= 0, got {max_len}")


def _never_generate(logits: torch.Tensor, model: Transformer, bos_id: int) -> torch.Tensor:
    """Padding and bos are never produced."""
    logits[:, model.config.pad_id] = float("-inf")
    logits[:, bos_id] = float("-inf")
    return logits


@contextmanager
def _eval_mode(model: Transformer) -> Iterator[None]:
    """Run in eval mode (no dropout), then restore the model's mode, also when decoding raises."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _strip(rows: torch.Tensor, eos_id: int) -> list[list[int]]:
    out = []
    for row in rows.tolist():
        out.append(row[: row.index(eos_id)] if eos_id in row else row)
    return out


@torch.no_grad()
def greedy_decode(
    model: Transformer,
    src: torch.Tensor,
    bos_id: int,
    eos_id: int,
    max_len: int | None = None,
) -> list[list[int]]:
    """Pick the most likely next token until eos or ``max_len`` tokens; ``src`` is (b, s).
    Without ``max_len``, each row may generate 1.5x its own length (not counting padding) + 10
    tokens."""
    _check_decoding(model, bos_id, eos_id, max_len)
    with _eval_mode(model):
        return _greedy(model, src, bos_id, eos_id, max_len)


def _greedy(
    model: Transformer, src: torch.Tensor, bos_id: int, eos_id: int, max_len: int | None
) -> list[list[int]]:
    caps = _length_caps(src, model.config.pad_id, max_len)
    memory, src_key_mask = model.encode(src)
    batch = src.shape[0]
    tokens = torch.full((batch, 1), bos_id, dtype=torch.long, device=src.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=src.device)
    cache = DecoderCache()
    generated = []
    for step in range(int(caps.max()) if batch else 0):
        logits, cache = model.decode(tokens, memory, src_key_mask, cache)
        next_token = _never_generate(logits[:, -1].float(), model, bos_id).argmax(dim=-1)
        # A row past its cap ends here: the eos is stripped, its tokens are the cap's.
        next_token = next_token.masked_fill(finished | (step >= caps), eos_id)
        generated.append(next_token)
        finished |= next_token == eos_id
        if finished.all():
            break
        tokens = next_token[:, None]
    return (
        _strip(torch.stack(generated, dim=1), eos_id) if generated else [[] for _ in range(batch)]
    )


def length_penalty(length: torch.Tensor, alpha: float) -> torch.Tensor:
    """GNMT's length penalty ((5 + length) / 6) ** alpha; alpha = 0 turns it off."""
    return ((5.0 + length) / 6.0) ** alpha


@torch.no_grad()
def beam_search(
    model: Transformer,
    src: torch.Tensor,
    bos_id: int,
    eos_id: int,
    beam_size: int = 4,
    length_penalty_alpha: float = 0.0,
    max_len: int | None = None,
) -> list[list[int]]:
    """Keep the ``beam_size`` best hypotheses per source row, ranked by
    log-probability / length penalty; finished hypotheses stay in the beam with their score
    frozen. With ``beam_size=1`` this is greedy decoding.

    ``length_penalty_alpha``: GNMT's alpha (:func:`length_penalty`); 0, the default, ranks by
    log-probability alone. The best value depends on the corpus: tune it on validation data
    (the translation application uses its own default)."""
    if isinstance(beam_size, bool) or not isinstance(beam_size, int):
        raise TypeError(f"beam_size must be an int, got {beam_size!r}")
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if not math.isfinite(length_penalty_alpha):
        raise ValueError(
            f"length_penalty_alpha must be a finite number, got {length_penalty_alpha}"
        )
    _check_decoding(model, bos_id, eos_id, max_len)
    with _eval_mode(model):
        return _beam_search(model, src, bos_id, eos_id, beam_size, length_penalty_alpha, max_len)


def _beam_search(
    model: Transformer,
    src: torch.Tensor,
    bos_id: int,
    eos_id: int,
    beam_size: int,
    length_penalty_alpha: float,
    max_len: int | None,
) -> list[list[int]]:
    caps = _length_caps(src, model.config.pad_id, max_len).repeat_interleave(beam_size)
    batch, device = src.shape[0], src.device
    memory, src_key_mask = model.encode(src)
    memory = memory.repeat_interleave(beam_size, dim=0)
    src_key_mask = src_key_mask.repeat_interleave(beam_size, dim=0)

    rows = batch * beam_size
    scores = torch.zeros(batch, beam_size, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: keep only the first alive
    scores = scores.view(rows)
    lengths = torch.zeros(rows, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    history = torch.full((rows, 0), eos_id, dtype=torch.long, device=device)
    tokens = torch.full((rows, 1), bos_id, dtype=torch.long, device=device)
    cache = DecoderCache()
    for step in range(int(caps.max()) if batch else 0):
        logits, cache = model.decode(tokens, memory, src_key_mask, cache)
        log_probs = _never_generate(logits[:, -1].float(), model, bos_id).log_softmax(dim=-1)
        vocab = log_probs.shape[-1]
        # A finished hypothesis, or one of a row past its cap, may only repeat eos, at no cost
        # and no added length: its score and length stay as they were at the cap.
        done = finished | (step >= caps)
        log_probs[done] = float("-inf")
        log_probs[done, eos_id] = 0.0
        new_lengths = lengths[:, None] + (~done).float()[:, None]
        candidates = scores[:, None] + log_probs  # (rows, vocab)
        ranked = candidates / length_penalty(new_lengths, length_penalty_alpha)
        best, flat_index = ranked.view(batch, beam_size * vocab).topk(beam_size, dim=-1)
        parent = flat_index // vocab + torch.arange(batch, device=device)[:, None] * beam_size
        parent = parent.view(rows)
        next_token = (flat_index % vocab).view(rows)
        scores = candidates.view(rows * vocab)[parent * vocab + next_token]
        lengths = new_lengths.view(rows)[parent]
        finished = finished[parent] | (next_token == eos_id)
        history = torch.cat([history[parent], next_token[:, None]], dim=1)
        cache = cache.reorder(parent)
        tokens = next_token[:, None]
        if finished.all():
            break
    final = (scores / length_penalty(lengths, length_penalty_alpha)).view(batch, beam_size)
    winner = final.argmax(dim=-1) + torch.arange(batch, device=device) * beam_size
    return _strip(history[winner], eos_id)
