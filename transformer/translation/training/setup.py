"""Setting a run up, in the order :func:`~.loop.train` does it: this process's device and rank
(:func:`setup_process`), the run directory, the corpus and the shared vocabulary
(:func:`prepare_data`), and the model and its optimizer (:func:`build_model`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from transformer.model import Transformer
from transformer.translation.checkpoint import CheckpointError, atomic_write_json, hold_run_dir
from transformer.translation.data import Corpus, CorpusError, encode_split, load_split
from transformer.translation.devices import pick_device, use_amp
from transformer.translation.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from transformer.translation.training.config import CONFIG_FILE, TOKENIZER_FILE, TrainConfig

# --- where this process computes -------------------------------------------------------------


@dataclass(frozen=True)
class Process:
    """This process: its device, whether it trains under bf16 autocast, and its place among the
    data-parallel processes ``torchrun`` started (one process, rank 0 of 1, without it)."""

    device: torch.device
    amp: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_process(config: TrainConfig) -> Process:
    """This rank's device and place in the process group; sets the CPU thread count."""
    device = pick_device(config.device)
    rank, world_size, local_rank = init_distributed(device.type)
    if device.type == "cuda" and (config.device == "auto" or device.index is None):
        # "cuda" names no device, and torch.cuda.set_device refuses it: this rank's GPU
        # (LOCAL_RANK under torchrun), or the current one in a single process.
        index = local_rank if world_size > 1 else torch.cuda.current_device()
        device = torch.device("cuda", index)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    return Process(device, use_amp(config.amp, device), rank, world_size, local_rank)


def init_distributed(device_type: str) -> tuple[int, int, int]:
    """Join the process group torchrun describes in the environment (if ``WORLD_SIZE`` > 1):
    (rank, world size, local rank)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


# --- where it writes ---------------------------------------------------------------------------


def run_directory(config: TrainConfig, process: Process, resume: bool) -> Path:
    """The run directory (every rank agrees on the one rank 0 names), refused if it cannot be
    resumed or if a new run would overwrite one. Not created yet: see :func:`open_run_dir`."""
    run_dir = Path(config.run_dir) if config.run_dir is not None else None
    if run_dir is None:
        names = [str(Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))]
        if process.distributed:  # every rank must agree on the timestamp rank 0 picked
            dist.broadcast_object_list(names, src=0)
        run_dir = Path(names[0])
    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
            raise CheckpointError(f"{run_dir}: not a run directory ({CONFIG_FILE} missing)")
        if not (run_dir / "last.json").exists() and not any(run_dir.glob("checkpoints/step-*")):
            raise CheckpointError(
                f"{run_dir}: the run stopped before its first checkpoint: nothing to resume "
                f"(last.json not found); start it again as a new run (--run-dir {run_dir}, "
                f"with the options its {CONFIG_FILE} records)"
            )
    elif (run_dir / "last.json").exists():
        # Checked on every rank (no rank can have written last.json yet), so all of them stop.
        raise FileExistsError(f"{run_dir} already holds a run; resume it or choose another run_dir")
    return run_dir


@contextmanager
def open_run_dir(run_dir: Path, config: TrainConfig, resume: bool) -> Iterator[None]:
    """Rank 0: create a new run's directory and its ``config.json`` (only once the corpus has
    been read: bad data leaves no run directory); say where the run goes. Within the block the
    directory is this process's: a second ``train.py`` into it (a new run started twice, a
    resume while the run still goes on) is refused instead of both writing the same checkpoints
    and metrics (:func:`~transformer.translation.checkpoint.hold_run_dir`)."""
    if not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
    with hold_run_dir(run_dir):
        if not resume:
            atomic_write_json(run_dir / CONFIG_FILE, config.to_dict())
        print(f"run directory: {run_dir}", file=sys.stderr, flush=True)
        if config.sizing is not None and not resume:
            print(f"size: {config.sizing.preset} ({config.sizing.reason})", file=sys.stderr)
        yield


def record_vocabulary(run_dir: Path, config: TrainConfig, vocab_size: int) -> None:
    """Rank 0 of a new run, once the tokenizer is trained: ``config.json``'s model takes the
    tokenizer's real vocabulary size in place of the placeholder, and a size other than
    ``--vocab-size`` asked for is said (BPE stops short of it on a small corpus, and never
    goes below its alphabet)."""
    model = replace(config.model, src_vocab_size=vocab_size, tgt_vocab_size=vocab_size)
    atomic_write_json(run_dir / CONFIG_FILE, replace(config, model=model).to_dict())
    if vocab_size != config.vocab_size:
        print(
            f"vocabulary: {vocab_size} tokens (--vocab-size asked for {config.vocab_size})",
            file=sys.stderr,
        )


# --- what it reads -----------------------------------------------------------------------------


@dataclass
class Data:
    """The run's vocabulary and splits: training and validation pairs as token ids, and the test
    split as text (rank 0, when it is scored; tokenized at the end)."""

    tokenizer: Any
    train: Corpus
    val: Corpus
    test: Any


def read_splits(config: TrainConfig, is_main: bool) -> tuple[Any, Any, Any]:
    """The train, val and (rank 0, if it will be scored) test splits, read before training so
    that a bad split fails before the run starts."""
    train = load_split(config.data, "train", config.src_lang, config.tgt_lang)
    val = load_split(config.data, "val", config.src_lang, config.tgt_lang)
    test = None
    if is_main and config.final_test:
        test = load_split(config.data, config.test_split, config.src_lang, config.tgt_lang)
    return train, val, test


def prepare_data(
    config: TrainConfig, splits: tuple[Any, Any, Any], run_dir: Path, process: Process, resume: bool
) -> Data:
    """The vocabulary (rank 0 of a new run trains it on the training split and saves it; everyone
    else loads it) and the splits as token ids."""
    train, val, test = splits
    path = run_dir / TOKENIZER_FILE
    tokenizer = None
    if process.is_main and not resume:
        texts = train
        if config.train_limit is not None:
            texts = train.select(range(min(config.train_limit, len(train))))
        sentences = list(texts[config.src_lang]) + list(texts[config.tgt_lang])
        tokenizer = train_tokenizer(sentences, config.vocab_size)
        save_tokenizer(tokenizer, path)
    if process.distributed:
        dist.barrier()
    if tokenizer is None:
        try:
            tokenizer = load_tokenizer(path)
        except ValueError as err:  # a resumed run whose tokenizer.json is missing or garbled
            raise CheckpointError(str(err)) from None
    langs = (config.src_lang, config.tgt_lang)
    train_ids = encode_split(tokenizer, train, *langs, config.train_limit, config.max_length)
    if not train_ids.src:
        read = len(train) if config.train_limit is None else min(config.train_limit, len(train))
        raise CorpusError(
            f"{config.data}: none of the {read} training pairs has both sides within "
            f"--max-length {config.max_length} tokens: nothing to train on"
        )
    return Data(tokenizer, train_ids, encode_split(tokenizer, val, *langs, config.val_limit), test)


# --- what it trains ----------------------------------------------------------------------------


def build_model(
    config: TrainConfig, vocab_size: int, device: torch.device
) -> tuple[Transformer, torch.optim.Optimizer]:
    """The model of ``config.model`` with the tokenizer's vocabulary size (initialized from
    ``config.seed``), and its AdamW optimizer with weight decay on matrices only (not on biases
    and norm gains)."""
    model_config = replace(config.model, src_vocab_size=vocab_size, tgt_vocab_size=vocab_size)
    torch.manual_seed(config.seed)
    model = Transformer(model_config).to(device)
    return model, make_optimizer(model, config)


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


def training_module(model: Transformer, config: TrainConfig, process: Process) -> torch.nn.Module:
    """What the training steps call: the model, under DistributedDataParallel with several
    ranks, compiled with ``config.compile``. Validation, decoding and checkpoints use the plain
    model (checkpoints keep its parameter names)."""
    module: torch.nn.Module = model
    if process.distributed:
        device_ids = [process.device.index] if process.device.type == "cuda" else None
        module = DistributedDataParallel(model, device_ids=device_ids)
    if config.compile:
        # DDP splits the graph at its gradient buckets, so fullgraph is asked for only without it.
        module = torch.compile(module, fullgraph=not process.distributed)
    return module
