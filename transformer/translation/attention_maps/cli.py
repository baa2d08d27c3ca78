"""The command line: ``python -m transformer.translation.attention_maps --help``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from transformer.translation.attention_maps.drawing import output_problem, plot_map
from transformer.translation.attention_maps.inputs import KINDS, check_layer_head
from transformer.translation.attention_maps.sentence import sentence_map, write_csv, write_json
from transformer.translation.attention_maps.weights import METHODS
from transformer.translation.checkpoint import CheckpointError
from transformer.translation.cli import HelpFormatter, device_problem, prepare_output
from transformer.translation.evaluation import DEFAULT_LENGTH_PENALTY
from transformer.translation.text_input import ERRORS, BadInput, argument_text
from transformer.translation.tokenizer import decode
from transformer.translation.translate import Translator


def usable_text(parser: argparse.ArgumentParser, value: str, option: str, errors: str) -> str:
    """The argument ``value`` of ``option`` as text, or exit with status 1 (the text could not
    be used) naming the problem: not UTF-8 (unless ``errors`` is replace), or blank, control
    characters included (they are read as spaces). Checked before the checkpoint is loaded."""
    try:
        text, notes = argument_text(value, option, errors)
    except BadInput as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")
    for note in notes:
        print(f"{parser.prog}: warning: {option}: {note}", file=sys.stderr)
    if not text.strip():
        parser.exit(1, f"{parser.prog}: error: {option} is empty\n")
    return text


def fitted_text(
    parser: argparse.ArgumentParser, translator: Translator, text: str, option: str
) -> str:
    """``text``, or, when it is longer than the model's ``max_length`` tokens, the first part
    :meth:`Translator.encode` makes of it (at most ``max_length`` tokens, ending at a word
    boundary), with a warning."""
    (parts,) = translator.encode([text])
    if len(parts) <= 1:
        return text
    kept = decode(translator.tokenizer, parts[:1])[0]
    print(
        f"{parser.prog}: warning: {option} has {sum(map(len, parts))} tokens, longer than the "
        f"{translator.max_length} the model takes (--max-length); drawn for its first "
        f"{len(parts[0])} tokens only (cut at a word boundary), up to {kept[-30:]!r}",
        file=sys.stderr,
    )
    return kept


def same_file_outputs(args: argparse.Namespace) -> str | None:
    """Which two of --output, --json and --csv name the same file (one would overwrite the
    other), or None."""
    seen = {}
    for option in ("output", "json", "csv"):
        path = getattr(args, option)
        if not path:
            continue
        resolved = Path(path).resolve()
        if resolved in seen:
            return f"{seen[resolved]} and --{option} {path} are the same file"
        seen[resolved] = f"--{option} {path}"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m transformer.translation.attention_maps",
        formatter_class=HelpFormatter,
        description=(
            "Translate one sentence with a trained checkpoint and draw the attention weights the "
            "model used, teacher-forced on its own translation, as a heat map PNG (and, if "
            "asked, JSON/CSV). Layers and heads are numbered from 0; negative numbers count "
            "from the end."
        ),
        epilog="Exit status: 0 the map was written; 1 the run directory or a text could not be "
        "used (one line on stderr says why); 2 a wrong option.",
    )
    parser.add_argument(
        "--checkpoint", required=True, metavar="RUN_DIR", help="run directory written by train.py"
    )
    parser.add_argument("--sentence", required=True, help="the source (German) sentence")
    parser.add_argument(
        "--output",
        default="attention.png",
        help="the heat map's file; its extension picks the format: .png, .pdf, .svg, ... "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--kind",
        choices=KINDS,
        default="cross",
        help="cross: generated tokens (rows) over source tokens (columns); encoder: source "
        "self-attention; decoder: causal self-attention over <s> + translation "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--layer", type=int, default=None, help="one layer (default: the mean over all layers)"
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--head", type=int, default=None, help="one head (default: the mean over all heads)"
    )
    group.add_argument(
        "--grid",
        action="store_true",
        help="one map per head instead of a mean: a row of heads for --layer, or a grid of "
        "layers x heads without it",
    )
    parser.add_argument(
        "--pieces",
        action="store_true",
        help="draw the BPE pieces the model reads (▁Frau, Schnee, .) instead of words (Frau, "
        "Schnee.), whose weights merge their pieces' (source pieces summed, target pieces "
        "averaged)",
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        default="naive",
        help="naive: the model's own einops weights; flash: rebuilt from the Triton kernel's "
        "log-sum-exp (on the CPU under TRITON_INTERPRET=1, set for you) (default: %(default)s)",
    )
    parser.add_argument(
        "--translation",
        default=None,
        help="draw the map for this translation instead of the model's own (e.g. a reference)",
    )
    parser.add_argument(
        "--beam-size",
        type=int,
        default=4,
        help="beam width; 1 decodes greedily (default: %(default)s)",
    )
    parser.add_argument(
        "--length-penalty",
        type=float,
        default=DEFAULT_LENGTH_PENALTY,
        help="GNMT length penalty alpha of the beam search (default: %(default)s)",
    )
    parser.add_argument(
        "--which",
        choices=("best", "last", "average"),
        default="best",
        help="which checkpoint of the run; best falls back to last while the run has no best; "
        "average: the averaged weights (python -m transformer.translation.average) (default: %(default)s)",
    )
    parser.add_argument("--json", default=None, help="also write the weights as JSON here")
    parser.add_argument(
        "--csv",
        default=None,
        help="also write the weights as CSV here (columns: units (words or pieces), layer, "
        "head, query_index, query_token, key_index, key_token, weight)",
    )
    parser.add_argument(
        "--dpi", type=int, default=100, help="PNG resolution (default: %(default)s)"
    )
    parser.add_argument(
        "--device", default="cpu", help="torch device to run the model on (default: %(default)s)"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch")
    parser.add_argument(
        "--errors",
        choices=ERRORS,
        default="strict",
        help="what to do with a --sentence or --translation that is not valid UTF-8: strict "
        "stops with a message; replace puts U+FFFD in place of each bad byte sequence and says so "
        "on stderr",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="longest --sentence or --translation, in tokens; a longer one is cut at a word "
        "boundary to at most this many tokens, with a warning (default: the max_length the run "
        "trained with, in its config.json)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.beam_size < 1:
        parser.error(f"--beam-size must be >= 1, got {args.beam_size}")
    if args.max_length is not None and args.max_length < 1:
        parser.error(f"--max-length must be >= 1, got {args.max_length}")
    if args.dpi < 1:
        parser.error(f"--dpi must be >= 1, got {args.dpi}")
    problem = output_problem(args.output)
    if problem:
        parser.error(f"--output {problem}")
    problem = same_file_outputs(args)
    if problem:
        parser.error(problem)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    problem = device_problem(args.device)
    if problem:
        parser.error(problem)
    if not torch.cuda.is_available():
        # The flash method, or a model trained with backend "triton", runs the kernel; on the
        # CPU only under the interpreter, which triton reads when it is first imported.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    sentence = usable_text(parser, args.sentence, "--sentence", args.errors)
    translation = args.translation
    if translation is not None:
        translation = usable_text(parser, translation, "--translation", args.errors)

    try:
        translator = Translator(args.checkpoint, args.which, args.device, args.max_length)
    except (CheckpointError, ValueError, OSError) as err:
        parser.exit(1, f"{parser.prog}: error: cannot load --checkpoint {args.checkpoint}: {err}\n")
    model, tokenizer = translator.model, translator.tokenizer
    sentence = fitted_text(parser, translator, sentence, "--sentence")
    if translation is not None:
        translation = fitted_text(parser, translator, translation, "--translation")
    try:
        check_layer_head(model, args.kind, args.layer, args.head)
        result = sentence_map(
            model,
            tokenizer,
            sentence,
            kind=args.kind,
            layer=args.layer,
            head=args.head,
            grid=args.grid,
            method=args.method,
            beam_size=args.beam_size,
            length_penalty=args.length_penalty,
            translation=translation,
            units="pieces" if args.pieces else "words",
        )
    except ValueError as err:
        parser.error(str(err))
    for option in ("output", "json", "csv"):
        path = getattr(args, option)
        problem = path and prepare_output(path, f"--{option}")  # makes its directory
        if problem:
            parser.error(problem)
    plot_map(result, args.output, dpi=args.dpi)
    written = [args.output]
    if args.json:
        write_json(result, args.json)
        written.append(args.json)
    if args.csv:
        write_csv(result, args.csv)
        written.append(args.csv)
    print(f"{result.source}\n→ {result.translation}", file=sys.stderr)
    print("wrote " + ", ".join(written), file=sys.stderr)
