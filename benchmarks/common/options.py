"""The command-line options every benchmark script has, where its results go, and the doubling
lengths it sweeps."""

from __future__ import annotations

import argparse
from pathlib import Path

from transformer.translation.cli import HelpFormatter

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
    parser.add_argument("--cpu-repeats", type=int, default=3, help=repeats_help)
    parser.add_argument(
        "--cpu-memory-cap-mib",
        type=int,
        default=memory_cap_mib,
        help="on the CPU, a point that needs more than this is recorded as out of memory",
    )
    add_output_arguments(parser, stem)


def add_output_arguments(
    parser: argparse.ArgumentParser,
    stem: str,
    per_device: bool = True,
) -> None:
    """Where the results go (--out-dir, --tag), and --replot. The files' stem: ``stem`` followed
    by the device kind (``per_device``), or ``stem`` itself (results the same on any device)."""
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=RESULTS_DIR,
        help="directory for the results: JSON, and the PNG (and markdown) drawn from it",
    )
    parser.add_argument(
        "--replot",
        type=Path,
        default=None,
        metavar="JSON",
        help="measure nothing: draw the PNG (and markdown) again from a results file (e.g. "
        "one from a GPU)",
    )
    if per_device:
        parser.add_argument(
            "--tag", default=None, help=f"file name stem; default {stem}_<device kind>"
        )
    else:
        parser.add_argument("--tag", default=stem, help="file name stem")


def doubling(start: int, stop: int) -> list[int]:
    """start, 2·start, 4·start, ... up to and including stop."""
    lengths = []
    n = start
    while n <= stop:
        lengths.append(n)
        n *= 2
    return lengths
