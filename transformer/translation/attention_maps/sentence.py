"""One sentence, end to end: translate it, compute its map over pieces, merge it into words
(the pieces' weights by :mod:`.words`), and write the map as JSON or CSV."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from transformer.decoding import beam_search, greedy_decode
from transformer.model import Transformer
from transformer.translation.attention_maps.inputs import (
    check_kind,
    normalize_layer_head,
    num_layers,
)
from transformer.translation.attention_maps.weights import attention_map
from transformer.translation.attention_maps.words import UNITS, merge_pieces, word_spans
from transformer.translation.evaluation import DEFAULT_LENGTH_PENALTY
from transformer.translation.tokenizer import BOS_ID, EOS_ID, WORD_MARK, decode, encode


@dataclass
class SentenceMap:
    """A map ready to draw or export.

    ``weights`` is (i, j), or (l, h, i, j) for a grid; ``layers``/``heads`` name what each
    index of a grid is, or what was averaged (None = mean over all). ``units`` says whether the
    rows and columns are BPE ``pieces`` or ``words``; ``query_pieces``/``key_pieces`` list the
    pieces behind each row and column label.
    """

    kind: str
    method: str
    source: str
    translation: str
    query_tokens: list[str]
    key_tokens: list[str]
    weights: torch.Tensor
    layer: int | None
    head: int | None
    grid: bool
    layers: list[int]
    heads: list[int]
    units: str = "pieces"
    query_pieces: list[list[str]] | None = None
    key_pieces: list[list[str]] | None = None

    def to_json(self) -> dict:
        return {
            "units": self.units,
            "kind": self.kind,
            "method": self.method,
            "source": self.source,
            "translation": self.translation,
            "layer": "mean" if self.layer is None else self.layer,
            "head": "mean" if self.head is None else self.head,
            "grid": self.grid,
            "query_tokens": self.query_tokens,
            "key_tokens": self.key_tokens,
            "query_pieces": self.query_pieces or [[t] for t in self.query_tokens],
            "key_pieces": self.key_pieces or [[t] for t in self.key_tokens],
            "layers": self.layers,
            "heads": self.heads,
            "weights": self.weights.tolist(),
        }

    def csv_rows(self) -> list[dict]:
        """Long format: one row per (layer, head, query, key)."""
        rows = []
        maps = self.weights if self.grid else self.weights[None, None]
        layer_names = self.layers if self.grid else ["mean" if self.layer is None else self.layer]
        head_names = self.heads if self.grid else ["mean" if self.head is None else self.head]
        for li, layer in enumerate(layer_names):
            for hi, head in enumerate(head_names):
                for i, query in enumerate(self.query_tokens):
                    for j, key in enumerate(self.key_tokens):
                        rows.append(
                            {
                                "units": self.units,
                                "layer": layer,
                                "head": head,
                                "query_index": i,
                                "query_token": query,
                                "key_index": j,
                                "key_token": key,
                                "weight": float(maps[li, hi, i, j]),
                            }
                        )
        return rows


def merge_into_words(pieces: SentenceMap) -> SentenceMap:
    """The same map over words: weights merged by :func:`merge_pieces`, words as labels."""
    query_spans, key_spans = word_spans(pieces.query_tokens), word_spans(pieces.key_tokens)

    def grouped(tokens: list[str], spans: list[tuple[int, int]]) -> list[list[str]]:
        return [tokens[a:b] for a, b in spans]

    def labels(groups: list[list[str]]) -> list[str]:
        return ["".join(g).replace(WORD_MARK, "") or WORD_MARK for g in groups]

    query_pieces = grouped(pieces.query_tokens, query_spans)
    key_pieces = grouped(pieces.key_tokens, key_spans)
    return replace(
        pieces,
        units="words",
        weights=merge_pieces(pieces.weights, query_spans, key_spans),
        query_tokens=labels(query_pieces),
        key_tokens=labels(key_pieces),
        query_pieces=query_pieces,
        key_pieces=key_pieces,
    )


def sentence_map(
    model: Transformer,
    tokenizer,
    sentence: str,
    kind: str = "cross",
    layer: int | None = None,
    head: int | None = None,
    grid: bool = False,
    method: str = "naive",
    beam_size: int = 4,
    length_penalty: float = DEFAULT_LENGTH_PENALTY,
    translation: str | None = None,
    units: str = "words",
) -> SentenceMap:
    """Translate ``sentence`` (or take the given ``translation``) and compute its map, over
    ``words`` (merged pieces, see the module docstring) or BPE ``pieces``."""

    check_kind(kind)
    if units not in UNITS:
        raise ValueError(f"units must be one of {UNITS}, got {units!r}")
    layer, head = normalize_layer_head(model, kind, layer, head)
    if not sentence.strip():
        raise ValueError("the sentence is empty")
    (src_ids,) = encode(tokenizer, [sentence])
    if not src_ids:
        raise ValueError(f"the sentence {sentence!r} has no tokens")
    device = next(model.parameters()).device
    src = torch.tensor([src_ids], device=device)
    if translation is None:
        if beam_size < 1:
            raise ValueError(f"beam size must be >= 1, got {beam_size}")
        if beam_size == 1:
            (out_ids,) = greedy_decode(model, src, BOS_ID, EOS_ID)
        else:
            (out_ids,) = beam_search(model, src, BOS_ID, EOS_ID, beam_size, length_penalty)
    else:
        (out_ids,) = encode(tokenizer, [translation])
    tgt_in = torch.tensor([[BOS_ID, *out_ids]], device=device)
    weights = attention_map(model, src, tgt_in, kind, layer, head, grid, method)

    def tokens(ids: list[int]) -> list[str]:
        return [tokenizer.id_to_token(i) for i in ids]

    source_tokens, produced = tokens(src_ids), tokens([*out_ids, EOS_ID])
    decoder_in = tokens([BOS_ID, *out_ids])
    query_tokens, key_tokens = {
        "cross": (produced, source_tokens),
        "encoder": (source_tokens, source_tokens),
        "decoder": (decoder_in, decoder_in),
    }[kind]
    layers = list(range(num_layers(model, kind))) if layer is None else [layer]
    pieces = SentenceMap(
        kind=kind,
        method=method,
        source=sentence,
        translation=decode(tokenizer, [out_ids])[0],
        query_tokens=query_tokens,
        key_tokens=key_tokens,
        weights=weights.cpu(),
        layer=layer,
        head=head,
        grid=grid,
        layers=layers,
        heads=list(range(model.config.heads)) if head is None else [head],
    )
    return merge_into_words(pieces) if units == "words" else pieces


def write_json(sentence_map: SentenceMap, path: str | os.PathLike) -> None:
    Path(path).write_text(json.dumps(sentence_map.to_json(), ensure_ascii=False, indent=1))


def write_csv(sentence_map: SentenceMap, path: str | os.PathLike) -> None:
    rows = sentence_map.csv_rows()
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["weight"])
        writer.writeheader()
        writer.writerows(rows)
