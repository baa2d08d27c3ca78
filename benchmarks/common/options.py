"""The command-line options every benchmark script has, where its results go, and the doubling
lengths it sweeps."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from benchmarks.common.records import read_results, write_json
from transformer.translation.cli import HelpFormatter, positive_int

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"


def benchmark_parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by the script's docstring, with the --device option every script has."""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cuda", "cpu"),
        help="where to measure; auto: CUDA if present, else the CPU",
    )
    return parser


def add_cpu_and_output_arguments(
    parser: argparse.ArgumentParser, stem: str, memory_cap_mib: int, repeats_help: str
) -> None:
    """The CPU measurement and results-file options every script has."""
    parser.add_argument("--cpu-repeats", type=positive_int, default=3, help=repeats_help)
    parser.add_argument(
        "--cpu-memory-cap-mib",
        type=positive_int,
        default=memory_cap_mib,
        help="on the CPU, a point that needs more than this is recorded as out of memory",
    )
    add_output_arguments(parser, stem)


def directory(text: str) -> Path:
    """--out-dir's value as a path, or a usage error (before anything is measured) when it, or
    the nearest of its ancestors that exists, is not a directory: no results could go there."""
    path = Path(text)
    for part in (path, *path.parents):
        if os.path.exists(part):
            if os.path.isdir(part):
                return path
            where = "" if part == path else f": {part}"
            raise argparse.ArgumentTypeError(f"{text}{where} is a file, not a directory")
    return path


def add_output_arguments(
    parser: argparse.ArgumentParser,
    stem: str,
    per_device: bool = True,
    drawn: str = "the PNG and markdown",
) -> None:
    """Where the results go (--out-dir, --tag), and --replot. The files' stem: ``stem`` followed
    by the device kind (``per_device``), or ``stem`` itself (results the same on any device);
    ``drawn``: what the script draws from its JSON, as its help says it."""
    parser.add_argument(
        "--out-dir",
        type=directory,
        default=None,
        help=f"directory for the results: JSON, and {drawn} drawn from it; "
        f"default {RESULTS_DIR.parent.name}/{RESULTS_DIR.name}, or with --replot the JSON's own",
    )
    parser.add_argument(
        "--replot",
        type=Path,
        default=None,
        metavar="JSON",
        help=f"measure nothing: draw {drawn} again from a results file (e.g. "
        "one from a GPU), as --out-dir/--tag (default: beside it, under its name), with a copy "
        "of the JSON there when that is another file",
    )
    default = f"{stem}_<device kind>" if per_device else stem
    parser.add_argument(
        "--tag",
        default=None,
        help=f"file name stem; default {default}",
    )


def results_stem(args, default: str) -> Path:
    """Where a measuring run writes (its files' path without the suffix): --out-dir, resolved
    here to :data:`RESULTS_DIR` when not given (so the run's settings record it), and --tag, or
    ``default`` followed by ``_quick`` for a --quick run (not the full run's files)."""
    if args.out_dir is None:
        args.out_dir = RESULTS_DIR
    quick = "_quick" if getattr(args, "quick", False) else ""
    return args.out_dir / (args.tag or f"{default}{quick}")


def replot_stem(args) -> Path:
    """Where a --replot draws: --out-dir, else the JSON's own directory; --tag, else the JSON's
    name."""
    out_dir = args.replot.parent if args.out_dir is None else args.out_dir
    return out_dir / (args.tag or args.replot.stem)


def replot_payload(
    parser: argparse.ArgumentParser, args, benchmark: str
) -> tuple[dict, Path, bool]:
    """(payload, stem, JSON written) of a --replot: the results file it names, checked to be
    ``benchmark``'s (else a usage error), the stem to draw to (:func:`replot_stem`), and whether
    the JSON was copied there (when that is not the file itself, so the set of files is
    complete)."""
    payload = read_results(parser, args.replot, benchmark)
    stem = replot_stem(args)
    target = Path(f"{stem}.json")
    copy = target.resolve() != args.replot.resolve()
    if copy:
        write_json(target, payload)
    return payload, stem, copy


def doubling(start: int, stop: int) -> list[int]:
    """start, 2·start, 4·start, ... up to and including stop; ValueError unless 1 <= start <=
    stop (no length at all, or none to double)."""
    if start < 1:
        raise ValueError(f"the shortest length must be at least 1, got {start}")
    if start > stop:
        raise ValueError(f"the shortest length {start} is over the longest, {stop}")
    lengths = []
    n = start
    while n <= stop:
        lengths.append(n)
        n *= 2
    return lengths


def length_range(parser: argparse.ArgumentParser, args) -> list[int]:
    """The doubling lengths from --min-len to --max-len (defaults filled), or a usage error."""
    try:
        return doubling(args.min_len, args.max_len)
    except ValueError as err:
        parser.error(f"--min-len {args.min_len} / --max-len {args.max_len}: {err}")
