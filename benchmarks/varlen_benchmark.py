"""Memory of packed sequences against padded ones, at growing total lengths.

A batch of sequences of different lengths (``--batch`` of them, lengths drawn uniformly from
1 to L with a fixed seed, L doubling from ``--min-len`` to ``--max-len``) runs one training
step of self-attention through the flash kernel in two ways:

* packed: ``flash_attn_varlen_func`` on (total, heads, head_dim) tensors with cumulative
  lengths, no padding anywhere;
* padded: ``flash_attention`` on (batch, heads, L, head_dim) tensors padded to the longest
  sequence, with a (batch, 1, 1, L) key-padding mask.

What is counted: the bytes of the distinct tensors the kernel launches of the forward and the
backward read and write -- q, k, v and the output's gradient (the inputs), the key-padding
mask (padded only), the output, the log-sum-exp, the backward's delta and dlse rows, and dq,
dk, dv. They are taken from the launches themselves (a :class:`kernels.common.runtime.Hook`
records every launch's tensor arguments) made by the kernel's own launchers on ``meta``
tensors: nothing is allocated or run, so the figures are what those launches take through
torch on any device (a GPU's included), at lengths the CPU could never run, and they do not
depend on the machine. Not counted: the copies a caller makes to pad or pack its batch, and
the caching allocator's rounding.

    python -m benchmarks.varlen_benchmark     # writes benchmarks/results/varlen_memory.{json,png}
    python -m benchmarks.varlen_benchmark --help
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python benchmarks/x.py): import from the repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common.environment import environment
from benchmarks.common.options import (
    add_output_arguments,
    benchmark_parser,
    length_range,
    replot_payload,
    results_stem,
)
from benchmarks.common.plotting import format_length
from benchmarks.common.records import provenance, settings_of, write_json, wrote
from kernels.common import warm
from kernels.flash_attention import launcher
from kernels.flash_attention.varlen import Packed
from transformer.translation.cli import positive_int

MIB = 2**20


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--batch", type=positive_int, default=16, help="sequences per batch")
    parser.add_argument(
        "--heads", type=positive_int, default=16, help="attention heads (q, k and v)"
    )
    parser.add_argument("--head-dim", type=positive_int, default=64, help="head dimension")
    parser.add_argument(
        "--dtype", default="bfloat16", choices=("float16", "bfloat16", "float32"), help="q, k, v"
    )
    parser.add_argument("--causal", action="store_true", help="causal attention")
    parser.add_argument(
        "--min-len",
        type=positive_int,
        default=128,
        help="longest sequence of the first batch; doubled",
    )
    parser.add_argument(
        "--max-len", type=positive_int, default=32768, help="up to this longest sequence"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawn lengths")
    add_output_arguments(parser, "varlen_memory", per_device=False, drawn="the PNG")
    return parser


def parse_args(argv=None, parser: argparse.ArgumentParser | None = None):
    return (parser or build_parser()).parse_args(argv)


def launch_bytes(run) -> int:
    """Bytes of the distinct storages the kernel launches made by ``run()`` read or write
    (each counted once however many launches and views share it); nothing is launched."""
    with warm.recording("first", arch=90) as launches:  # the launches hold their tensors
        run()
    storages = {
        arg.untyped_storage()._cdata: arg.untyped_storage().nbytes()
        for launch in launches
        for arg in launch.args
        if isinstance(arg, torch.Tensor)
    }
    return sum(storages.values())


def training_step(q, k, v, mask, causal, packed=None) -> None:
    """The launches of one forward and backward, through the kernel's launchers."""
    scale = q.shape[-1] ** -0.5
    out, lse = launcher.launch_forward(q, k, v, mask, causal, scale, packed=packed)
    dout = torch.empty_like(out)
    launcher.launch_backward(
        q, k, v, mask, causal, scale, out, lse, dout, None, False, packed=packed
    )


def measure_point(lengths: list[int], args) -> dict:
    """Packed and padded bytes for one batch of sequence lengths."""
    dtype, heads, dim = getattr(torch, args.dtype), args.heads, args.head_dim
    total, longest, batch = sum(lengths), max(lengths), len(lengths)

    def meta(*shape, kind=dtype):
        return torch.empty(shape, dtype=kind, device="meta")

    cu = meta(batch + 1, kind=torch.int32)
    packed = Packed(cu, cu, longest, longest)
    q, k, v = (meta(total, heads, dim) for _ in range(3))
    packed_bytes = launch_bytes(lambda: training_step(q, k, v, None, args.causal, packed))
    q, k, v = (meta(batch, heads, longest, dim) for _ in range(3))
    mask = meta(batch, 1, 1, longest, kind=torch.bool)
    padded_bytes = launch_bytes(lambda: training_step(q, k, v, mask, args.causal))
    return {
        "max_len": longest,
        "total_tokens": total,
        "padded_tokens": batch * longest,
        "packed_bytes": packed_bytes,
        "padded_bytes": padded_bytes,
        "padded_over_packed": padded_bytes / packed_bytes,
    }


def draw_lengths(args) -> list[list[int]]:
    """For each longest length L (``args.lengths``): ``--batch`` lengths uniform in [1, L], the
    last one L."""
    gen = torch.Generator().manual_seed(args.seed)
    batches = []
    for longest in args.lengths:
        lengths = torch.randint(1, longest + 1, (args.batch - 1,), generator=gen).tolist()
        batches.append([*lengths, longest])
    return batches


def plot(payload: dict, stem: Path) -> None:
    """Bytes against the packed total length, packed and padded, on log-log axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = payload["records"]
    xs = [r["total_tokens"] for r in records]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for key, label in (("packed_bytes", "packed (varlen)"), ("padded_bytes", "padded + key mask")):
        ax.plot(xs, [r[key] / MIB for r in records], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(format_length_formatter())
    ax.set_xlabel("tokens in the batch (packed total)")
    ax.set_ylabel("MiB the launches touch (forward + backward)")
    s = payload["settings"]
    ax.set_title(
        f"flash kernel, batch {s['batch']}, {s['heads']} heads x {s['head_dim']}, {s['dtype']}"
        f"{', causal' if s['causal'] else ''}",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(f"{stem}.png", dpi=120)
    plt.close(fig)


def format_length_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(format_length)


def report(payload: dict, stem: Path, wrote_json: bool = True) -> None:
    """Write ``stem``.png from a results payload and print its figures; then what was written
    (``wrote_json``: ``stem``.json too)."""
    plot(payload, stem)
    print(provenance(payload["environment"]) + "\n")
    for r in payload["records"]:
        print(
            f"max_len {r['max_len']:6d} tokens {r['total_tokens']:7d}: packed "
            f"{r['packed_bytes'] / MIB:9.1f} MiB, padded {r['padded_bytes'] / MIB:9.1f} MiB "
            f"({r['padded_over_packed']:.2f}x)"
        )
    print("\n" + wrote(stem, [".json"] * wrote_json + [".png"]))


def main(argv=None) -> dict:
    parser = build_parser()
    args = parse_args(argv, parser)
    if args.replot is not None:
        payload, stem, copied = replot_payload(parser, args, "varlen")
        report(payload, stem, wrote_json=copied)
        return payload
    args.lengths = length_range(parser, args)
    stem = results_stem(args, "varlen_memory")
    records = [measure_point(lengths, args) for lengths in draw_lengths(args)]
    settings = settings_of(args)
    payload = {
        "benchmark": "varlen",
        "environment": environment(torch.device("cpu")),
        "settings": settings,
        "conventions": {
            "bytes": "distinct storages the kernel launches of one forward and backward read "
            "and write, from the launch hook on meta tensors (the same on any device)",
            "total_tokens": "the batch's tokens packed; padded_tokens = batch x max_len",
        },
        "records": records,
    }
    write_json(Path(f"{stem}.json"), payload)
    report(payload, stem)
    return payload


if __name__ == "__main__":
    main()
