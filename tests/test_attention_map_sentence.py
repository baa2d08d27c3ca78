"""Attention maps of one sentence: every row and column labelled with its token, the translation
given is the one mapped, and pieces merged into words (keys summed, queries averaged)."""

import pytest
import torch
from attention_map_helpers import tiny_model, train_small_tokenizer

from transformer.translation.attention_maps import (
    KINDS,
    merge_pieces,
    sentence_map,
    word_spans,
)


@pytest.fixture(scope="module")
def tokenizer():
    return train_small_tokenizer()


# --- one sentence -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_sentence_map_labels_every_row_and_column(kind, tokenizer):
    model = tiny_model(vocab=tokenizer.get_vocab_size())
    result = sentence_map(model, tokenizer, "Ein Mann liest.", kind, beam_size=1, units="pieces")
    source_tokens = tokenizer.encode("Ein Mann liest.", add_special_tokens=False).tokens
    assert result.weights.shape == (len(result.query_tokens), len(result.key_tokens))
    if kind != "decoder":
        assert result.key_tokens == source_tokens
    if kind == "cross":
        assert result.query_tokens[-1] == "</s>"
    else:
        first = "<s>" if kind == "decoder" else source_tokens[0]
        assert result.query_tokens[0] == first


def test_given_translation_is_the_one_mapped(tokenizer):
    model = tiny_model(vocab=tokenizer.get_vocab_size())
    result = sentence_map(
        model, tokenizer, "Ein Mann liest.", translation="A man reads.", units="pieces"
    )
    expected = tokenizer.encode("A man reads.", add_special_tokens=False).tokens
    assert result.query_tokens == [*expected, "</s>"]
    assert result.translation == "A man reads."


def test_empty_sentence_is_a_clear_error(tokenizer):
    model = tiny_model(vocab=tokenizer.get_vocab_size())
    with pytest.raises(ValueError, match="empty"):
        sentence_map(model, tokenizer, "   ")


# --- words from pieces -------------------------------------------------------------------------


def test_word_boundaries_come_from_the_metaspace_marker():
    pieces = ["<s>", "▁Zwei", "▁Hun", "de", "▁im", "▁", "Sch", "nee", ".", "</s>"]
    assert word_spans(pieces) == [(0, 1), (1, 2), (2, 4), (4, 5), (5, 9), (9, 10)]
    # A first piece without the marker still starts a word; specials never join one.
    assert word_spans(["de", "▁x", "</s>", "y"]) == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_merged_rows_sum_to_one_keys_summed_queries_averaged():
    torch.manual_seed(0)
    weights = torch.rand(2, 3, 5, 4).softmax(-1)  # (l, h, query pieces, key pieces)
    query_spans, key_spans = [(0, 2), (2, 3), (3, 5)], [(0, 1), (1, 4)]
    merged = merge_pieces(weights, query_spans, key_spans)
    assert merged.shape == (2, 3, 3, 2)
    torch.testing.assert_close(merged.sum(-1), torch.ones(2, 3, 3))
    # Key word 1 = pieces 1..3 summed; query word 0 = mean of piece rows 0 and 1.
    expected = (weights[..., 0, 1:4].sum(-1) + weights[..., 1, 1:4].sum(-1)) / 2
    torch.testing.assert_close(merged[..., 0, 1], expected)
    torch.testing.assert_close(merged[..., 1, 0], weights[..., 2, 0])


@pytest.mark.parametrize("kind", KINDS)
def test_word_map_labels_words_and_merges_the_piece_map(kind, tokenizer):
    model = tiny_model(vocab=tokenizer.get_vocab_size())
    args = (model, tokenizer, "Zwei Hunde spielen im Schnee.", kind)
    pieces = sentence_map(*args, beam_size=1, units="pieces", grid=True)
    words = sentence_map(*args, beam_size=1, units="words", grid=True)
    assert pieces.units == "pieces" and words.units == "words"
    if kind != "decoder":
        assert words.key_tokens == ["Zwei", "Hunde", "spielen", "im", "Schnee."]
    expected = merge_pieces(
        pieces.weights, word_spans(pieces.query_tokens), word_spans(pieces.key_tokens)
    )
    torch.testing.assert_close(words.weights, expected)
    torch.testing.assert_close(words.weights.sum(-1), torch.ones(words.weights.shape[:-1]))
    assert sum(len(p) for p in words.query_pieces) == len(pieces.query_tokens)
