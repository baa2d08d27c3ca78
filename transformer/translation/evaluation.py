"""Evaluating a translation model: batched translation of token ids, sacreBLEU scoring (BLEU
and chrF), and the validation metrics (loss, BLEU, chrF) of a model on a tokenized split."""

from __future__ import annotations

from collections.abc import Sequence

import sacrebleu
import torch
import torch.nn.functional as F

from transformer.decoding import beam_search, greedy_decode
from transformer.model import Transformer
from transformer.translation.batching import batch_indices, make_batch, pad
from transformer.translation.data import Corpus
from transformer.translation.devices import autocast
from transformer.translation.tokenizer import BOS_ID, EOS_ID, PAD_ID, decode

# The GNMT length-penalty alpha of this application's beam search (training's test decode,
# translate, attention maps): chosen on Multi30K val with beam 4 (docs/training.md, "Options for
# learning quality"). The model library's beam search has no penalty unless given one.
DEFAULT_LENGTH_PENALTY = 1.2


@torch.no_grad()
def translate_ids(
    model: Transformer,
    sources: Sequence[Sequence[int]],
    beam_size: int = 4,
    length_penalty: float = DEFAULT_LENGTH_PENALTY,
    max_tokens: int = 6000,
    amp: bool = False,
) -> list[list[int]]:
    """Translate source id lists (no BOS/EOS) in length-sorted batches; output in input order.

    ``beam_size=1`` decodes greedily. A batch holds about ``max_tokens`` source tokens counting
    every beam. Empty sources give empty translations without touching the model.
    """
    device = next(model.parameters()).device
    results: list[list[int]] = [[] for _ in sources]
    nonempty = [i for i, s in enumerate(sources) if len(s)]
    lengths = [len(sources[i]) for i in nonempty]
    budget = max(1, max_tokens // beam_size)
    for group in batch_indices(lengths, budget, seed=0, epoch=0, shuffle=False):
        rows = [nonempty[j] for j in group]
        src = pad([sources[i] for i in rows]).to(device)
        with autocast(device, amp):
            if beam_size == 1:
                out = greedy_decode(model, src, BOS_ID, EOS_ID)
            else:
                out = beam_search(model, src, BOS_ID, EOS_ID, beam_size, length_penalty)
        for i, ids in zip(rows, out, strict=True):
            results[i] = ids
    return results


# sacreBLEU's word splitting for target languages written without spaces between words, where
# its default (13a) would take a whole sentence for one word; the rest get 13a. Only tokenizers
# sacreBLEU runs without more packages: Japanese and Korean want MeCab ("ja-mecab", "ko-mecab").
BLEU_TOKENIZERS = {"zh": "zh"}


def bleu_tokenizer(language: str) -> str:
    """sacreBLEU's ``tokenize`` for references in ``language`` (an ISO code such as ``zh`` or
    a regional one such as ``zh-TW`` or ``zh_Hans``): ``zh`` for Chinese, else ``13a``."""
    base = language.replace("_", "-").split("-")[0].lower()
    return BLEU_TOKENIZERS.get(base, "13a")


def translation_scores(
    hypotheses: Sequence[str], references: Sequence[str], language: str = "en"
) -> dict[str, float]:
    """Corpus sacreBLEU of detokenized text in ``language`` (words split by
    :func:`bleu_tokenizer`: 13a, or zh for Chinese), cased and lowercased, and chrF
    (sacreBLEU's defaults: character 6-grams, β = 2)."""
    hyps, refs = list(hypotheses), [list(references)]
    tokenize = bleu_tokenizer(language)
    return {
        "bleu": sacrebleu.corpus_bleu(hyps, refs, tokenize=tokenize).score,
        "bleu_lc": sacrebleu.corpus_bleu(hyps, refs, lowercase=True, tokenize=tokenize).score,
        "chrf": sacrebleu.corpus_chrf(hyps, refs).score,
    }


def evaluate(
    model: Transformer,
    tokenizer,
    corpus: Corpus,
    beam_size: int,
    length_penalty: float,
    max_tokens: int,
    amp: bool,
) -> dict[str, float]:
    """Validation-style metrics of ``model`` on ``corpus``: NLL loss, sacreBLEU and chrF of decodes."""
    loss = validation_loss(model, corpus, max_tokens, amp)
    ids = translate_ids(model, corpus.src, beam_size, length_penalty, amp=amp)
    scores = translation_scores(decode(tokenizer, ids), corpus.tgt_text, corpus.tgt_lang)
    return {"loss": loss, **scores}


@torch.no_grad()
def validation_loss(model: Transformer, corpus: Corpus, max_tokens: int, amp: bool) -> float:
    """Mean per-token NLL (no smoothing) over the corpus."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for group in batch_indices(corpus.lengths(), max_tokens, seed=0, epoch=0, shuffle=False):
        pairs = make_batch([corpus.src[i] for i in group], [corpus.tgt[i] for i in group])
        batch = pairs.to(device)
        with autocast(device, amp):
            logits = model(batch.src, batch.tgt_in)
        total += F.cross_entropy(
            logits.float().flatten(0, 1),
            batch.tgt_out.flatten(),
            ignore_index=PAD_ID,
            reduction="sum",
        ).item()
        count += batch.num_tgt_tokens
    model.train(was_training)
    return total / max(count, 1)
