"""Batched translation of token ids and sacreBLEU scoring (BLEU and chrF)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import sacrebleu
import torch

from transformer.decoding import DEFAULT_LENGTH_PENALTY, beam_search, greedy_decode
from transformer.model import Transformer
from transformer.translation.batching import batch_indices, pad
from transformer.translation.tokenizer import BOS_ID, EOS_ID


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` if ``enabled``, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


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


def translation_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus sacreBLEU (13a tokenization) of detokenized text, cased and lowercased, and chrF
    (sacreBLEU's defaults: character 6-grams, β = 2)."""
    hyps, refs = list(hypotheses), [list(references)]
    return {
        "bleu": sacrebleu.corpus_bleu(hyps, refs).score,
        "bleu_lc": sacrebleu.corpus_bleu(hyps, refs, lowercase=True).score,
        "chrf": sacrebleu.corpus_chrf(hyps, refs).score,
    }
