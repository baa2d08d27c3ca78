"""Train the German→English Transformer: ``python train.py`` (defaults fit 2 CPU cores, 10 minutes).

Builds one :class:`transformer.translation.training.TrainConfig` from the command line and
hands it to :func:`transformer.translation.training.train`. ``torchrun --nproc_per_node=N
train.py ...`` trains data parallel. ``--resume RUN_DIR`` continues a stopped run from its last
checkpoint. SIGTERM or SIGINT stops a run after its current step with a checkpoint and the
command that resumes it (see ``STOPPING``).
"""

from __future__ import annotations

import signal
import sys


def _interrupted_before_training(signum, frame):
    """Ctrl-C before the run's own handlers are in place (importing torch alone takes a second
    or two): nothing has been written, so exit as the shell would, without a traceback."""
    print("train.py: interrupted before training started; nothing written", file=sys.stderr)
    sys.exit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, _interrupted_before_training)

import argparse
import dataclasses
import errno
import json
import os
import shlex
from pathlib import Path

import torch

from transformer.translation.cli import HelpFormatter, add_options, device_problem
from transformer.translation.devices import use_amp
from transformer.translation.training import (
    CONFIG_FILE,
    StopRequest,
    TrainConfig,
    exit_status,
    sizing,
)
from transformer.translation.training.config import (
    PRESETS,
    RESUMABLE,
    ModelOptions,
    config_from_preset,
    training_preset_values,
)

AUTO = "auto"
# what a write that fails for want of room raises: a full disk, a quota, a file-size limit
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
STOPPING = (
    "SIGTERM (a scheduler's or a preemption's first warning) or SIGINT (Ctrl-C) stops a run "
    "after its current step: it writes a checkpoint, prints the command that resumes it and "
    "exits with status 143 (SIGTERM) or 130 (SIGINT); every torchrun rank stops at the same "
    "step. A second signal (the same one again after a second, or the other one) exits at "
    "once with its own status, 143 or 130 (the checkpoint before stays valid). Exit status 2: bad options, data or checkpoints, or a checkpoint that could not "
    "be written (the previous one stays valid)."
)
KERNELS = (
    "With --attention triton on a GPU, the run first compiles every kernel specialisation it "
    "will launch, in parallel on all CPU cores and before the time budget starts (printed, and "
    "kept in metrics.jsonl and results.json as kernel_warmup_seconds; --no-kernel-warmup skips "
    "it), and keeps autotuning's choices in FLASH_ATTENTION_TUNE_CACHE if set, else "
    "~/.cache/flash-transformer/launch_choices.json ($XDG_CACHE_HOME if set): a resumed or "
    "later run of the same shapes reuses them instead of timing again (docs/training.md)."
)
# The option fields of each configuration (their metadata says how they are parsed).
MODEL_OPTIONS = tuple(f.name for f in dataclasses.fields(ModelOptions))
TRAIN_OPTIONS = tuple(f.name for f in dataclasses.fields(TrainConfig) if "help" in f.metadata)


def build_parser() -> argparse.ArgumentParser:
    """The options of :class:`TrainConfig`, from its fields' metadata, plus the model options
    (defaults: the ``--config`` preset) and those that only ``train.py`` has."""
    p = argparse.ArgumentParser(
        description="Train a Transformer encoder-decoder for German→English translation "
        "(Multi30K by default). Writes runs/<name>/ with checkpoints, tokenizer.json, "
        "metrics.jsonl, curves.png and results.json.",
        epilog=f"{KERNELS} {STOPPING}",
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
    add_options(ModelOptions, groups)
    add_options(TrainConfig, groups, presets=training_preset_values)
    groups["optimization"].add_argument(
        "--no-time-budget", action="store_true", help="train until --epochs / --max-steps"
    )
    groups["evaluation"].add_argument(
        "--greedy",
        action="store_true",
        help="greedy decoding everywhere (same as --beam-size 1 --val-beam-size 1)",
    )
    return p


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
    """The TrainConfig of ``preset``, its training defaults, then the explicit options."""
    model_options = ModelOptions(**{name: getattr(args, name) for name in MODEL_OPTIONS})
    options = {name: getattr(args, name) for name in TRAIN_OPTIONS}
    options = {name: value for name, value in options.items() if value is not None}
    if args.no_time_budget:
        options["time_budget"] = None
    if args.greedy:
        options["beam_size"] = options["val_beam_size"] = 1
    if not Path(args.data).is_dir():
        raise ValueError(f"--data {args.data}: no such directory")
    options["run_dir"] = args.run_dir or (str(Path("runs") / args.name) if args.name else None)
    return config_from_preset(preset, model_options.given(), options)


def resumed_config(args: argparse.Namespace, given: set[str], flags: dict[str, str]) -> TrainConfig:
    """The saved TrainConfig of ``args.resume`` with the explicitly given resumable options
    applied; ``flags`` names the option of each destination, for the refusal."""
    path = Path(args.resume) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"--resume {args.resume}: not a run directory ({CONFIG_FILE} missing)")
    refused = given - RESUMABLE - {"resume", "no_time_budget"}
    if refused:
        allowed = sorted(flags[name] for name in RESUMABLE | {"no_time_budget"} if name in flags)
        raise ValueError(
            f"--resume continues a run with its saved configuration; these options would change it: "
            f"{', '.join(sorted(flags[name] for name in refused))} (only these may change on "
            f"--resume: {', '.join(allowed)}; to change the others, start a new run)"
        )
    try:
        saved = TrainConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: unreadable run configuration ({err})") from None
    changes = {name: getattr(args, name) for name in given & RESUMABLE}
    if "no_time_budget" in given:
        changes["time_budget"] = None
    return dataclasses.replace(saved, run_dir=str(args.resume), **changes)


# Flags that fix an option's value: given with that option set otherwise, they contradict it.
FIXING_FLAGS = {
    "greedy": {"beam_size": 1, "val_beam_size": 1},
    "no_time_budget": {"time_budget": None},
}


def contradiction(args: argparse.Namespace, given: set[str], flags: dict[str, str]) -> str | None:
    """What a flag given beside an option it fixes to another value says, or None."""
    for flag, fixed in FIXING_FLAGS.items():
        for dest, value in fixed.items():
            if flag in given and dest in given and getattr(args, dest) != value:
                return f"{flags[flag]} contradicts {flags[dest]} {getattr(args, dest)}"
    return None


def empty_path(args: argparse.Namespace, given: set[str], flags: dict[str, str]) -> str | None:
    """What an empty --resume, --run-dir or --name says (read as not given, an empty --resume
    started a new run), or None."""
    for dest in ("resume", "run_dir", "name"):
        if dest in given and not getattr(args, dest).strip():
            what = "a run name" if dest == "name" else "a run directory"
            return f"{flags[dest]} is empty: give {what}"
    return None


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
    flags = {action.dest: action.option_strings[0] for action in parser._actions}
    problem = contradiction(args, given, flags) or empty_path(args, given, flags)
    if problem:
        parser.error(problem)
    try:
        if args.resume:
            config = resumed_config(args, given, flags)
        else:
            config = config_from_args(args)
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

    from transformer.translation.checkpoint import CheckpointError, kept_checkpoint
    from transformer.translation.data import CorpusError
    from transformer.translation.training import train

    stop = StopRequest()
    try:
        with stop.on_signals():
            result = train(config, resume=bool(args.resume), stop=stop)
    except (CheckpointError, CorpusError, FileExistsError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in DISK_FULL or err.filename is None:
            raise
        written = Path(err.filename)  # metrics.jsonl, results.json, ...: in the run directory
        print(
            f"{parser.prog}: error: {written}: not written ({err.strerror}); "
            f"{kept_checkpoint(written.parent)}",
            file=sys.stderr,
        )
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
