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
from transformer.translation.training.setup import Process


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
    validated: bool = False  # the checkpoint of ``step`` holds its validation (a resumed run)


def save_run(
    run_dir: Path,
    model: Transformer,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    config: TrainConfig,
    val: dict[str, float] | None,
    process: Process,
) -> None:
    """Checkpoint the run (rank 0 writes), with the number of data-parallel processes that train
    it (a resumed run must have as many: :func:`restore_run`); ``best.json`` moves when ``val``
    BLEU is the best yet (every rank keeps ``state.best_bleu``)."""
    is_best = val is not None and val["bleu"] > state.best_bleu
    if is_best:
        state.best_bleu = val["bleu"]
    if not process.is_main:
        return
    meta = {
        "step": state.step,
        "epoch": state.epoch,
        "next_batch": state.next_batch,
        "train_time": state.train_time,
        "best_bleu": state.best_bleu,
        "world_size": process.world_size,
        "val": val,
        "model_config": dataclasses.asdict(model.config),
        "tokenizer": TOKENIZER_FILE,
        "train_config": config.to_dict(),
    }
    keep_last = max(config.average_last, 1)
    training_state = {"optimizer": optimizer.state_dict()}
    save_checkpoint(run_dir, model, training_state, meta, best=is_best, keep_last=keep_last)


def restore_run(
    run_dir: Path, model: Transformer, optimizer: torch.optim.Optimizer, world_size: int = 1
) -> TrainState:
    """Load the last checkpoint's weights and optimizer state; the position it was saved at.
    Refused when ``world_size`` data-parallel processes are not as many as trained the run:
    each one's place in the epoch indexes its own share of the batches, and a step trains one
    batch on each."""
    checkpoint = load_checkpoint(run_dir, "last")
    for other in ("best", "average"):  # moved or kept by the saves to come: checked now
        if (run_dir / f"{other}.json").exists():
            load_checkpoint(run_dir, other)
    saved = checkpoint.meta.get("world_size", world_size)  # older checkpoints: not recorded
    if saved != world_size:
        if isinstance(saved, int) and saved > 1:
            command = f"torchrun --nproc_per_node={saved} train.py --resume {run_dir}"
        else:
            command = f"python train.py --resume {run_dir}"
        raise CheckpointError(
            f"{run_dir}: its checkpoint of step {checkpoint.meta['step']} was written by "
            f"{saved!r} data-parallel processes, this run has {world_size} (each process's place "
            "in the epoch, and the batches a step trains, depend on it): resume it with as "
            f"many, {command}"
        )
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
        validated=isinstance(meta.get("val"), dict),
    )
