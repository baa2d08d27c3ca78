"""Checkpoints of a run: saving its weights, optimizer state and position, and restoring them
to resume (the file format is :mod:`transformer.translation.checkpoint`'s)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from transformer.config import ModelConfig
from transformer.model import Transformer
from transformer.translation.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from transformer.translation.training.config import TOKENIZER_FILE
from transformer.translation.training.state import TrainState

if TYPE_CHECKING:
    from transformer.translation.training.run import Run


def save(run: Run, val: dict[str, float] | None) -> None:
    """Checkpoint the run (rank 0 writes); ``best.json`` moves when ``val`` BLEU is the best yet."""
    state = run.state
    is_best = val is not None and val["bleu"] > state.best_bleu
    if is_best:
        state.best_bleu = val["bleu"]
    if not run.dist.is_main:
        return
    meta = {
        "step": state.step,
        "epoch": state.epoch,
        "next_batch": state.next_batch,
        "train_time": state.train_time,
        "best_bleu": state.best_bleu,
        "val": val,
        "model_config": dataclasses.asdict(run.model_config),
        "tokenizer": TOKENIZER_FILE,
        "train_config": run.config.to_dict(),
    }
    keep_last = max(run.config.average_last, 1)
    optimizer = {"optimizer": run.optimizer.state_dict()}
    save_checkpoint(run.run_dir, run.model, optimizer, meta, best=is_best, keep_last=keep_last)


def restore(
    run_dir: Path, model: Transformer, optimizer: torch.optim.Optimizer, model_config: ModelConfig
) -> TrainState:
    """Load the last checkpoint's weights and optimizer state; the position it was saved at."""
    checkpoint = load_checkpoint(run_dir, "last")
    if checkpoint.model_config != dataclasses.asdict(model_config):
        raise CheckpointError(
            f"{checkpoint.directory}: checkpoint model config {checkpoint.model_config} "
            f"does not match this run's {dataclasses.asdict(model_config)}"
        )
    checkpoint.load_weights(model)
    try:
        optimizer.load_state_dict(checkpoint.load_state()["optimizer"])
    except (KeyError, ValueError) as err:
        raise CheckpointError(
            f"{checkpoint.directory}: optimizer state does not fit ({err})"
        ) from None
    meta = checkpoint.meta
    return TrainState(
        step=meta["step"],
        epoch=meta["epoch"],
        next_batch=meta["next_batch"],
        train_time=meta["train_time"],
        schedule_time=meta["train_time"],
        best_bleu=meta["best_bleu"],
    )
