"""Train the German→English Transformer: ``python train.py`` (defaults fit 2 CPU cores, 10 minutes).

Builds one :class:`transformer.translation.training.TrainConfig` from the command line and
hands it to :func:`transformer.translation.training.train`. ``torchrun --nproc_per_node=N
train.py ...`` trains data parallel. ``--resume RUN_DIR`` continues a stopped run from its last
checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from transformer.config import BACKENDS, SCORES, ModelConfig
from transformer.translation.cli import HelpFormatter, device_problem
from transformer.translation.training import CONFIG_FILE, SCHEDULES, TrainConfig

# Named model shapes. "cpu" is what 2 CPU cores can train to useful BLEU in ~8 minutes: a run
# that short sees ~4 epochs, too few to overfit 29k pairs, so dropout (12% of a CPU step, and
# slower early progress) is off. "base" is the Transformer-base of Vaswani et al. (2017), for a
# GPU, with the heavier dropout a 60M-parameter model needs on a corpus this small.
PRESETS: dict[str, dict] = {
    "cpu": dict(d_model=256, heads=4, encoder_layers=3, decoder_layers=3, d_ff=512, dropout=0.0),
    "base": dict(d_model=512, heads=8, encoder_layers=6, decoder_layers=6, d_ff=2048, dropout=0.3),
}
# Training defaults that differ per preset (everything else comes from TrainConfig).
PRESET_TRAINING: dict[str, dict] = {
    "cpu": dict(),
    "base": dict(
        max_tokens=8192, lr=1e-3, warmup_steps=1000, time_budget=None, epochs=60, val_beam_size=4
    ),
}
# Options that may change when a run is resumed: how long it goes on and how it reports.
RESUMABLE = {
    "max_steps",
    "time_budget",
    "epochs",
    "progress",
    "device",
    "threads",
    "compile",
    "final_test",
    "checkpoint_every",
    "log_every",
}


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        description="Train a Transformer encoder-decoder for German→English translation "
        "(Multi30K by default). Writes runs/<name>/ with checkpoints, tokenizer.json, "
        "metrics.jsonl, curves.png and results.json.",
        formatter_class=HelpFormatter,
    )
    g = p.add_argument_group("run")
    g.add_argument(
        "--config",
        choices=sorted(PRESETS),
        default="cpu",
        help="named model size: cpu (2 CPU cores, ~10 min) or base (Transformer-base, for a GPU)",
    )
    g.add_argument("--name", help="run name: the run goes to runs/NAME (default: a timestamp)")
    g.add_argument("--run-dir", help="explicit run directory (overrides --name)")
    g.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last checkpoint with its saved configuration; only how long it runs and how it reports may change",
    )
    g.add_argument(
        "--seed", type=int, default=d.seed, help="seed of initialization, batch order and dropout"
    )
    g.add_argument(
        "--device", default=d.device, help="auto (CUDA if present), cpu, cuda, cuda:1, ..."
    )
    g.add_argument(
        "--amp",
        choices=["auto", "on", "off"],
        default=d.amp,
        help="bf16 autocast; auto: on for CUDA and for CPUs with bf16 units",
    )
    g.add_argument(
        "--threads", type=positive_int, help="CPU threads for PyTorch (default: PyTorch's choice)"
    )
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    g.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the model for training steps (one graph for every batch shape; "
        "compiling takes about a minute on 2 CPU cores, counted in the time budget: see the "
        "README for when it pays)",
    )

    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        default=d.data,
        help="corpus directory: <split>.<lang>[.gz] text files or a datasets save_to_disk directory, with splits train, val and the test split",
    )
    g.add_argument("--src-lang", default=d.src_lang, help="source language suffix / column")
    g.add_argument("--tgt-lang", default=d.tgt_lang, help="target language suffix / column")
    g.add_argument("--test-split", default=d.test_split, help="split scored at the end")
    g.add_argument(
        "--vocab-size",
        type=positive_int,
        default=d.vocab_size,
        help="shared BPE vocabulary size (default: %(default)s)",
    )
    g.add_argument(
        "--max-length",
        type=positive_int,
        default=d.max_length,
        help="training pairs with a side longer than this many tokens are skipped",
    )
    g.add_argument("--train-limit", type=positive_int, help="use only the first N training pairs")
    g.add_argument("--val-limit", type=positive_int, help="use only the first N validation pairs")

    g = p.add_argument_group("model (defaults: the --config preset)")
    g.add_argument(
        "--attention",
        choices=BACKENDS,
        help="attention backend for the whole model (default naive)",
    )
    g.add_argument("--score", choices=SCORES, help="attention score function (default scaled_dot)")
    g.add_argument("--d-model", type=positive_int, help="model width (cpu 256, base 512)")
    g.add_argument("--heads", type=positive_int, help="attention heads; must divide --d-model")
    g.add_argument("--encoder-layers", type=nonnegative_int, help="encoder layers (cpu 3, base 6)")
    g.add_argument("--decoder-layers", type=nonnegative_int, help="decoder layers (cpu 3, base 6)")
    g.add_argument("--d-ff", type=positive_int, help="feed-forward width (cpu 512, base 2048)")
    g.add_argument("--dropout", type=fraction, help="residual/embedding dropout (cpu 0, base 0.3)")
    g.add_argument(
        "--attention-dropout",
        type=fraction,
        help="dropout on attention probabilities (default 0; not with triton)",
    )
    g.add_argument(
        "--no-tie-embeddings",
        dest="tie_embeddings",
        action="store_false",
        default=None,
        help="separate source/target embeddings and output layer",
    )

    g = p.add_argument_group("optimization")
    g.add_argument(
        "--max-tokens",
        type=positive_int,
        help=f"padded tokens per batch (default {d.max_tokens} for cpu)",
    )
    g.add_argument("--lr", type=positive_float, help=f"peak learning rate (default {d.lr} for cpu)")
    g.add_argument(
        "--warmup-steps",
        type=nonnegative_int,
        help=f"linear warm-up steps, then the --schedule's decay (default {d.warmup_steps} for cpu)",
    )
    g.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=d.schedule,
        help="learning rate after warm-up: inverse-sqrt (peak·√(warmup/step)) or linear-decay "
        "(straight down to zero as the budget ends: the time budget, following elapsed training "
        "time, or --max-steps / --epochs, whichever ends first; default: %(default)s)",
    )
    g.add_argument(
        "--weight-decay",
        type=float,
        default=d.weight_decay,
        help="AdamW weight decay (matrices only)",
    )
    g.add_argument(
        "--label-smoothing",
        type=fraction,
        default=d.label_smoothing,
        help="label smoothing of the training loss",
    )
    g.add_argument(
        "--clip-norm", type=float, default=d.clip_norm, help="gradient-norm clip; 0 turns it off"
    )
    g.add_argument(
        "--epochs", type=positive_int, help=f"maximum epochs (default {d.epochs} for cpu)"
    )
    g.add_argument("--max-steps", type=positive_int, help="stop after this many optimizer steps")
    g.add_argument(
        "--time-budget",
        type=positive_float,
        help=f"minutes for the training loop incl. validation (default {d.time_budget} for cpu, none for base)",
    )
    g.add_argument(
        "--no-time-budget", action="store_true", help="train until --epochs / --max-steps"
    )

    g = p.add_argument_group("evaluation and checkpoints")
    g.add_argument(
        "--eval-every",
        type=nonnegative_int,
        help="validate (loss, BLEU, checkpoint) every N steps; 0: at epoch ends only",
    )
    g.add_argument(
        "--no-epoch-eval",
        dest="eval_at_epoch_end",
        action="store_false",
        default=None,
        help="do not validate at each epoch's end (only every --eval-every steps and at the end)",
    )
    g.add_argument(
        "--checkpoint-every",
        type=nonnegative_int,
        default=d.checkpoint_every,
        help="checkpoint every N steps (0: only at validations)",
    )
    g.add_argument(
        "--log-every",
        type=positive_int,
        default=d.log_every,
        help="log training metrics every N steps",
    )
    g.add_argument(
        "--beam-size",
        type=positive_int,
        default=d.beam_size,
        help="beam size for the test set; 1 = greedy",
    )
    g.add_argument(
        "--greedy",
        action="store_true",
        help="greedy decoding everywhere (same as --beam-size 1 --val-beam-size 1)",
    )
    g.add_argument(
        "--val-beam-size",
        type=positive_int,
        help=f"beam size for validation BLEU during training, which chooses the best checkpoint "
        f"(default {d.val_beam_size} for cpu: greedy, the fastest; 4 for base)",
    )
    g.add_argument(
        "--average-last",
        type=nonnegative_int,
        default=d.average_last,
        help="keep the last N checkpoints, average their weights at the end, validate the "
        "average and make it the best checkpoint when its BLEU is higher (0 or 1: off)",
    )
    g.add_argument(
        "--length-penalty",
        type=float,
        default=d.length_penalty,
        help="GNMT length penalty alpha for beam search",
    )
    g.add_argument(
        "--no-final-test",
        dest="final_test",
        action="store_false",
        help="skip the test-set BLEU at the end",
    )
    return p


MODEL_OPTIONS = {
    "attention": "backend",
    "score": "score",
    "d_model": "d_model",
    "heads": "heads",
    "encoder_layers": "encoder_layers",
    "decoder_layers": "decoder_layers",
    "d_ff": "d_ff",
    "dropout": "dropout",
    "attention_dropout": "attention_dropout",
    "tie_embeddings": "tie_embeddings",
}
TRAIN_OPTIONS = (
    "seed",
    "device",
    "amp",
    "threads",
    "progress",
    "compile",
    "data",
    "src_lang",
    "tgt_lang",
    "test_split",
    "vocab_size",
    "max_length",
    "train_limit",
    "val_limit",
    "max_tokens",
    "lr",
    "warmup_steps",
    "schedule",
    "weight_decay",
    "label_smoothing",
    "clip_norm",
    "epochs",
    "max_steps",
    "time_budget",
    "eval_every",
    "eval_at_epoch_end",
    "checkpoint_every",
    "log_every",
    "beam_size",
    "val_beam_size",
    "average_last",
    "length_penalty",
    "final_test",
)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of a new run: preset, then preset training defaults, then explicit options."""
    model_kwargs = dict(PRESETS[args.config])
    for option, field in MODEL_OPTIONS.items():
        if getattr(args, option) is not None:
            model_kwargs[field] = getattr(args, option)
    model = ModelConfig(
        src_vocab_size=args.vocab_size, tgt_vocab_size=args.vocab_size, **model_kwargs
    )
    kwargs = dict(PRESET_TRAINING[args.config])
    for name in TRAIN_OPTIONS:
        value = getattr(args, name)
        if value is not None:
            kwargs[name] = value
    if args.no_time_budget:
        kwargs["time_budget"] = None
    if args.greedy:
        kwargs["beam_size"] = kwargs["val_beam_size"] = 1
    if not Path(args.data).is_dir():
        raise ValueError(f"--data {args.data}: no such directory")
    run_dir = args.run_dir or (str(Path("runs") / args.name) if args.name else None)
    return TrainConfig(model=model, run_dir=run_dir, **kwargs)


def resumed_config(args: argparse.Namespace, given: set[str]) -> TrainConfig:
    """The saved TrainConfig of ``args.resume`` with the explicitly given resumable options applied."""
    path = Path(args.resume) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"--resume {args.resume}: not a run directory ({CONFIG_FILE} missing)")
    refused = given - RESUMABLE - {"resume", "no_time_budget"}
    if refused:
        raise ValueError(
            f"--resume continues a run with its saved configuration; these options would change it: "
            f"{', '.join('--' + n.replace('_', '-') for n in sorted(refused))}"
        )
    try:
        saved = TrainConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: unreadable run configuration ({err})") from None
    changes = {name: getattr(args, name) for name in given & RESUMABLE}
    if "no_time_budget" in given:
        changes["time_budget"] = None
    return dataclasses.replace(saved, run_dir=str(args.resume), **changes)


def given_options(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """Destinations of the options typed on the command line (not defaulted)."""
    probe = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        if action.nargs == 0:  # flags
            probe.add_argument(
                *action.option_strings, dest=action.dest, action="store_const", const=True
            )
        else:
            probe.add_argument(*action.option_strings, dest=action.dest)
    return set(vars(probe.parse_known_args(argv)[0]))


def _triton_can_run(device: str) -> bool:
    import torch

    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    return torch.cuda.is_available() and not device.startswith("cpu")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    given = given_options(parser, argv)
    try:
        config = resumed_config(args, given) if args.resume else config_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    problem = device_problem(config.device, allow_auto=True)
    if problem:
        parser.error(problem)

    if config.model.backend == "triton" and not _triton_can_run(config.device):
        parser.error(
            "--attention triton needs a CUDA device (or TRITON_INTERPRET=1 to run the kernel, "
            "very slowly, in Triton's CPU interpreter)"
        )

    from transformer.translation.checkpoint import CheckpointError
    from transformer.translation.data import CorpusError
    from transformer.translation.training import train

    try:
        result = train(config, resume=bool(args.resume))
    except (CheckpointError, CorpusError, FileExistsError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    if result.metrics:
        print(json.dumps({"run_dir": str(result.run_dir), **result.metrics}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
