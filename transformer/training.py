"""The training loop: one :class:`TrainConfig` in, a trained, evaluated, checkpointed run out.

``train(config)`` does everything ``train.py`` does, so tests call it in-process:

1. read and validate the corpus (:mod:`transformer.data`), train the shared BPE vocabulary on the
   training split and save it as ``run_dir/tokenizer.json``;
2. train with token-count batches (:mod:`transformer.batching`), label-smoothed cross-entropy,
   AdamW under an inverse-square-root schedule with linear warm-up, gradient clipping and bf16
   autocast where it pays;
3. every ``eval_every`` steps, at each epoch's end and at the end: validation loss and sacreBLEU, a
   checkpoint, ``best.json`` moved when BLEU improves; every ``checkpoint_every`` steps a
   checkpoint;
4. at the end: the best checkpoint's BLEU on the test split.

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

from transformer.batching import Batch, batch_indices, make_batch, shard
from transformer.checkpoint import (
    CheckpointError,
    atomic_write_json,
    load_checkpoint,
    save_checkpoint,
)
from transformer.config import ModelConfig
from transformer.data import DEFAULT_DATA_DIR, load_split
from transformer.evaluation import autocast, bleu_scores, translate_ids
from transformer.model import Transformer
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
        default_factory=lambda: ModelConfig(8000, 8000, d_ff=512, dropout=0.0)
    )
    # data
    data: str = str(DEFAULT_DATA_DIR)
    src_lang: str = "de"
    tgt_lang: str = "en"
    test_split: str = "test_2016_flickr"
    vocab_size: int = 8000
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
    # optimization
    max_tokens: int = 2048
    lr: float = 1.5e-3
    warmup_steps: int = 150
    beta2: float = 0.98
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    clip_norm: float = 1.0
    epochs: int = 100
    max_steps: int | None = None
    time_budget: float | None = 8.0
    # evaluation and checkpoints
    eval_every: int = 0
    eval_at_epoch_end: bool = True
    checkpoint_every: int = 200
    log_every: int = 10
    beam_size: int = 4
    length_penalty: float = 0.6
    val_beam_size: int = 1
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


def inverse_sqrt_lr(step: int, peak: float, warmup: int) -> float:
    """Learning rate at 1-based ``step``: linear warm-up to ``peak``, then ``peak·√(warmup/step)``."""
    if warmup == 0:
        return peak
    return peak * min(step / warmup, math.sqrt(warmup / step))


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


# --------------------------------------------------------------------------------------------
# setup


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


def resolve_run_dir(config: TrainConfig) -> Path:
    if config.run_dir is not None:
        return Path(config.run_dir)
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


# --------------------------------------------------------------------------------------------
# logging


class MetricsLog:
    """Append-only JSON-lines log of every metric, plus a PNG of the curves (rank 0 only)."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None = None) -> None:
        self.path = run_dir / METRICS_FILE
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
        axes[1].plot([r["step"] for r in val], [r["bleu"] for r in val], "o-", label="cased")
        axes[1].plot(
            [r["step"] for r in val], [r["bleu_lc"] for r in val], "o-", label="lowercased"
        )
        beam = val[-1]["beam_size"] if val else 1
        decoding = "greedy" if beam == 1 else f"beam {beam}"
        axes[1].set(xlabel="step", ylabel="sacreBLEU", title=f"validation BLEU ({decoding})")
        axes[1].legend()
        axes[2].plot([r["step"] for r in train], [r["lr"] for r in train])
        axes[2].set(xlabel="step", ylabel="learning rate", title="inverse-sqrt schedule")
        fig.tight_layout()
        tmp = self.path.with_name(".curves.png.tmp")
        fig.savefig(tmp, format="png", dpi=80)
        plt.close(fig)
        os.replace(tmp, self.path.with_name("curves.png"))


def atomic_write_json_lines(path: Path, records: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# the loop


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


def evaluate(
    model: Transformer, tokenizer, corpus: Corpus, config: TrainConfig, beam_size: int, amp: bool
) -> dict[str, float]:
    """Validation-style metrics of ``model`` on ``corpus``: NLL loss and sacreBLEU of decodes."""
    loss = validation_loss(model, corpus, config.max_tokens, amp)
    ids = translate_ids(model, corpus.src, beam_size, config.length_penalty, amp=amp)
    return {"loss": loss, **bleu_scores(decode(tokenizer, ids), corpus.tgt_text)}


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse a run directory that cannot be resumed, or that a new run would overwrite."""
    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
            raise CheckpointError(f"{run_dir}: not a run directory ({CONFIG_FILE} missing)")
        return
    # Checked on every rank (no rank can have written last.json yet), so all of them stop.
    if (run_dir / "last.json").exists():
        raise FileExistsError(f"{run_dir} already holds a run; resume it or choose another run_dir")


def train(config: TrainConfig, resume: bool = False) -> TrainResult:
    """Run training as ``config`` says; with ``resume``, continue ``config.run_dir`` from its last checkpoint."""
    started = time.time()
    device = pick_device(config.device)
    dist_info = init_distributed(device.type)
    if config.device == "auto" and device.type == "cuda":
        device = torch.device(f"cuda:{dist_info.local_rank}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    amp = use_amp(config.amp, device)
    main = dist_info.is_main
    run_dir = resolve_run_dir(config)
    if dist_info.enabled and config.run_dir is None:
        # Every rank must agree on the timestamped directory rank 0 picked.
        names = [str(run_dir)]
        dist.broadcast_object_list(names, src=0)
        run_dir = Path(names[0])
    _check_run_dir(run_dir, resume)

    # ---- data and vocabulary (read before the run directory is made: bad data leaves nothing)
    train_ds = load_split(config.data, "train", config.src_lang, config.tgt_lang)
    val_ds = load_split(config.data, "val", config.src_lang, config.tgt_lang)
    test_ds = None
    if main and config.final_test:  # checked now, so a bad test split fails before training
        test_ds = load_split(config.data, config.test_split, config.src_lang, config.tgt_lang)
    if main:
        if not resume:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run_dir / CONFIG_FILE, config.to_dict())
        print(f"run directory: {run_dir}", file=sys.stderr, flush=True)
    tokenizer_path = run_dir / TOKENIZER_FILE
    if main and not resume:
        if config.train_limit is not None:
            texts = train_ds.select(range(min(config.train_limit, len(train_ds))))
        else:
            texts = train_ds
        tokenizer = train_tokenizer(
            list(texts[config.src_lang]) + list(texts[config.tgt_lang]), config.vocab_size
        )
        save_tokenizer(tokenizer, tokenizer_path)
    if dist_info.enabled:
        dist.barrier()
    if not main or resume:
        tokenizer = load_tokenizer(tokenizer_path)
    train_corpus = _encode_split(tokenizer, train_ds, config, config.train_limit, filter_long=True)
    val_corpus = _encode_split(tokenizer, val_ds, config, config.val_limit, filter_long=False)
    vocab = tokenizer.get_vocab_size()
    model_config = dataclasses.replace(config.model, src_vocab_size=vocab, tgt_vocab_size=vocab)

    # ---- model, optimizer, position
    torch.manual_seed(config.seed)
    model = Transformer(model_config).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
        betas=(0.9, config.beta2),
        eps=1e-9,
    )
    step, epoch, next_batch, train_time, best_bleu = 0, 0, 0, 0.0, -1.0
    if resume:
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
        step, epoch, next_batch = meta["step"], meta["epoch"], meta["next_batch"]
        train_time, best_bleu = meta["train_time"], meta["best_bleu"]
    train_model: torch.nn.Module = model
    if dist_info.enabled:
        train_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    log = MetricsLog(run_dir, main, resume_step=step if resume else None)
    if main and not resume:
        n_params = sum(p.numel() for p in model.parameters())
        log.log(
            split="setup",
            step=0,
            params=n_params,
            vocab=vocab,
            train_pairs=len(train_corpus.src),
            amp=amp,
            device=str(device),
            world_size=dist_info.world_size,
            setup_seconds=time.time() - started,
        )

    def checkpoint_now(val: dict[str, float] | None) -> None:
        nonlocal best_bleu
        is_best = val is not None and val["bleu"] > best_bleu
        if is_best:
            best_bleu = val["bleu"]
        if not main:
            return
        meta = {
            "step": step,
            "epoch": epoch,
            "next_batch": next_batch,
            "train_time": train_time,
            "best_bleu": best_bleu,
            "val": val,
            "model_config": dataclasses.asdict(model_config),
            "tokenizer": TOKENIZER_FILE,
            "train_config": config.to_dict(),
        }
        save_checkpoint(run_dir, model, {"optimizer": optimizer.state_dict()}, meta, best=is_best)

    def run_validation() -> dict[str, float] | None:
        val = None
        if main:
            val = evaluate(model, tokenizer, val_corpus, config, config.val_beam_size, amp)
            log.log(split="val", step=step, epoch=epoch, beam_size=config.val_beam_size, **val)
            log.plot()
            if config.progress:
                tqdm.write(
                    f"step {step} epoch {epoch}: val loss {val['loss']:.3f} BLEU {val['bleu']:.2f} (lc {val['bleu_lc']:.2f})"
                )
        return val

    def out_of_budget() -> bool:
        over = (config.max_steps is not None and step >= config.max_steps) or (
            config.time_budget is not None and train_time >= config.time_budget * 60
        )
        if dist_info.enabled:  # rank 0's clock decides, so that all ranks stop together
            flag = torch.tensor([float(over)], device=device)
            dist.broadcast(flag, src=0)
            over = bool(flag.item())
        return over

    losses: list[torch.Tensor] = []
    last_eval_step = -1
    model.train()
    window_tokens, window_start = 0, time.time()
    done = out_of_budget()
    while not done and epoch < config.epochs:
        batches = shard(
            batch_indices(train_corpus.lengths(), config.max_tokens, config.seed, epoch),
            dist_info.rank,
            dist_info.world_size,
        )
        bar = tqdm(
            total=len(batches),
            initial=next_batch,
            desc=f"epoch {epoch}",
            disable=not (main and config.progress),
            dynamic_ncols=True,
            leave=False,
        )
        while next_batch < len(batches):
            loop_start = time.time()
            group = batches[next_batch]
            cpu_batch: Batch = make_batch(
                [train_corpus.src[i] for i in group], [train_corpus.tgt[i] for i in group]
            )
            # Counted on the host copy: counting on the GPU would sync the device every step.
            batch_tokens = int((cpu_batch.src != PAD_ID).sum()) + cpu_batch.num_tgt_tokens
            batch = cpu_batch.to(device)
            step += 1
            lr = inverse_sqrt_lr(step, config.lr, config.warmup_steps)
            for g in optimizer.param_groups:
                g["lr"] = lr
            torch.manual_seed(
                config.seed * 1_000_003 + step * dist_info.world_size + dist_info.rank
            )
            with autocast(device, amp):
                logits = train_model(batch.src, batch.tgt_in)
            loss = label_smoothed_loss(logits, batch.tgt_out, config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            optimizer.step()
            next_batch += 1
            losses.append(loss.detach())  # read back only when logged: no per-step sync
            window_tokens += batch_tokens
            bar.update(1)
            if step % config.log_every == 0:
                loss_value = loss.item()
                elapsed = time.time() - window_start
                tok_s = window_tokens * dist_info.world_size / max(elapsed, 1e-9)
                bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tok_s:.0f}", lr=f"{lr:.2e}")
                log.log(
                    split="train",
                    step=step,
                    epoch=epoch,
                    loss=loss_value,
                    lr=lr,
                    tokens_per_s=tok_s,
                )
                window_tokens, window_start = 0, time.time()
            end_of_epoch = next_batch == len(batches)
            if end_of_epoch:
                epoch, next_batch = epoch + 1, 0
            train_time += time.time() - loop_start
            done = out_of_budget()
            periodic = config.eval_every and step % config.eval_every == 0
            if done or (end_of_epoch and config.eval_at_epoch_end) or periodic:
                eval_start = time.time()
                checkpoint_now(run_validation())
                last_eval_step = step
                train_time += time.time() - eval_start
                window_start = time.time()
            elif config.checkpoint_every and step % config.checkpoint_every == 0:
                checkpoint_now(None)
            if done or end_of_epoch:
                break
        bar.close()
    if last_eval_step != step and main:
        checkpoint_now(run_validation())  # e.g. resumed at the very end: make sure 'last' exists

    # ---- final evaluation: best checkpoint on the test split
    metrics: dict[str, float] = {}
    if main:
        metrics = {"train_time": train_time, "steps": step}
        if config.final_test:
            test_start = time.time()
            best = load_checkpoint(run_dir, "best")
            best.load_weights(model)
            test_corpus = _encode_split(tokenizer, test_ds, config, None, filter_long=False)
            val = best.meta["val"]
            test = evaluate(model, tokenizer, test_corpus, config, config.beam_size, amp)
            metrics.update({f"val_{k}": v for k, v in val.items()})
            metrics.update({f"test_{k}": v for k, v in test.items()})
            metrics.update(best_step=best.meta["step"], test_seconds=time.time() - test_start)
            log.log(
                split="test",
                step=step,
                best_step=best.meta["step"],
                beam_size=config.beam_size,
                **test,
            )
        metrics["wall_seconds"] = time.time() - started
        atomic_write_json(run_dir / "results.json", metrics)
        log.plot()
    if dist_info.enabled:
        dist.barrier()
    loss_values = torch.stack(losses).tolist() if losses else []
    return TrainResult(run_dir=run_dir, model=model, step=step, losses=loss_values, metrics=metrics)
