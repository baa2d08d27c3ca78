"""From BPE pieces to words: a word is a piece marked ``▁`` and the unmarked pieces after it;
its weights merge its pieces' (keys summed, queries averaged). A whole map is merged by
:func:`~transformer.translation.attention_maps.sentence.merge_into_words`."""

from __future__ import annotations

import torch

from transformer.translation.tokenizer import SPECIAL_TOKENS, WORD_MARK

UNITS = ("words", "pieces")


def word_spans(pieces: list[str]) -> list[tuple[int, int]]:
    """``(start, end)`` piece indices of each word: a word starts at a piece marked ``▁`` (or the
    first piece) and takes the unmarked pieces after it; special tokens stand alone."""

    spans: list[list[int]] = []
    for i, piece in enumerate(pieces):
        alone = piece in SPECIAL_TOKENS or (i > 0 and pieces[i - 1] in SPECIAL_TOKENS)
        if not spans or alone or piece.startswith(WORD_MARK):
            spans.append([i, i + 1])
        else:
            spans[-1][1] = i + 1
    return [(start, end) for start, end in spans]


def merge_pieces(
    weights: torch.Tensor, query_spans: list[tuple[int, int]], key_spans: list[tuple[int, int]]
) -> torch.Tensor:
    """(..., i, j) over pieces → (..., query words, key words): a key word's weight is the sum
    over its pieces, a query word's row the mean of its pieces' rows; rows still sum to one."""
    keys = torch.stack([weights[..., a:b].sum(-1) for a, b in key_spans], dim=-1)
    return torch.stack([keys[..., a:b, :].mean(-2) for a, b in query_spans], dim=-2)
