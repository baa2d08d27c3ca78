"""Attention maps: what a trained model attends to while it translates one sentence.

einops legend: b batch, h heads, i query positions, j key positions, d head dim, l layers.

The sentence is translated (beam search, or greedy), then the model is run once more,
teacher-forced on ``<s> + translation``, and the weights of that pass are drawn. Three kinds:

* ``cross``: decoder queries over the source. Row t is labelled with the token the decoder
  *produced* at step t (the translation, then ``</s>``); columns are the source tokens.
* ``encoder``: source over source.
* ``decoder``: causal self-attention; both axes are the decoder's input ``<s> + translation``,
  so the map is lower triangular.

The model reads BPE pieces (``▁Frau``, ``Schnee``, ``.``); a map is drawn over words by default,
a word being a piece marked ``▁`` and the unmarked pieces after it (``Schnee.``). A source
(key) word's weight is the *sum* over its pieces, the attention it received as a whole; a target
(query) word's row is the *mean* of its pieces' rows; so every row still sums to one. Special
tokens (``<s>``, ``</s>``) are words of their own. ``units="pieces"`` (``--pieces``) draws the
pieces themselves.

Two ways to get the weights, which agree to float32 tolerance:

* ``naive``: the model's own weights, from its einops path (:meth:`Transformer.attention_maps`).
* ``flash``: the Triton kernels never form the (i, j) matrix, but they save the row-wise
  log-sum-exp ``lse``; the weights of one layer (and one head, if asked) are rebuilt from it as
  ``exp(score(q, k) − lse)``, a block of query rows at a time. q, k and v of that layer are
  taken by a forward hook that lives only for one forward pass (nothing is stored on the
  modules). Dot-product scores (``scaled_dot``, ``dot``, ``general``) run on the flash kernel,
  the ``additive`` score on the fused additive kernel.

Command line: ``python -m transformer.translation.attention_maps --help``.
"""

from transformer.translation.attention_maps.cli import build_parser, main
from transformer.translation.attention_maps.drawing import draw_map, figure_size, plot_map
from transformer.translation.attention_maps.inputs import (
    KINDS,
    AttentionInputs,
    capture_attention_inputs,
    check_layer_head,
)
from transformer.translation.attention_maps.lse import flash_layer_weights, weights_from_lse
from transformer.translation.attention_maps.sentence import (
    SentenceMap,
    merge_into_words,
    sentence_map,
    write_csv,
    write_json,
)
from transformer.translation.attention_maps.weights import METHODS, attention_map, layer_weights
from transformer.translation.attention_maps.words import (
    UNITS,
    merge_pieces,
    word_spans,
)

__all__ = [
    "KINDS",
    "METHODS",
    "UNITS",
    "AttentionInputs",
    "SentenceMap",
    "attention_map",
    "build_parser",
    "capture_attention_inputs",
    "check_layer_head",
    "draw_map",
    "figure_size",
    "flash_layer_weights",
    "layer_weights",
    "main",
    "merge_into_words",
    "merge_pieces",
    "plot_map",
    "sentence_map",
    "weights_from_lse",
    "word_spans",
    "write_csv",
    "write_json",
]
