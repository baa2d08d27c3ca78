"""Translate German to English with a trained run: ``python -m transformer.translation.translate --checkpoint RUN_DIR``.

Reads one sentence a line from stdin (or ``--input``), writes one translation a line to stdout
(or ``--output``), in the same order; an empty line gives an empty line. Sentences are decoded in
length-sorted batches. The run directory's ``best.json`` checkpoint is used (``last.json`` if the
run has no best yet, or with ``--which last``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from transformer.config import ModelConfig
from transformer.model import Transformer
from transformer.translation.checkpoint import CheckpointError, load_checkpoint
from transformer.translation.cli import HelpFormatter, device_problem, prepare_output
from transformer.translation.evaluation import DEFAULT_LENGTH_PENALTY, translate_ids
from transformer.translation.tokenizer import decode, encode, load_tokenizer


class Translator:
    """A model and its tokenizer loaded from a run directory, ready to translate text."""

    def __init__(self, run_dir: str | Path, which: str = "best", device: str = "cpu") -> None:
        run_dir = Path(run_dir)
        if which == "best" and not (run_dir / "best.json").is_file():
            which = "last"
        checkpoint = load_checkpoint(run_dir, which)
        try:
            config = ModelConfig(**checkpoint.model_config)
        except (TypeError, ValueError) as err:
            raise CheckpointError(
                f"{run_dir}: incompatible model config in {which}.json ({err})"
            ) from None
        self.model = Transformer(config)
        checkpoint.load_weights(self.model)
        self.model.to(device).eval()
        self.tokenizer = load_tokenizer(run_dir / checkpoint.meta["tokenizer"])
        self.step = checkpoint.meta["step"]

    def translate(
        self,
        sentences: list[str],
        beam_size: int = 4,
        length_penalty: float = DEFAULT_LENGTH_PENALTY,
        max_tokens: int = 6000,
    ) -> list[str]:
        """Translations of ``sentences`` in order; blank input lines give empty strings."""
        stripped = [s.strip() for s in sentences]
        ids = encode(self.tokenizer, stripped)
        ids = [x if s else [] for x, s in zip(ids, stripped, strict=True)]
        out = translate_ids(self.model, ids, beam_size, length_penalty, max_tokens)
        return [
            text if s else "" for text, s in zip(decode(self.tokenizer, out), stripped, strict=True)
        ]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m transformer.translation.translate",
        description="Translate sentences (one a line) with a run directory written by train.py.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--checkpoint", required=True, metavar="RUN_DIR", help="run directory written by train.py"
    )
    p.add_argument(
        "--which",
        choices=["best", "last", "average"],
        default="best",
        help="which checkpoint of the run (average: written by python -m transformer.translation.average "
        "or train.py --average-last)",
    )
    p.add_argument("--input", help="file of source sentences (default: stdin)")
    p.add_argument("--output", help="file for the translations (default: stdout)")
    p.add_argument("--beam-size", type=int, default=4, help="beam size; 1 = greedy")
    p.add_argument(
        "--length-penalty",
        type=float,
        default=DEFAULT_LENGTH_PENALTY,
        help="GNMT length penalty alpha",
    )
    p.add_argument(
        "--max-tokens", type=int, default=6000, help="source tokens per batch, all beams counted"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.beam_size < 1:
        parser.error(f"--beam-size must be >= 1, got {args.beam_size}")
    if args.max_tokens < 1:
        parser.error(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if args.input is not None and not Path(args.input).is_file():
        parser.error(f"--input {args.input}: no such file")
    problem = device_problem(args.device)
    if problem:
        parser.error(problem)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        translator = Translator(args.checkpoint, args.which, args.device)
    except (CheckpointError, ValueError) as err:
        parser.error(str(err))
    if args.output is not None:
        problem = prepare_output(args.output, "--output")  # makes its directory
        if problem:
            parser.error(problem)
    if args.input is None:
        lines = sys.stdin.read().splitlines()
    else:
        lines = Path(args.input).read_text(encoding="utf-8").splitlines()
    translations = translator.translate(lines, args.beam_size, args.length_penalty, args.max_tokens)
    text = "".join(t + "\n" for t in translations)
    if args.output is None:
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
