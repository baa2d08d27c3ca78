"""Peak memory and speed of one attention call against sequence length.

Implementations: the naive einops path (``attend(backend="naive")``), PyTorch SDPA pinned to
each of its backends in turn (flash, memory-efficient, cuDNN, math, via
``torch.nn.attention.sdpa_kernel``), and our Triton kernel (``attend(backend="triton")``).
For each head dim, causal or not, and length (doubling), it measures, in bfloat16:

* peak memory of the forward alone (under ``torch.no_grad``, i.e. inference) and of forward +
  backward, above the inputs;
* median time of the forward, the backward alone, and forward + backward, reported as TFLOP/s
  (``benchmarks.common.measure.attention_flops``) and, for our kernel, as a ratio to each SDPA backend of this run.

Memory is torch's allocations above the inputs, one measure for every implementation (on the
CPU: the blocks torch's CPU allocator hands out, read from ``torch.profiler``). An
implementation that runs out of memory at one length is not run at longer ones (recorded as
``skipped``). On a machine without a GPU, memory and time are measured on the CPU, one fresh
process per point; there our Triton kernel runs under Triton's interpreter, so its line is
"torch allocations under the interpreter" (its outputs, log-sum-exp and buffers, what it
allocates on a GPU) and its time is ``not_measurable``. The interpreter is slow (two fresh
processes a point, each interpreting the kernel; at 512 tokens, 4 heads, head dim 64, its
forward and backward take tens of seconds on two cores): on the CPU the kernel is measured up
to ``--interpreter-max-len`` (default 512), which keeps the default CPU run to a few minutes.

    python -m benchmarks.attention_benchmark             # defaults for this machine
    python -m benchmarks.attention_benchmark --help
    python benchmarks/attention_benchmark.py --help   # the same, run as a file

This module is the command line; one point is measured in ``attention_measure``, the sweep over
lengths and the ratios are in ``attention_sweep``, the PNG and markdown in ``attention_report``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python benchmarks/x.py): import from the repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.attention_measure import IMPLEMENTATIONS, memory_measure
from benchmarks.attention_report import report
from benchmarks.attention_sweep import ratios, sweep
from benchmarks.common.environment import device_tag, environment, pick_kernel_device
from benchmarks.common.options import (
    add_cpu_and_output_arguments,
    benchmark_parser,
    length_range,
    replot_payload,
    results_stem,
)
from benchmarks.common.records import settings_of, sweep_saving_each_point
from benchmarks.common.statuses import STATUSES
from transformer.translation.cli import nonnegative_int, positive_int


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__)
    parser.add_argument(
        "--impls",
        nargs="+",
        default=list(IMPLEMENTATIONS),
        choices=IMPLEMENTATIONS,
        help="implementations to compare",
    )
    parser.add_argument(
        "--head-dims",
        nargs="+",
        type=positive_int,
        default=[64, 128],
        help="head dimensions to measure",
    )
    parser.add_argument(
        "--causal", default="both", choices=("both", "no", "yes"), help="causal attention"
    )
    parser.add_argument(
        "--min-len",
        type=positive_int,
        default=128,
        help="shortest sequence length; doubled up to --max-len",
    )
    parser.add_argument(
        "--max-len", type=positive_int, default=None, help="default: 65536 on CUDA, 4096 on the CPU"
    )
    parser.add_argument(
        "--batch", type=positive_int, default=None, help="default: 2 on CUDA, 1 on CPU"
    )
    parser.add_argument(
        "--heads", type=positive_int, default=None, help="default: 16 on CUDA, 4 on CPU"
    )
    parser.add_argument(
        "--tokens",
        type=positive_int,
        default=None,
        help="FlashAttention's setting: batch = TOKENS // length at each length (e.g. 16384), "
        "so every length does about the same work; overrides --batch",
    )
    parser.add_argument(
        "--hidden",
        type=positive_int,
        default=None,
        help="FlashAttention's setting: heads = HIDDEN // head_dim (e.g. 2048); overrides --heads",
    )
    parser.add_argument(
        "--interpreter-max-len",
        type=nonnegative_int,
        default=512,
        help="on the CPU, the longest length at which our kernel's memory is measured under "
        "Triton's (slow) interpreter; longer points are recorded as skipped",
    )
    add_cpu_and_output_arguments(
        parser, "attention", 512, "timed runs per point on the CPU (median)"
    )
    return parser


def parse_args(argv=None, parser: argparse.ArgumentParser | None = None):
    return (parser or build_parser()).parse_args(argv)


def results_payload(args, env: dict, records: list[dict], partial: bool) -> dict:
    """The results file's content; ``partial``: written after a point, more are to come (a run
    stopped midway leaves its last such file)."""
    settings = settings_of(args)
    return {
        "benchmark": "attention",
        "partial": partial,
        "environment": env,
        "settings": settings,
        "conventions": {
            "memory": "peak bytes torch allocated above the inputs (q, k, v and the output "
            "gradient) during the call; forward runs under torch.no_grad. On CUDA "
            "torch.cuda.max_memory_allocated; on the CPU the blocks torch's CPU allocator hands "
            "out during the call, each from its allocation to its free (torch.profiler, "
            "profile_memory=True), not what libraries allocate past torch. On the CPU our "
            "Triton kernel runs under the Triton interpreter: its line is torch allocations "
            "under the interpreter (outputs, log-sum-exp, buffers: what it allocates on a GPU), "
            "not the interpreter's numpy arrays",
            "memory_measure": {
                impl: memory_measure(impl, env["device_type"]) for impl in args.impls
            },
            "flops": "forward 4*batch*heads*len_q*len_k*head_dim, halved when causal; "
            "backward 2.5x forward; forward+backward 3.5x",
            "time": "median milliseconds after warm-up (triton.testing.do_bench on CUDA, "
            "wall clock on the CPU)",
            "point_seconds": "wall seconds the point took, all its measurements together",
            "statuses": list(STATUSES),
        },
        "records": records,
        "ratios": ratios(records),
    }


def main(argv=None) -> dict:
    parser = build_parser()
    args = parse_args(argv, parser)
    if args.replot is not None:
        payload, stem, copied = replot_payload(parser, args, "attention")
        report(payload, stem, wrote_json=copied)
        return payload
    device = pick_kernel_device(args.device)
    cuda = device.type == "cuda"
    args.max_len = args.max_len or (65536 if cuda else 4096)
    args.batch = args.batch or (2 if cuda else 1)
    args.heads = args.heads or (16 if cuda else 4)
    args.lengths = length_range(parser, args)
    args.causal_modes = {"both": [False, True], "no": [False], "yes": [True]}[args.causal]
    stem = results_stem(args, f"attention_{device_tag(device)}")
    torch.set_num_threads(1)
    env = environment(device)
    payload = sweep_saving_each_point(
        stem,
        lambda on_point: sweep(args, device, on_point),
        lambda records, partial: results_payload(args, env, records, partial),
    )
    report(payload, stem)
    return payload


if __name__ == "__main__":
    main()
