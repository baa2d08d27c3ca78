"""The training loop: one :class:`TrainConfig` in, a trained, evaluated, checkpointed run out.

``train(config)`` does everything ``train.py`` does, so tests call it in-process, in four steps:

1. :func:`setup_run`: read and validate the corpus (:mod:`transformer.data`), train the shared
   BPE vocabulary on the training split and save it as ``run_dir/tokenizer.json``; build the
   model and optimizer, and restore a checkpoint's position when resuming;
2. :func:`train_loop`: train with token-count batches (:mod:`transformer.batching`),
   label-smoothed cross-entropy, AdamW with linear warm-up and then linear decay to zero at the
   end of the budget (default) or inverse-square-root decay (``schedule``), gradient clipping
   and bf16 autocast where it pays;
3. inside it, every ``eval_every`` steps, at each epoch's end and at the end: validation loss,
   sacreBLEU and chrF, a checkpoint, ``best.json`` moved when BLEU improves; every
   ``checkpoint_every`` steps a checkpoint;
4. :func:`finish_run`: optionally the average of the last ``average_last`` checkpoints, which
   becomes ``best`` when its validation BLEU is higher; the best checkpoint's scores on the test
   split.

Reproducibility and resuming: batch order is a function of ``(seed, epoch)`` and dropout is
re-seeded from ``(seed, step, rank)`` before each step, so the checkpoint's position
(``epoch``, ``batch``, ``step``) plus the weights and optimizer state determine the rest of the
run; ``train(config, resume=True)`` continues it with the same losses an uninterrupted run has.

Data parallel: started by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) each rank trains
on its own shard of every epoch's batches under DistributedDataParallel (NCCL on CUDA, gloo on
CPU); rank 0 alone evaluates, logs and writes checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from transformer.average import save_average
from transformer.batching import Batch, batch_indices, make_batch, shard
from transformer.checkpoint import (
    CheckpointError,
    atomic_write_json,
    load_checkpoint,
    load_recent,
    point,
    save_checkpoint,
)
from transformer.config import ModelConfig
from transformer.data import DEFAULT_DATA_DIR, load_split
from transformer.decoding import DEFAULT_LENGTH_PENALTY
from transformer.evaluation import autocast, translate_ids, translation_scores
from transformer.model import Transformer, mark_dynamic_batch
from transformer.tokenizer import (
    PAD_ID,
    decode,
    encode,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; saved as ``run_dir/config.json``.

    ``model``'s vocabulary sizes are placeholders until the tokenizer is trained: the run uses
    the tokenizer's actual size (at most ``vocab_size``).
    """

    model: ModelConfig = field(
        default_factory=lambda: ModelConfig(6000, 6000, d_ff=512, dropout=0.0)
    )
    # data
    data: str = str(DEFAULT_DATA_DIR)
    src_lang: str = "de"
    tgt_lang: str = "en"
    test_split: str = "test_2016_flickr"
    vocab_size: int = 6000
    max_length: int = 128
    train_limit: int | None = None
    val_limit: int | None = None
    # run
    run_dir: str | None = None
    seed: int = 1
    device: str = "auto"
    amp: str = "auto"
    threads: int | None = None
    progress: bool = True
    compile: bool = False  # torch.compile the model for training steps (see README)
    # optimization
    max_tokens: int = 2048
    lr: float = 2.5e-3
    warmup_steps: int = 150
    beta2: float = 0.98
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    clip_norm: float = 1.0
    schedule: str = "linear-decay"
    epochs: int = 100
    max_steps: int | None = None
    time_budget: float | None = 9.0
    # evaluation and checkpoints
    eval_every: int = 0
    eval_at_epoch_end: bool = True
    checkpoint_every: int = 200
    log_every: int = 10
    beam_size: int = 4
    length_penalty: float = DEFAULT_LENGTH_PENALTY
    val_beam_size: int = 1
    average_last: int = 0
    final_test: bool = True

    def __post_init__(self) -> None:
        positive = (
            "vocab_size",
            "max_length",
            "max_tokens",
            "epochs",
            "log_every",
            "beam_size",
            "val_beam_size",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_limit", "val_limit", "max_steps", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 when given, got {value}")
        for name in (
            "warmup_steps",
            "eval_every",
            "checkpoint_every",
            "average_last",
            "weight_decay",
            "clip_norm",
            "length_penalty",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 < self.beta2 < 1:
            raise ValueError(f"beta2 must be in (0, 1), got {self.beta2}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(f"time_budget must be positive minutes, got {self.time_budget}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.amp not in ("auto", "on", "off"):
            raise ValueError(f"amp must be auto, on or off, got {self.amp!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError as err:
                raise ValueError(f"bad device {self.device!r}: {err}") from None
        if self.max_tokens < self.max_length:
            raise ValueError(
                f"max_tokens ({self.max_tokens}) must be >= max_length ({self.max_length})"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict`; raises ``ValueError`` on unknown or invalid fields."""
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {sorted(unknown)}")
        if isinstance(d.get("model"), dict):
            d["model"] = ModelConfig(**d["model"])
        return cls(**d)


@dataclass
class TrainResult:
    """What a finished :func:`train` returns (on every rank; metrics only on rank 0)."""

    run_dir: Path
    model: Transformer
    step: int
    losses: list[float]
    metrics: dict[str, float]


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


# --------------------------------------------------------------------------------------------
# the run, step by step


def train(config: TrainConfig, resume: bool = False) -> TrainResult:
    """Run training as ``config`` says; with ``resume``, continue ``config.run_dir`` from its last checkpoint."""
    started = time.time()
    run = setup_run(config, resume, started)  # 1. data, vocabulary, model, optimizer, position
    losses = train_loop(run)  # 2., 3. train, validate, checkpoint
    metrics = finish_run(run, started) if run.dist.is_main else {}  # 4. average, test
    if run.dist.enabled:
        dist.barrier()
    loss_values = torch.stack(losses).tolist() if losses else []
    return TrainResult(
        run_dir=run.run_dir,
        model=run.model,
        step=run.state.step,
        losses=loss_values,
        metrics=metrics,
    )


def train_loop(run: Run) -> list[torch.Tensor]:
    """Train until the budget or the epochs run out; validate and checkpoint on the way."""
    config, state = run.config, run.state
    losses: list[torch.Tensor] = []  # left on the device: read back only when logged
    last_eval_step = -1
    throughput = Throughput()
    run.model.train()
    done = out_of_budget(run)
    while not done and state.epoch < config.epochs:
        batches = epoch_batches(run)
        bar = progress_bar(run, len(batches))
        while state.next_batch < len(batches):
            step_start = clock()
            loss, lr, tokens = train_step(run, batches[state.next_batch], len(batches))
            losses.append(loss)
            throughput.add(tokens)
            bar.update(1)
            if state.step % config.log_every == 0:
                log_training(run, bar, loss, lr, throughput)
            end_of_epoch = state.next_batch == len(batches)
            if end_of_epoch:
                state.epoch, state.next_batch = state.epoch + 1, 0
            state.train_time += clock() - step_start
            done = out_of_budget(run)
            periodic = config.eval_every and state.step % config.eval_every == 0
            if done or (end_of_epoch and config.eval_at_epoch_end) or periodic:
                eval_start = clock()
                val = validate(run)
                state.train_time += clock() - eval_start
                # The validation may have spent the budget: stop now rather than train one
                # more step and validate it again. Checked before saving, so that a resumed
                # run's clock (and schedule) counts the validation too. The check is monotone
                # (same step, train_time only grew): a run that was done stays done.
                done = out_of_budget(run)
                save(run, val)
                last_eval_step = state.step
                throughput.restart()
            elif config.checkpoint_every and state.step % config.checkpoint_every == 0:
                save(run, None)
            if done or end_of_epoch:
                break
        bar.close()
    if last_eval_step != state.step and run.dist.is_main:
        save(run, validate(run))  # e.g. resumed at the very end: make sure 'last' exists
    return losses


# --------------------------------------------------------------------------------------------
# one training step: schedule, loss, budget, logging


def train_step(
    run: Run, group: list[int], batches_in_epoch: int
) -> tuple[torch.Tensor, float, int]:
    """One optimizer step on the training pairs ``group``: (loss on the device, lr, tokens)."""
    config, state, dist_info = run.config, run.state, run.dist
    cpu_batch: Batch = make_batch(
        [run.train_corpus.src[i] for i in group], [run.train_corpus.tgt[i] for i in group]
    )
    # Counted on the host copy: counting on the GPU would sync the device every step.
    tokens = int((cpu_batch.src != PAD_ID).sum()) + cpu_batch.num_tgt_tokens
    batch = cpu_batch.to(run.device)
    state.step += 1
    lr = learning_rate(config, state, batches_in_epoch)
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    torch.manual_seed(config.seed * 1_000_003 + state.step * dist_info.world_size + dist_info.rank)
    if config.compile:
        mark_dynamic_batch(batch.src, batch.tgt_in)  # one graph for every batch shape
    with autocast(run.device, run.amp):
        logits = run.train_model(batch.src, batch.tgt_in)
    loss = label_smoothed_loss(logits, batch.tgt_out, config.label_smoothing)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.clip_norm)
    run.optimizer.step()
    state.next_batch += 1
    return loss.detach(), lr, tokens


SCHEDULES = ("inverse-sqrt", "linear-decay")


def learning_rate(config: TrainConfig, state: TrainState, batches_in_epoch: int) -> float:
    """The learning rate of step ``state.step`` (already counted) under ``config.schedule``."""
    if config.schedule == "inverse-sqrt":
        return inverse_sqrt_lr(state.step, config.lr, config.warmup_steps)
    used = budget_used(config, dataclasses.replace(state, step=state.step - 1), batches_in_epoch)
    return linear_decay_lr(state.step, config.lr, config.warmup_steps, used)


def inverse_sqrt_lr(step: int, peak: float, warmup: int) -> float:
    """Learning rate at 1-based ``step``: linear warm-up to ``peak``, then ``peak·√(warmup/step)``."""
    if warmup == 0:
        return peak
    return peak * min(step / warmup, math.sqrt(warmup / step))


def linear_decay_lr(step: int, peak: float, warmup: int, used: float) -> float:
    """Learning rate at 1-based ``step`` when the fraction ``used`` of the budget is spent: linear
    warm-up to ``peak`` over ``warmup`` steps, then linear decay to zero as ``used`` reaches 1
    ("Budgeted Training", Li et al., ICLR 2020)."""
    warm = 1.0 if warmup == 0 else step / warmup
    return peak * max(0.0, min(warm, 1.0 - used))


def budget_used(config: TrainConfig, state: TrainState, batches_in_epoch: int) -> float:
    """The fraction of the run's budget spent before the next step: the largest of the time,
    step and epoch fractions, since whichever budget runs out first ends the run."""
    epochs_done = state.epoch + state.next_batch / max(batches_in_epoch, 1)
    used = epochs_done / config.epochs
    if config.max_steps is not None:
        used = max(used, state.step / config.max_steps)
    if config.time_budget is not None:
        used = max(used, state.schedule_time / (config.time_budget * 60))
    return min(used, 1.0)


def label_smoothed_loss(
    logits: torch.Tensor, target: torch.Tensor, smoothing: float
) -> torch.Tensor:
    """Mean label-smoothed cross-entropy over non-pad targets; logits (b, t, v), target (b, t)."""
    return F.cross_entropy(
        logits.float().flatten(0, 1),
        target.flatten(),
        ignore_index=PAD_ID,
        label_smoothing=smoothing,
    )


def epoch_batches(run: Run) -> list[list[int]]:
    """This rank's batches of the current epoch (a function of seed and epoch)."""
    config = run.config
    lengths = run.train_corpus.lengths()
    batches = batch_indices(lengths, config.max_tokens, config.seed, run.state.epoch)
    return shard(batches, run.dist.rank, run.dist.world_size)


def progress_bar(run: Run, total: int) -> tqdm:
    return tqdm(
        total=total,
        initial=run.state.next_batch,
        desc=f"epoch {run.state.epoch}",
        disable=not (run.dist.is_main and run.config.progress),
        dynamic_ncols=True,
        leave=False,
    )


class Throughput:
    """Training tokens per second over the steps since the last log (validations left out)."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.tokens, self.start = 0, time.time()

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def per_second(self) -> float:
        return self.tokens / max(time.time() - self.start, 1e-9)


def log_training(
    run: Run, bar: tqdm, loss: torch.Tensor, lr: float, throughput: Throughput
) -> None:
    loss_value = loss.item()
    tok_s = throughput.per_second() * run.dist.world_size
    bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tok_s:.0f}", lr=f"{lr:.2e}")
    state = run.state
    run.log.log(
        split="train",
        step=state.step,
        epoch=state.epoch,
        loss=loss_value,
        lr=lr,
        tokens_per_s=tok_s,
    )
    throughput.restart()


def clock() -> float:
    """Seconds on the clock the time budget is kept with (tests put a fake one in its place)."""
    return time.monotonic()


def out_of_budget(run: Run) -> bool:
    """Whether the step or time budget is spent; rank 0's clock decides, so all ranks stop together
    (and share its ``train_time`` as the schedule's clock)."""
    config, state = run.config, run.state
    over = (config.max_steps is not None and state.step >= config.max_steps) or (
        config.time_budget is not None and state.train_time >= config.time_budget * 60
    )
    if run.dist.enabled:
        flags = torch.tensor(
            [float(over), state.train_time], dtype=torch.float64, device=run.device
        )
        dist.broadcast(flags, src=0)
        over, state.train_time = bool(flags[0].item()), flags[1].item()
    state.schedule_time = state.train_time
    return over


# --------------------------------------------------------------------------------------------
# validation and checkpoints


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


# --------------------------------------------------------------------------------------------
# setup


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
    tokenizer = setup_tokenizer(config, run_dir, train_ds, dist_info, resume)
    train_corpus = _encode_split(tokenizer, train_ds, config, config.train_limit, filter_long=True)
    val_corpus = _encode_split(tokenizer, val_ds, config, config.val_limit, filter_long=False)
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


def setup_devices(config: TrainConfig) -> tuple[torch.device, Distributed]:
    """This rank's device and place in the process group; sets the CPU thread count."""
    device = pick_device(config.device)
    dist_info = init_distributed(device.type)
    if device.type == "cuda" and (config.device == "auto" or device.index is None):
        # "cuda" names no device, and torch.cuda.set_device refuses it: this rank's GPU
        # (LOCAL_RANK under torchrun), or the current one in a single process.
        index = dist_info.local_rank if dist_info.enabled else torch.cuda.current_device()
        device = torch.device("cuda", index)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    return device, dist_info


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> Distributed:
    """Join the process group torchrun describes in the environment (if ``WORLD_SIZE`` > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Distributed(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    )


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: this rank's CUDA device if there is one, else the CPU."""
    if name == "auto":
        return (
            torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        )
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available")
    return device


def use_amp(setting: str, device: torch.device) -> bool:
    """bf16 autocast: ``auto`` turns it on for CUDA and for CPUs with native bf16 matrix units."""
    if setting != "auto":
        return setting == "on"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and _cpu_has_bf16()


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


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


def read_corpus(config: TrainConfig, is_main: bool) -> tuple[Any, Any, Any]:
    """The train, val and (rank 0, if it will be scored) test splits, read before training so
    that a bad split fails before the run starts."""
    train_ds = load_split(config.data, "train", config.src_lang, config.tgt_lang)
    val_ds = load_split(config.data, "val", config.src_lang, config.tgt_lang)
    test_ds = None
    if is_main and config.final_test:
        test_ds = load_split(config.data, config.test_split, config.src_lang, config.tgt_lang)
    return train_ds, val_ds, test_ds


@dataclass
class Corpus:
    """Token ids of one split; targets wrapped in BOS/EOS."""

    src: list[list[int]]
    tgt: list[list[int]]
    tgt_text: list[str]

    def lengths(self) -> list[int]:
        return [max(len(s), len(t) - 1) for s, t in zip(self.src, self.tgt, strict=True)]


def _encode_split(
    tokenizer, ds, config: TrainConfig, limit: int | None, filter_long: bool
) -> Corpus:
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    src_text, tgt_text = list(ds[config.src_lang]), list(ds[config.tgt_lang])
    src, tgt = encode(tokenizer, src_text), encode(tokenizer, tgt_text, add_bos_eos=True)
    if filter_long:
        keep = [
            i
            for i in range(len(src))
            if len(src[i]) <= config.max_length and len(tgt[i]) - 1 <= config.max_length
        ]
        src, tgt, tgt_text = (
            [src[i] for i in keep],
            [tgt[i] for i in keep],
            [tgt_text[i] for i in keep],
        )
    return Corpus(src, tgt, tgt_text)


def setup_tokenizer(config: TrainConfig, run_dir: Path, train_ds, dist_info, resume: bool):
    """Rank 0 of a new run trains the BPE vocabulary and saves it; everyone else loads it."""
    path = run_dir / TOKENIZER_FILE
    tokenizer = None
    if dist_info.is_main and not resume:
        texts = train_ds
        if config.train_limit is not None:
            texts = train_ds.select(range(min(config.train_limit, len(train_ds))))
        sentences = list(texts[config.src_lang]) + list(texts[config.tgt_lang])
        tokenizer = train_tokenizer(sentences, config.vocab_size)
        save_tokenizer(tokenizer, path)
    if dist_info.enabled:
        dist.barrier()
    return tokenizer if tokenizer is not None else load_tokenizer(path)


def make_optimizer(model: Transformer, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on biases and norm gains)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
        betas=(0.9, config.beta2),
        eps=1e-9,
    )


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


# --------------------------------------------------------------------------------------------
# the end: averaged weights, the test split


def finish_run(run: Run, started: float) -> dict[str, float]:
    """Rank 0: average the last checkpoints (if asked), score the best on the test split, write
    ``results.json``; the metrics."""
    config = run.config
    metrics: dict[str, float] = {"train_time": run.state.train_time, "steps": run.state.step}
    if config.average_last > 1:
        metrics.update(average_last_checkpoints(run))
    if config.final_test:
        metrics.update(score_best_on_test(run))
    metrics["wall_seconds"] = time.time() - started
    atomic_write_json(run.run_dir / "results.json", metrics)
    run.log.plot()
    return metrics


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


def score_best_on_test(run: Run) -> dict[str, float]:
    """The best checkpoint's validation scores (as saved) and its scores on the test split."""
    config = run.config
    test_start = time.time()
    best = load_checkpoint(run.run_dir, "best")
    best.load_weights(run.model)
    test_corpus = _encode_split(run.tokenizer, run.test_ds, config, None, filter_long=False)
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


# --------------------------------------------------------------------------------------------
# metrics log


class MetricsLog:
    """Append-only JSON-lines log of every metric, plus a PNG of the curves (rank 0 only)."""

    def __init__(
        self,
        run_dir: Path,
        enabled: bool,
        resume_step: int | None = None,
        schedule: str = "inverse-sqrt",
    ) -> None:
        self.path = run_dir / METRICS_FILE
        self.schedule = schedule
        self.enabled = enabled
        self.records: list[dict[str, Any]] = []
        if enabled and resume_step is not None and self.path.is_file():
            # Keep what the checkpoint covers; the killed run's later lines are redone.
            old = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            self.records = [r for r in old if r.get("step", 0) <= resume_step]
            atomic_write_json_lines(self.path, self.records)
        elif enabled:
            self.path.write_text("")

    def log(self, **record: Any) -> None:
        if not self.enabled:
            return
        record["time"] = time.time()
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def plot(self) -> None:
        if not self.enabled:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [r for r in self.records if r["split"] == "train"]
        val = [r for r in self.records if r["split"] == "val"]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        axes[0].plot(
            [r["step"] for r in train],
            [r["loss"] for r in train],
            label="train (label-smoothed CE)",
        )
        axes[0].plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="val (NLL)")
        axes[0].set(xlabel="step", ylabel="loss", title="loss")
        axes[0].legend()
        axes[1].plot([r["step"] for r in val], [r["bleu"] for r in val], "o-", label="BLEU cased")
        axes[1].plot(
            [r["step"] for r in val], [r["bleu_lc"] for r in val], "o-", label="BLEU lowercased"
        )
        chrf = [r for r in val if "chrf" in r]  # absent from runs logged before chrF was
        axes[1].plot([r["step"] for r in chrf], [r["chrf"] for r in chrf], "s--", label="chrF")
        beam = val[-1]["beam_size"] if val else 1
        decoding = "greedy" if beam == 1 else f"beam {beam}"
        axes[1].set(xlabel="step", ylabel="score", title=f"validation ({decoding})")
        axes[1].legend()
        axes[2].plot([r["step"] for r in train], [r["lr"] for r in train])
        axes[2].set(xlabel="step", ylabel="learning rate", title=f"{self.schedule} schedule")
        fig.tight_layout()
        tmp = self.path.with_name(".curves.png.tmp")
        fig.savefig(tmp, format="png", dpi=80)
        plt.close(fig)
        os.replace(tmp, self.path.with_name("curves.png"))


def atomic_write_json_lines(path: Path, records: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)
