"""Scoring a model during and after training: validation loss, BLEU and chrF on the validation
split, and the best checkpoint's scores on the test split."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from tqdm import tqdm

from transformer.model import Transformer
from transformer.translation.batching import batch_indices, make_batch
from transformer.translation.checkpoint import load_checkpoint
from transformer.translation.evaluation import autocast, translate_ids, translation_scores
from transformer.translation.tokenizer import PAD_ID, decode
from transformer.translation.training.config import TrainConfig
from transformer.translation.training.corpus import Corpus, encode_split

if TYPE_CHECKING:
    from transformer.translation.training.run import Run


def validate(run: Run) -> dict[str, float] | None:
    """Validation loss, BLEU and chrF on rank 0 (None elsewhere), logged and plotted."""
    if not run.dist.is_main:
        return None
    config, state = run.config, run.state
    val = evaluate(run.model, run.tokenizer, run.val_corpus, config, config.val_beam_size, run.amp)
    run.log.log(
        split="val", step=state.step, epoch=state.epoch, beam_size=config.val_beam_size, **val
    )
    run.log.plot()
    if config.progress:
        tqdm.write(
            f"step {state.step} epoch {state.epoch}: val loss {val['loss']:.3f} "
            f"BLEU {val['bleu']:.2f} (lc {val['bleu_lc']:.2f}) chrF {val['chrf']:.2f}"
        )
    return val


def evaluate(
    model: Transformer, tokenizer, corpus: Corpus, config: TrainConfig, beam_size: int, amp: bool
) -> dict[str, float]:
    """Validation-style metrics of ``model`` on ``corpus``: NLL loss, sacreBLEU and chrF of decodes."""
    loss = validation_loss(model, corpus, config.max_tokens, amp)
    ids = translate_ids(model, corpus.src, beam_size, config.length_penalty, amp=amp)
    return {"loss": loss, **translation_scores(decode(tokenizer, ids), corpus.tgt_text)}


@torch.no_grad()
def validation_loss(model: Transformer, corpus: Corpus, max_tokens: int, amp: bool) -> float:
    """Mean per-token NLL (no smoothing) over the corpus."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for group in batch_indices(corpus.lengths(), max_tokens, seed=0, epoch=0, shuffle=False):
        batch = make_batch([corpus.src[i] for i in group], [corpus.tgt[i] for i in group]).to(
            device
        )
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


def score_best_on_test(run: Run) -> dict[str, float]:
    """The best checkpoint's validation scores (as saved) and its scores on the test split."""
    config = run.config
    test_start = time.time()
    best = load_checkpoint(run.run_dir, "best")
    best.load_weights(run.model)
    test_corpus = encode_split(run.tokenizer, run.test_ds, config, None, filter_long=False)
    test = evaluate(run.model, run.tokenizer, test_corpus, config, config.beam_size, run.amp)
    run.log.log(
        split="test", step=run.state.step, best_step=best.meta["step"], beam_size=config.beam_size,
        **test,
    )  # fmt: skip
    return {
        **{f"val_{k}": v for k, v in best.meta["val"].items()},
        **{f"test_{k}": v for k, v in test.items()},
        "best_step": best.meta["step"],
        "test_seconds": time.time() - test_start,
    }
