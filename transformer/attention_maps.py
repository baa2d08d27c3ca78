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

Command line: ``python -m transformer.attention_maps --help``.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import os
import sys
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from einops import einsum, reduce

from .attention import MultiHeadAttention
from .cli import HelpFormatter, device_problem, prepare_output
from .decoding import DEFAULT_LENGTH_PENALTY, beam_search, greedy_decode
from .model import Transformer

KINDS = ("cross", "encoder", "decoder")
UNITS = ("words", "pieces")
WORD_MARK = "▁"  # the tokenizer's Metaspace marker of a word's first piece
METHODS = ("naive", "flash")
MAP_NAMES = {"cross": "cross", "encoder": "encoder_self", "decoder": "decoder_self"}


# --- which attention module, which inputs ----------------------------------------------------


def num_layers(model: Transformer, kind: str) -> int:
    """How many layers have an attention of this ``kind``."""
    check_kind(kind)
    stack = model.encoder if kind == "encoder" else model.decoder
    return len(stack.layers)


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; choose one of {KINDS}")


def check_layer_head(model: Transformer, kind: str, layer: int | None, head: int | None) -> None:
    """Raise ``ValueError`` naming the valid range unless ``layer``/``head`` exist (or are None).

    Negative indices count from the end, as in Python.
    """
    layers, heads = num_layers(model, kind), model.config.heads
    if layers == 0:
        raise ValueError(f"this model has no {kind} attention layers")
    if layer is not None and not -layers <= layer < layers:
        raise ValueError(
            f"layer {layer} is out of range: the model has {layers} {kind} attention layers, "
            f"numbered 0 to {layers - 1} (or -{layers} to -1 from the end)"
        )
    if head is not None and not -heads <= head < heads:
        raise ValueError(
            f"head {head} is out of range: the model has {heads} heads, numbered 0 to "
            f"{heads - 1} (or -{heads} to -1 from the end)"
        )


def normalize_layer_head(
    model: Transformer, kind: str, layer: int | None, head: int | None
) -> tuple[int | None, int | None]:
    """Check ``layer``/``head`` and turn negative indices into the non-negative ones they mean."""
    check_layer_head(model, kind, layer, head)
    layer = None if layer is None else layer % num_layers(model, kind)
    head = None if head is None else head % model.config.heads
    return layer, head


def attention_module(model: Transformer, kind: str, layer: int) -> MultiHeadAttention:
    """The :class:`MultiHeadAttention` of ``kind`` in ``layer``."""
    check_layer_head(model, kind, layer, None)
    if kind == "encoder":
        return model.encoder.layers[layer].self_attention
    if kind == "decoder":
        return model.decoder.layers[layer].self_attention
    return model.decoder.layers[layer].cross_attention


@dataclass
class AttentionInputs:
    """What one attention module scored: q, k, v, each (b, h, n, d).

    For a dot-product score q is after the score's query map and ``scale`` multiplies q·k; for
    the additive score q is what the score takes (its features are computed from it) and
    ``scale`` is None. ``score`` is the module's score function. ``attn_mask`` is the key mask
    (b, 1, 1, j), True = real key, or None; ``is_causal`` is bottom-right aligned. ``out`` is
    the module's output (b, i, d_model).
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    attn_mask: torch.Tensor | None
    is_causal: bool
    scale: float | None
    out: torch.Tensor
    score: torch.nn.Module


@torch.no_grad()
def capture_attention_inputs(
    model: Transformer, src: torch.Tensor, tgt_in: torch.Tensor, kind: str, layer: int
) -> AttentionInputs:
    """Run the model once on (src, tgt_in) and take the inputs of one layer's attention.

    A forward hook on that one module, removed before returning, sees the call's arguments
    and output; nothing is stored on the module.
    """
    attention = attention_module(model, kind, layer)
    signature = inspect.signature(attention.forward)
    captured: dict[str, object] = {}

    def hook(module, args, kwargs, output):
        captured["call"] = signature.bind(*args, **kwargs).arguments
        captured["out"] = output[0]

    handle = attention.register_forward_hook(hook, with_kwargs=True)
    was_training = model.training
    model.eval()
    try:
        memory, src_key_mask = model.encode(src)
        if kind != "encoder":
            model.decode(tgt_in, memory, src_key_mask)
    finally:
        handle.remove()
        model.train(was_training)
    call = captured["call"]
    x = call["x"]
    kv = call.get("kv")
    kv = attention.project_kv(x) if kv is None else kv
    key_mask = call.get("key_mask")
    score = attention.score
    q = attention.split_heads(attention.to_q(x))
    dot_product = hasattr(score, "queries")
    return AttentionInputs(
        q=score.queries(q) if dot_product else q,
        k=kv.k,
        v=kv.v,
        attn_mask=None if key_mask is None else key_mask[:, None, None, :],
        is_causal=bool(call.get("is_causal", False)),
        scale=score.scale if dot_product else None,
        out=captured["out"],
        score=score,
    )


# --- the weights: naive, or rebuilt from the flash kernel's log-sum-exp ---------------------


def weights_from_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
    scale: float | None,
    block_rows: int = 64,
    score=None,
) -> torch.Tensor:
    """Attention probabilities (b, h, i, j) rebuilt from the row-wise log-sum-exp (b, h, i).

    ``exp(q kᵀ · scale − lse)`` on visible keys, 0 elsewhere, ``block_rows`` query rows at a
    time (so the only temporaries are a block of rows). With ``score`` (a module with
    ``logits(q, k)``, e.g. the additive score) its logits stand in for ``q kᵀ · scale``. A row
    with no visible key (lse = -inf) gets zeros.
    """
    len_q, len_k = q.shape[-2], k.shape[-2]
    cols = torch.arange(len_k, device=q.device)
    blocks = []
    for start in range(0, len_q, block_rows):
        rows = slice(start, min(start + block_rows, len_q))
        if score is None:
            logits = einsum(q[:, :, rows].float(), k.float(), "b h i d, b h j d -> b h i j") * scale
        else:
            logits = score.logits(q[:, :, rows], k).float()
        visible = torch.ones_like(logits, dtype=torch.bool)
        if attn_mask is not None:
            visible = visible & attn_mask
        if is_causal:  # bottom-right aligned, as everywhere in this package
            positions = torch.arange(rows.start, rows.stop, device=q.device)
            visible = visible & (cols[None, :] <= positions[:, None] + (len_k - len_q))
        # where(), not a product: exp(logits + inf) of a fully hidden row must not become NaN.
        blocks.append(torch.where(visible, torch.exp(logits - lse[:, :, rows, None]), 0.0))
    if not blocks:
        return q.new_zeros(*q.shape[:2], 0, len_k, dtype=torch.float32)
    return torch.cat(blocks, dim=2)


def flash_layer_weights(
    model: Transformer,
    src: torch.Tensor,
    tgt_in: torch.Tensor,
    kind: str,
    layer: int,
    head: int | None = None,
    block_rows: int = 64,
) -> torch.Tensor:
    """One layer's weights (b, h, i, j), from the flash (or fused additive) kernel's lse.

    With ``head`` the kernel runs on that head alone and h is 1. On the CPU the kernel needs
    ``TRITON_INTERPRET=1`` set before triton is first imported.
    """
    from kernels import flash_attention

    inputs = capture_attention_inputs(model, src, tgt_in, kind, layer)
    heads = slice(None) if head is None else [head % model.config.heads]
    q, k, v = inputs.q, inputs.k, inputs.v
    if inputs.scale is None:  # the additive score: every head's features, then pick the head
        with torch.no_grad():
            _, lse = inputs.score.fused(q, k, v, inputs.attn_mask, inputs.is_causal, True)
            weights = weights_from_lse(
                q, k, lse, inputs.attn_mask, inputs.is_causal, None, block_rows, inputs.score
            )
        return weights[:, heads]
    q, k, v = q[:, heads], k[:, heads], v[:, heads]
    with torch.no_grad():
        _, lse = flash_attention(
            q.contiguous(),
            k.contiguous(),
            v.contiguous(),
            attn_mask=inputs.attn_mask,
            is_causal=inputs.is_causal,
            scale=inputs.scale,
            return_lse=True,
        )
    return weights_from_lse(q, k, lse, inputs.attn_mask, inputs.is_causal, inputs.scale, block_rows)


@torch.no_grad()
def layer_weights(
    model: Transformer,
    src: torch.Tensor,
    tgt_in: torch.Tensor,
    kind: str,
    layer: int,
    head: int | None = None,
    method: str = "naive",
) -> torch.Tensor:
    """The weights (b, h, i, j) one layer used on this teacher-forced pair (h = 1 with ``head``).

    ``method`` ``naive`` takes them from the model's einops path, ``flash`` rebuilds them from
    the Triton kernel's log-sum-exp; the two agree to float32 tolerance.
    """
    check_layer_head(model, kind, layer, head)
    if method == "flash":
        return flash_layer_weights(model, src, tgt_in, kind, layer, head)
    if method != "naive":
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    was_training = model.training
    model.eval()
    try:
        maps = model.attention_maps(src, tgt_in)
    finally:
        model.train(was_training)
    weights = getattr(maps, MAP_NAMES[kind])[layer].float()
    return weights if head is None else weights[:, [head]]


@torch.no_grad()
def attention_map(
    model: Transformer,
    src: torch.Tensor,
    tgt_in: torch.Tensor,
    kind: str = "cross",
    layer: int | None = None,
    head: int | None = None,
    grid: bool = False,
    method: str = "naive",
) -> torch.Tensor:
    """The map of the first sentence in the batch, reduced as asked.

    ``layer`` None means every layer, ``head`` None every head. Without ``grid`` the result
    is (i, j): the mean over the chosen layers and heads. With ``grid`` it is (l, h, i, j),
    one map per layer and head, and ``head`` must be None. Layers are computed one at a time.
    """
    check_kind(kind)
    layer, head = normalize_layer_head(model, kind, layer, head)
    if grid and head is not None:
        raise ValueError("a grid shows every head; do not pick one head as well")
    layers = range(num_layers(model, kind)) if layer is None else [layer]
    per_layer = [layer_weights(model, src, tgt_in, kind, n, head, method)[0] for n in layers]
    stacked = torch.stack(per_layer)  # (l, h, i, j)
    return stacked if grid else reduce(stacked, "l h i j -> i j", "mean")


# --- one sentence, end to end ----------------------------------------------------------------


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
    from .tokenizer import BOS_ID, EOS_ID, decode, encode

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


def word_spans(pieces: list[str]) -> list[tuple[int, int]]:
    """``(start, end)`` piece indices of each word: a word starts at a piece marked ``▁`` (or the
    first piece) and takes the unmarked pieces after it; special tokens stand alone."""
    from .tokenizer import SPECIAL_TOKENS

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


# --- drawing ---------------------------------------------------------------------------------

CELL_INCHES = 0.32
LABEL_INCHES = 1.6  # room for tick labels and titles
COLORBAR_INCHES = 1.0


def figure_size(
    rows: int, cols: int, grid_rows: int = 1, grid_cols: int = 1
) -> tuple[float, float]:
    """(width, height) in inches of a figure of grid_rows x grid_cols maps of rows x cols cells.

    The PNG is exactly ``round(width * dpi)`` by ``round(height * dpi)`` pixels.
    """
    width = grid_cols * (max(cols, 6) * CELL_INCHES + LABEL_INCHES) + COLORBAR_INCHES
    height = grid_rows * (max(rows, 6) * CELL_INCHES + LABEL_INCHES) + 0.6
    return width, height


def _axis_names(kind: str, units: str = "pieces") -> tuple[str, str]:
    unit = "word" if units == "words" else "token"
    return {
        "cross": (f"generated {unit}", f"source {unit}"),
        "encoder": (f"source {unit} (query)", f"source {unit} (key)"),
        "decoder": (f"decoder input {unit} (query)", f"decoder input {unit} (key)"),
    }[kind]


def _what(layer: int | None, head: int | None) -> str:
    layer_text = "mean over layers" if layer is None else f"layer {layer}"
    head_text = "mean over heads" if head is None else f"head {head}"
    return f"{layer_text}, {head_text}"


def _short(labels: list[str], limit: int = 20) -> list[str]:
    """Tick labels cut to ``limit`` characters: a word merged from many pieces (an untrained
    model's output can be one long unmarked run) must not squeeze the map to nothing."""
    return [label if len(label) <= limit else label[: limit - 1] + "…" for label in labels]


def draw_map(sentence_map: SentenceMap, dpi: int = 100):
    """A matplotlib Figure of the heat map(s): queries down the side, keys along the top, one
    colour bar. Built without pyplot, so it touches no global backend (a notebook can show it).
    """
    from matplotlib.figure import Figure

    m = sentence_map
    weights = m.weights if m.grid else m.weights[None, None]
    grid_rows, grid_cols = weights.shape[:2]
    rows, cols = weights.shape[-2:]
    fig = Figure(
        figsize=figure_size(rows, cols, grid_rows, grid_cols), dpi=dpi, layout="constrained"
    )
    axes = fig.subplots(grid_rows, grid_cols, squeeze=False)
    vmax = max(float(weights.max()), 1e-9) if weights.numel() else 1.0
    query_name, key_name = _axis_names(m.kind, m.units)
    image = None
    for r in range(grid_rows):
        for c in range(grid_cols):
            ax = axes[r, c]
            image = ax.imshow(
                weights[r, c].numpy(), cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto"
            )
            ax.set_xticks(range(cols), _short(m.key_tokens), rotation=90, fontsize=8)
            ax.set_yticks(range(rows), _short(m.query_tokens), fontsize=8)
            ax.xaxis.tick_top()
            if m.grid:
                ax.set_title(f"layer {m.layers[r]}, head {m.heads[c]}", fontsize=9)
            if c == 0:
                ax.set_ylabel(query_name)
            if r == grid_rows - 1:
                ax.set_xlabel(key_name)
    what = "every head" if m.grid else _what(m.layer, m.head)
    width_chars = int(fig.get_figwidth() / 0.09)  # about one 10-point character per 0.09 inch
    units = "words" if m.units == "words" else "BPE pieces"
    lines = [f"{m.kind} attention over {units}, {what} ({m.method} weights)", m.source]
    lines.append(f"→ {m.translation}")
    fig.suptitle("\n".join(textwrap.fill(line, width_chars) for line in lines), fontsize=10)
    fig.colorbar(image, ax=axes, label="attention weight", shrink=0.8)
    return fig


def plot_map(sentence_map: SentenceMap, path: str | os.PathLike, dpi: int = 100) -> None:
    """Write the heat map(s) as a PNG of exactly :func:`figure_size` inches times ``dpi``."""
    draw_map(sentence_map, dpi).savefig(path, dpi=dpi)


def write_json(sentence_map: SentenceMap, path: str | os.PathLike) -> None:
    Path(path).write_text(json.dumps(sentence_map.to_json(), ensure_ascii=False, indent=1))


def write_csv(sentence_map: SentenceMap, path: str | os.PathLike) -> None:
    rows = sentence_map.csv_rows()
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["weight"])
        writer.writeheader()
        writer.writerows(rows)


# --- command line ----------------------------------------------------------------------------


def load_model(run_dir: str | os.PathLike, which: str = "best", device: str = "cpu"):
    """The model (in eval mode) and tokenizer of a run directory written by ``train.py``.

    ``which``: the ``best`` checkpoint (``last`` while the run has no best yet) or ``last``;
    loaded exactly as ``python -m transformer.translate`` loads it.
    """
    from .translate import Translator

    translator = Translator(run_dir, which, device)
    return translator.model, translator.tokenizer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m transformer.attention_maps",
        formatter_class=HelpFormatter,
        description=(
            "Translate one sentence with a trained checkpoint and draw the attention weights the "
            "model used, teacher-forced on its own translation, as a heat map PNG (and, if "
            "asked, JSON/CSV). Layers and heads are numbered from 0; negative numbers count "
            "from the end."
        ),
    )
    parser.add_argument(
        "--checkpoint", required=True, metavar="RUN_DIR", help="run directory written by train.py"
    )
    parser.add_argument("--sentence", required=True, help="the source (German) sentence")
    parser.add_argument(
        "--output", default="attention.png", help="PNG to write (default: %(default)s)"
    )
    parser.add_argument(
        "--kind",
        choices=KINDS,
        default="cross",
        help="cross: generated tokens (rows) over source tokens (columns); encoder: source "
        "self-attention; decoder: causal self-attention over <s> + translation "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--layer", type=int, default=None, help="one layer (default: the mean over all layers)"
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--head", type=int, default=None, help="one head (default: the mean over all heads)"
    )
    group.add_argument(
        "--grid",
        action="store_true",
        help="one map per head instead of a mean: a row of heads for --layer, or a grid of "
        "layers x heads without it",
    )
    parser.add_argument(
        "--pieces",
        action="store_true",
        help="draw the BPE pieces the model reads (▁Frau, Schnee, .) instead of words (Frau, "
        "Schnee.), whose weights merge their pieces' (source pieces summed, target pieces "
        "averaged)",
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        default="naive",
        help="naive: the model's own einops weights; flash: rebuilt from the Triton kernel's "
        "log-sum-exp (on the CPU under TRITON_INTERPRET=1, set for you) (default: %(default)s)",
    )
    parser.add_argument(
        "--translation",
        default=None,
        help="draw the map for this translation instead of the model's own (e.g. a reference)",
    )
    parser.add_argument(
        "--beam-size",
        type=int,
        default=4,
        help="beam width; 1 decodes greedily (default: %(default)s)",
    )
    parser.add_argument(
        "--length-penalty",
        type=float,
        default=DEFAULT_LENGTH_PENALTY,
        help="GNMT length penalty alpha of the beam search (default: %(default)s)",
    )
    parser.add_argument(
        "--which",
        choices=("best", "last", "average"),
        default="best",
        help="which checkpoint of the run; best falls back to last while the run has no best; "
        "average: the averaged weights (python -m transformer.average) (default: %(default)s)",
    )
    parser.add_argument("--json", default=None, help="also write the weights as JSON here")
    parser.add_argument(
        "--csv",
        default=None,
        help="also write the weights as CSV here (columns: units (words or pieces), layer, "
        "head, query_index, query_token, key_index, key_token, weight)",
    )
    parser.add_argument(
        "--dpi", type=int, default=100, help="PNG resolution (default: %(default)s)"
    )
    parser.add_argument(
        "--device", default="cpu", help="torch device to run the model on (default: %(default)s)"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.sentence.strip():
        parser.error("--sentence is empty")
    if args.translation is not None and not args.translation.strip():
        parser.error("--translation is empty")
    if args.beam_size < 1:
        parser.error(f"--beam-size must be >= 1, got {args.beam_size}")
    if args.dpi < 1:
        parser.error(f"--dpi must be >= 1, got {args.dpi}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    problem = device_problem(args.device)
    if problem:
        parser.error(problem)
    if not torch.cuda.is_available():
        # The flash method, or a model trained with backend "triton", runs the kernel; on the
        # CPU only under the interpreter, which triton reads when it is first imported.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from .checkpoint import CheckpointError

    try:
        model, tokenizer = load_model(args.checkpoint, args.which, args.device)
    except (CheckpointError, ValueError, OSError) as err:
        parser.error(f"cannot load --checkpoint {args.checkpoint}: {err}")
    try:
        check_layer_head(model, args.kind, args.layer, args.head)
        result = sentence_map(
            model,
            tokenizer,
            args.sentence,
            kind=args.kind,
            layer=args.layer,
            head=args.head,
            grid=args.grid,
            method=args.method,
            beam_size=args.beam_size,
            length_penalty=args.length_penalty,
            translation=args.translation,
            units="pieces" if args.pieces else "words",
        )
    except ValueError as err:
        parser.error(str(err))
    for option in ("output", "json", "csv"):
        path = getattr(args, option)
        problem = path and prepare_output(path, f"--{option}")  # makes its directory
        if problem:
            parser.error(problem)
    plot_map(result, args.output, dpi=args.dpi)
    written = [args.output]
    if args.json:
        write_json(result, args.json)
        written.append(args.json)
    if args.csv:
        write_csv(result, args.csv)
        written.append(args.csv)
    print(f"{result.source}\n→ {result.translation}", file=sys.stderr)
    print("wrote " + ", ".join(written), file=sys.stderr)


if __name__ == "__main__":
    main()
