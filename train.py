"""Train the German→English Transformer: ``python train.py`` (defaults fit 2 CPU cores, 10 minutes).

Builds one :class:`transformer.translation.training.TrainConfig` from the command line and
hands it to :func:`transformer.translation.training.train`. ``torchrun --nproc_per_node=N
train.py ...`` trains data parallel. ``--resume RUN_DIR`` continues a stopped run from its last
checkpoint. SIGTERM or SIGINT stops a run after its current step with a checkpoint and the
command that resumes it (see ``STOPPING``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path

import torch

from transformer.config import BACKENDS, SCORES, ModelConfig
from transformer.translation.cli import (
    HelpFormatter,
    add_options,
    device_problem,
    fraction,
    nonnegative_int,
    positive_int,
)
from transformer.translation.training import CONFIG_FILE, TrainConfig, sizing
from transformer.translation.training.budget import StopRequest, exit_status
from transformer.translation.training.devices import use_amp

# Named model shapes. "cpu" is what 2 CPU cores with bf16 units train to useful BLEU in ~9
# minutes: a run that short sees ~5 epochs, too few to overfit 29k pairs, so dropout (12% of a
# CPU step, and slower early progress) is off. "cpu-small" is for about half that compute (a
# float32-only CPU, or one core): narrower, a smaller vocabulary, SDPA attention (faster than
# naive in float32) and validation only at the end (each one costs steps). "auto" (the default)
# picks one of the two by timing this machine's compute (training/sizing.py; measurements in
# docs/cpu_sizing.md). "base" is the Transformer-base of Vaswani et al. (2017), for a GPU, with
# the heavier dropout a 60M-parameter model needs on a corpus this small.
PRESETS: dict[str, dict] = {
    "cpu": dict(d_model=256, heads=4, encoder_layers=3, decoder_layers=3, d_ff=512, dropout=0.0),
    "cpu-small": dict(
        d_model=192,
        heads=4,
        encoder_layers=3,
        decoder_layers=3,
        d_ff=384,
        dropout=0.0,
        backend="sdpa",
    ),
    "base": dict(d_model=512, heads=8, encoder_layers=6, decoder_layers=6, d_ff=2048, dropout=0.3),
}
# Training defaults that differ per preset (everything else comes from TrainConfig).
PRESET_TRAINING: dict[str, dict] = {
    "cpu": dict(),
    "cpu-small": dict(vocab_size=4000, eval_at_epoch_end=False),
    "base": dict(
        max_tokens=8192, lr=1e-3, warmup_steps=1000, time_budget=None, epochs=60, val_beam_size=4
    ),
}
AUTO = "auto"
STOPPING = (
    "SIGTERM (a scheduler's or a preemption's first warning) or SIGINT (Ctrl-C) stops a run "
    "after its current step: it writes a checkpoint, prints the command that resumes it and "
    "exits with status 143 (SIGTERM) or 130 (SIGINT); every torchrun rank stops at the same "
    "step. A second signal exits at once with the same status (the checkpoint before stays "
    "valid). Exit status 2: bad options, data or checkpoints, or a checkpoint that could not "
    "be written (the previous one stays valid)."
)
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


def build_parser() -> argparse.ArgumentParser:
    """The options of :class:`TrainConfig`, from its fields' metadata, plus the model options
    (defaults: the ``--config`` preset) and those that only ``train.py`` has."""
    p = argparse.ArgumentParser(
        description="Train a Transformer encoder-decoder for German→English translation "
        "(Multi30K by default). Writes runs/<name>/ with checkpoints, tokenizer.json, "
        "metrics.jsonl, curves.png and results.json.",
        epilog=STOPPING,
        formatter_class=HelpFormatter,
    )
    titles = ("run", "data", "model (defaults: the --config preset)", "optimization")
    groups = {title.split()[0]: p.add_argument_group(title) for title in titles}
    groups["evaluation"] = p.add_argument_group("evaluation and checkpoints")
    g = groups["run"]
    g.add_argument(
        "--config",
        choices=[AUTO, *PRESETS],
        default=AUTO,
        help="named model size: cpu (2 CPU cores with bf16 units, ~10 min), cpu-small (about "
        "half that compute), base (Transformer-base, for a GPU), or auto: cpu or cpu-small, "
        "chosen by timing a matmul for a second (on a GPU: cpu); explicit options win",
    )
    g.add_argument("--name", help="run name: the run goes to runs/NAME (default: a timestamp)")
    g.add_argument("--run-dir", help="explicit run directory (overrides --name)")
    g.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last checkpoint with its saved configuration; only how long it runs and how it reports may change",
    )
    add_model_options(groups["model"])
    add_options(TrainConfig, groups)
    groups["optimization"].add_argument(
        "--no-time-budget", action="store_true", help="train until --epochs / --max-steps"
    )
    groups["evaluation"].add_argument(
        "--greedy",
        action="store_true",
        help="greedy decoding everywhere (same as --beam-size 1 --val-beam-size 1)",
    )
    return p


def add_model_options(g: argparse._ArgumentGroup) -> None:
    """The :class:`ModelConfig` options; None (not given) leaves the preset's value."""
    g.add_argument(
        "--attention",
        choices=BACKENDS,
        help="attention backend for the whole model (default naive; cpu-small sdpa)",
    )
    g.add_argument("--score", choices=SCORES, help="attention score function (default scaled_dot)")
    g.add_argument(
        "--d-model", type=positive_int, help="model width (cpu 256, cpu-small 192, base 512)"
    )
    g.add_argument("--heads", type=positive_int, help="attention heads; must divide --d-model")
    g.add_argument("--encoder-layers", type=nonnegative_int, help="encoder layers (cpu 3, base 6)")
    g.add_argument("--decoder-layers", type=nonnegative_int, help="decoder layers (cpu 3, base 6)")
    g.add_argument(
        "--d-ff", type=positive_int, help="feed-forward width (cpu 512, cpu-small 384, base 2048)"
    )
    g.add_argument("--dropout", type=fraction, help="residual/embedding dropout (cpu 0, base 0.3)")
    g.add_argument(
        "--attention-dropout",
        type=fraction,
        help="dropout on attention probabilities (default 0; not with --score additive on triton)",
    )
    g.add_argument(
        "--no-tie-embeddings",
        dest="tie_embeddings",
        action="store_false",
        default=None,
        help="separate source/target embeddings and output layer",
    )


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
# The TrainConfig fields that are options (their metadata says how).
TRAIN_OPTIONS = tuple(f.name for f in dataclasses.fields(TrainConfig) if "help" in f.metadata)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of a new run: ``--config auto`` (the default) times this machine's compute
    to pick cpu or cpu-small (see training/sizing.py), unless explicit options already fix
    everything the two differ in; any other ``--config`` is used as named."""
    if args.config != AUTO:
        return preset_config(args, args.config)
    candidates = {name: preset_config(args, name) for name in sizing.PRESETS}  # checks each
    first, *others = candidates.values()
    if all(other == first for other in others):
        return first
    choice = sizing.choose(first.device, use_amp(first.amp, torch.device("cpu")), first.threads)
    return dataclasses.replace(candidates[choice.preset], sizing=choice)


def preset_config(args: argparse.Namespace, preset: str) -> TrainConfig:
    """The TrainConfig of ``preset``, then its training defaults, then the explicit options."""
    model_kwargs = dict(PRESETS[preset])
    for option, field in MODEL_OPTIONS.items():
        if getattr(args, option) is not None:
            model_kwargs[field] = getattr(args, option)
    kwargs = dict(PRESET_TRAINING[preset])
    for name in TRAIN_OPTIONS:
        value = getattr(args, name)
        if value is not None:
            kwargs[name] = value
    vocab = kwargs.get("vocab_size", TrainConfig.vocab_size)
    model = ModelConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, **model_kwargs)
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


def resume_command(run_dir: Path, argv: list[str] | None, resumed: bool) -> str:
    """The command line that continues the run in ``run_dir``: ``--resume RUN_DIR`` (a new run's
    options are saved in its config.json), or a resumed run's own command line (its options
    are the resumable ones it changed); under torchrun, with as many processes per node."""
    args = (sys.argv[1:] if argv is None else argv) if resumed else ["--resume", str(run_dir)]
    launcher = ["python"]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        nproc = os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])
        launcher = ["torchrun", f"--nproc_per_node={nproc}"]
    return shlex.join([*launcher, sys.argv[0] if argv is None else "train.py", *args])


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

    stop = StopRequest()
    try:
        with stop.on_signals():
            result = train(config, resume=bool(args.resume), stop=stop)
    except (CheckpointError, CorpusError, FileExistsError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    if result.stopped:
        if int(os.environ.get("RANK", "0")) == 0:
            print(
                f"stopped at step {result.step}, checkpoint written; resume with:\n"
                f"  {resume_command(result.run_dir, argv, resumed=bool(args.resume))}",
                file=sys.stderr,
                flush=True,
            )
        return exit_status(stop.signum)
    if result.metrics:
        print(json.dumps({"run_dir": str(result.run_dir), **result.metrics}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
