"""Setting a run up: the run directory, corpus and vocabulary, model and optimizer, and where
training starts (a checkpoint's position when resuming), gathered in one :class:`Run`."""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from transformer.config import ModelConfig
from transformer.model import Transformer
from transformer.translation.checkpoint import CheckpointError, atomic_write_json
from transformer.translation.training.checkpointing import restore
from transformer.translation.training.config import CONFIG_FILE, TrainConfig
from transformer.translation.training.corpus import (
    Corpus,
    encode_split,
    read_corpus,
    setup_tokenizer,
)
from transformer.translation.training.devices import Distributed, setup_devices, use_amp
from transformer.translation.training.metrics import MetricsLog
from transformer.translation.training.optimizer import make_optimizer
from transformer.translation.training.state import TrainState


@dataclass
class Run:
    """Everything :func:`setup_run` builds and the loop, validation and checkpoints use."""

    config: TrainConfig
    dist: Distributed
    device: torch.device
    amp: bool
    run_dir: Path
    tokenizer: Any
    train_corpus: Corpus
    val_corpus: Corpus
    test_ds: Any
    model_config: ModelConfig
    model: Transformer
    train_model: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    log: MetricsLog
    state: TrainState


def setup_run(config: TrainConfig, resume: bool, started: float) -> Run:
    """Device, run directory, corpus and vocabulary, model and optimizer, and the position to
    start from (a checkpoint's, when resuming)."""
    device, dist_info = setup_devices(config)
    run_dir = agree_on_run_dir(config, dist_info)
    _check_run_dir(run_dir, resume)
    train_ds, val_ds, test_ds = read_corpus(config, dist_info.is_main)
    if dist_info.is_main:
        if not resume:  # made only now: bad data leaves no run directory
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run_dir / CONFIG_FILE, config.to_dict())
        print(f"run directory: {run_dir}", file=sys.stderr, flush=True)
        if config.sizing is not None and not resume:
            print(f"size: {config.sizing.preset} ({config.sizing.reason})", file=sys.stderr)
    tokenizer = setup_tokenizer(config, run_dir, train_ds, dist_info, resume)
    train_corpus = encode_split(tokenizer, train_ds, config, config.train_limit, filter_long=True)
    val_corpus = encode_split(tokenizer, val_ds, config, config.val_limit, filter_long=False)
    vocab = tokenizer.get_vocab_size()
    model_config = dataclasses.replace(config.model, src_vocab_size=vocab, tgt_vocab_size=vocab)
    torch.manual_seed(config.seed)
    model = Transformer(model_config).to(device)
    optimizer = make_optimizer(model, config)
    state = restore(run_dir, model, optimizer, model_config) if resume else TrainState()
    train_model: torch.nn.Module = model
    if dist_info.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=device_ids)
    if config.compile:
        # Training steps only (validation and decoding stay eager); run.model stays the plain
        # module, so checkpoints keep their parameter names. DDP splits the graph at its
        # gradient buckets, so fullgraph is asked for only without it.
        train_model = torch.compile(train_model, fullgraph=not dist_info.enabled)
    resume_step = state.step if resume else None
    log = MetricsLog(run_dir, dist_info.is_main, resume_step, schedule=config.schedule)
    amp = use_amp(config.amp, device)
    if dist_info.is_main and not resume:
        log.log(
            split="setup",
            step=0,
            params=sum(p.numel() for p in model.parameters()),
            vocab=vocab,
            train_pairs=len(train_corpus.src),
            amp=amp,
            device=str(device),
            world_size=dist_info.world_size,
            setup_seconds=time.time() - started,
        )
    return Run(
        config, dist_info, device, amp, run_dir, tokenizer, train_corpus, val_corpus, test_ds,
        model_config, model, train_model, optimizer, log, state,
    )  # fmt: skip


def agree_on_run_dir(config: TrainConfig, dist_info: Distributed) -> Path:
    run_dir = resolve_run_dir(config)
    if dist_info.enabled and config.run_dir is None:
        # Every rank must agree on the timestamped directory rank 0 picked.
        names = [str(run_dir)]
        dist.broadcast_object_list(names, src=0)
        run_dir = Path(names[0])
    return run_dir


def resolve_run_dir(config: TrainConfig) -> Path:
    if config.run_dir is not None:
        return Path(config.run_dir)
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse a run directory that cannot be resumed, or that a new run would overwrite."""
    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
            raise CheckpointError(f"{run_dir}: not a run directory ({CONFIG_FILE} missing)")
        return
    # Checked on every rank (no rank can have written last.json yet), so all of them stop.
    if (run_dir / "last.json").exists():
        raise FileExistsError(f"{run_dir} already holds a run; resume it or choose another run_dir")
