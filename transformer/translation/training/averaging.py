"""Averaging a run's last checkpoints at its end, and keeping the average when it validates
better than the best checkpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tqdm import tqdm

from transformer.translation.average import save_average
from transformer.translation.checkpoint import load_recent, point
from transformer.translation.training.scoring import evaluate

if TYPE_CHECKING:
    from transformer.translation.training.run import Run


def average_last_checkpoints(run: Run) -> dict[str, float]:
    """Average the weights of the last ``average_last`` checkpoints, validate the average, and
    point ``best.json`` at it when it beats the best checkpoint's BLEU."""
    config, state = run.config, run.state
    checkpoints = load_recent(run.run_dir, config.average_last)
    if len(checkpoints) < 2:
        return {}
    averaged = save_average(run.run_dir, checkpoints, extra_meta={"train_config": config.to_dict()})
    averaged.load_weights(run.model)
    val = evaluate(run.model, run.tokenizer, run.val_corpus, config, config.val_beam_size, run.amp)
    steps = [c.meta["step"] for c in checkpoints]
    is_best = val["bleu"] > state.best_bleu
    run.log.log(split="val_average", step=state.step, averaged_steps=steps, best=is_best, **val)
    if is_best:
        state.best_bleu = val["bleu"]
        point(run.run_dir, "best", averaged, val=val, best_bleu=val["bleu"])
    if config.progress:
        verdict = "the new best" if is_best else "not better than the best checkpoint"
        tqdm.write(
            f"average of steps {steps}: val BLEU {val['bleu']:.2f} chrF {val['chrf']:.2f}, {verdict}"
        )
    return {**{f"average_val_{k}": v for k, v in val.items()}, "average_is_best": float(is_best)}
