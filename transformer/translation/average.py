"""Average the weights of a run's last checkpoints, as fairseq's and JoeyNMT's
``average_checkpoints`` do: ``python -m transformer.translation.average --checkpoint RUN_DIR [--last N]``.

The mean of the last few checkpoints of a run usually translates a little better than any one
of them. The average is written as ``checkpoints/average-<first step>-<last step>/`` with the
pointer ``average.json`` (atomically, like every checkpoint), so that
``python -m transformer.translation.translate --checkpoint RUN_DIR --which average`` uses it. Training does
the same at its end with ``--average-last N`` and makes the average ``best`` when it scores a
higher validation BLEU.

A run keeps its last N checkpoints only when it was trained with ``--average-last N`` (otherwise
it keeps one, the last, besides the best): ``last.json`` lists the kept ones under ``recent``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from transformer.translation.checkpoint import (
    MODEL_FILE,
    Checkpoint,
    CheckpointError,
    RunDirInUse,
    hold_run_dir,
    load_checkpoint,
    load_recent,
    save_weights,
)
from transformer.translation.cli import HelpFormatter


def average_weights(
    weights: Sequence[dict[str, torch.Tensor]], names: Sequence[str]
) -> dict[str, torch.Tensor]:
    """The element-wise mean of state dicts with the same tensor names, shapes and dtypes;
    accumulated in float64, returned in each tensor's own dtype. ``names`` label the state
    dicts in the error raised when they do not match."""
    if not weights:
        raise ValueError("nothing to average")
    first, first_name = weights[0], names[0]
    for other, name in zip(weights[1:], names[1:], strict=True):
        if set(other) != set(first):
            differ = sorted(set(other) ^ set(first))
            raise CheckpointError(
                f"cannot average {first_name} and {name}: different tensors ({differ[:5]} "
                "are in one and not the other)"
            )
        for key, tensor in first.items():
            if other[key].shape != tensor.shape or other[key].dtype != tensor.dtype:
                raise CheckpointError(
                    f"cannot average {first_name} and {name}: {key} is "
                    f"{tuple(tensor.shape)} {tensor.dtype} in one and "
                    f"{tuple(other[key].shape)} {other[key].dtype} in the other"
                )
    return {
        key: (sum(w[key].double() for w in weights) / len(weights)).to(tensor.dtype)
        for key, tensor in first.items()
    }


def save_average(
    run_dir: str | Path, checkpoints: Sequence[Checkpoint], extra_meta: dict[str, Any] | None = None
) -> Checkpoint:
    """Average ``checkpoints`` (of one run) and save the result under ``average.json``."""
    run_dir = Path(run_dir)
    paths = [c.directory / MODEL_FILE for c in checkpoints]
    weights = [load_file(path) for path in paths]
    averaged = average_weights(weights, [str(path) for path in paths])
    with safe_open(paths[-1], framework="pt") as f:
        file_metadata = f.metadata()  # names of tied weights stored once, as save_model wrote
    steps = [c.meta["step"] for c in checkpoints]
    meta = {
        "step": steps[-1],
        "averaged_steps": steps,
        "model_config": checkpoints[-1].model_config,
        "tokenizer": checkpoints[-1].meta.get("tokenizer"),
        "val": None,
        **(extra_meta or {}),
    }
    name = f"average-{steps[0]:08d}-{steps[-1]:08d}"
    save_weights(run_dir, name, averaged, meta, pointers=("average",), file_metadata=file_metadata)
    return load_checkpoint(run_dir, "average")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m transformer.translation.average",
        description="Average the weights of a run's last checkpoints into "
        "RUN_DIR/checkpoints/average-<first>-<last>/ and point RUN_DIR/average.json at it "
        "(translate with --which average).",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--checkpoint", required=True, metavar="RUN_DIR", help="run directory written by train.py"
    )
    p.add_argument(
        "--last",
        type=int,
        default=5,
        help="how many of the newest kept checkpoints to average (a run keeps N of them when "
        "trained with --average-last N)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.last < 2:
        parser.error(f"--last must be at least 2, got {args.last}")
    try:
        checkpoints = load_recent(args.checkpoint, args.last)
        if len(checkpoints) < 2:
            parser.error(
                f"{args.checkpoint} keeps only {len(checkpoints)} recent checkpoint: train with "
                "--average-last N to keep the last N"
            )
        with hold_run_dir(args.checkpoint):  # not while train.py writes the run
            averaged = save_average(args.checkpoint, checkpoints)
    except (CheckpointError, RunDirInUse) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    steps = ", ".join(str(s) for s in averaged.meta["averaged_steps"])
    if len(checkpoints) < args.last:
        print(f"only {len(checkpoints)} checkpoints are kept; averaged those", file=sys.stderr)
    print(f"averaged steps {steps} into {averaged.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
