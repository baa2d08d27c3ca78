"""Where a run stands, and resuming it: :class:`TrainState`, saved with the weights and the
optimizer state in every checkpoint of a run (:func:`save_run`), and restored from the last one
(:func:`restore_run`). The files themselves: :mod:`transformer.translation.checkpoint`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from transformer.model import Transformer
from transformer.translation.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from transformer.translation.training.config import TOKENIZER_FILE, TrainConfig


@dataclass
class TrainState:
    """Where the run stands; saved in every checkpoint, so that a resumed run goes on from here.

    ``train_time`` counts the training loop, validations included, against the time budget.
    ``schedule_time`` is ``train_time`` as of the last budget check, on rank 0's clock: the
    learning-rate schedule reads it, so that every rank, and a resumed run, use the same value.
    """

    step: int = 0
    epoch: int = 0
    next_batch: int = 0
    train_time: float = 0.0
    schedule_time: float = 0.0
    best_bleu: float = -1.0


def save_run(
    run_dir: Path,
    model: Transformer,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    config: TrainConfig,
    val: dict[str, float] | None,
    is_main: bool,
) -> None:
    """Checkpoint the run (rank 0 writes); ``best.json`` moves when ``val`` BLEU is the best yet
    (every rank keeps ``state.best_bleu``)."""
    is_best = val is not None and val["bleu"] > state.best_bleu
    if is_best:
        state.best_bleu = val["bleu"]
    if not is_main:
        return
    meta = {
        "step": state.step,
        "epoch": state.epoch,
        "next_batch": state.next_batch,
        "train_time": state.train_time,
        "best_bleu": state.best_bleu,
        "val": val,
        "model_config": dataclasses.asdict(model.config),
        "tokenizer": TOKENIZER_FILE,
        "train_config": config.to_dict(),
    }
    keep_last = max(config.average_last, 1)
    training_state = {"optimizer": optimizer.state_dict()}
    save_checkpoint(run_dir, model, training_state, meta, best=is_best, keep_last=keep_last)


def restore_run(run_dir: Path, model: Transformer, optimizer: torch.optim.Optimizer) -> TrainState:
    """Load the last checkpoint's weights and optimizer state; the position it was saved at."""
    checkpoint = load_checkpoint(run_dir, "last")
    model_config = dataclasses.asdict(model.config)
    if checkpoint.model_config != model_config:
        raise CheckpointError(
            f"{checkpoint.directory}: checkpoint model config {checkpoint.model_config} "
            f"does not match this run's {model_config}"
        )
    checkpoint.load_weights(model)
    try:
        optimizer.load_state_dict(checkpoint.load_state()["optimizer"])
    except (KeyError, ValueError) as err:
        raise CheckpointError(
            f"{checkpoint.directory}: optimizer state does not fit ({err})"
        ) from None
    meta = checkpoint.meta
    position = {"epoch": int, "next_batch": int, "train_time": float, "best_bleu": float}
    for name, kind in position.items():
        value = meta.get(name)
        if isinstance(value, bool) or not isinstance(value, int | kind):
            raise CheckpointError(
                f"{run_dir / 'last.json'}: corrupt checkpoint pointer ({name}: {value!r})"
            )
    return TrainState(
        step=meta["step"],
        epoch=meta["epoch"],
        next_batch=meta["next_batch"],
        train_time=meta["train_time"],
        schedule_time=meta["train_time"],
        best_bleu=meta["best_bleu"],
    )
