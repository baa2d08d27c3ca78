"""Sliding-window attention against full attention at growing lengths: O(n·w) against O(n²).

Our kernel with a window of w keys (``flash_attention(q, k, v, is_causal=True,
window_size=(w, 0))``: query i sees keys i - w .. i; with ``--causal no``, ``(w, w)``: keys
i - w .. i + w) never visits the key blocks wholly outside the window, so at a fixed w its time
grows linearly with the length n, while full attention's grows with n². For each length
(doubling) it times the forward and forward + backward of both, in one run, and reports the
ratio window / full per length and pass beside the ideal one, the fraction of (query, key)
pairs inside the window (the kernel works in blocks, 64 x 64 under the interpreter, so it
visits more than that, most at short lengths).

On a GPU the time is ``triton.testing.do_bench``'s median (and TFLOP/s counted over the pairs
each one computes). On the CPU the kernel runs under Triton's interpreter, in this process
(``TRITON_INTERPRET=1``), and the time is the interpreter's wall clock: meaningless as speed,
but it grows with the blocks visited, so the ratio shows the blocks skipped. The goal: under
the interpreter, a window of 64 at 1,024 tokens costs at most a third of full attention. The
CPU default (lengths 256 to 1024, one head) should take a few minutes on two
idle cores; ``--quick`` (tiny sizes, seconds) only checks that it runs.

    python -m benchmarks.window_benchmark             # defaults for this machine
    python -m benchmarks.window_benchmark --quick     # a smoke run
    python -m benchmarks.window_benchmark --help
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python benchmarks/x.py): import from the repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from tqdm import tqdm

from benchmarks.common.environment import device_tag, environment, pick_kernel_device
from benchmarks.common.measure import PASS_FLOP_FACTOR, median_ms
from benchmarks.common.options import (
    add_output_arguments,
    benchmark_parser,
    length_range,
    replot_payload,
    results_stem,
)
from benchmarks.common.plotting import log_axes, plot_series
from benchmarks.common.records import (
    format_cell,
    markdown_table,
    settings_of,
    sweep_saving_each_point,
    write_csv,
    write_markdown,
    wrote,
)
from benchmarks.common.statuses import STATUSES, failure
from transformer.translation.cli import positive_int

VARIANTS = ("full", "window")
PASSES = ("forward", "forward_backward")
PASS_LABELS = {"forward": "forward", "forward_backward": "forward + backward"}
STYLES = {
    ("full", "forward"): dict(color="tab:red", marker="o", linestyle="-"),
    ("full", "forward_backward"): dict(color="tab:red", marker="o", linestyle="--"),
    ("window", "forward"): dict(color="tab:green", marker="*", linestyle="-", markersize=9),
    ("window", "forward_backward"): dict(
        color="tab:green", marker="*", linestyle="--", markersize=9
    ),
}
QUICK = dict(min_len=64, max_len=128, window=16, head_dim=16, heads=1, batch=1, cpu_repeats=1)


# --- what is measured ---------------------------------------------------------------------------


def window_size(args) -> tuple[int, int]:
    """The window as ``flash_attention`` takes it: (left, right), right 0 when causal."""
    return (args.window, 0 if args.causal else args.window)


def pairs(seq_len: int, size: tuple[int, int] | None, causal: bool) -> int:
    """(query, key) pairs a query of a (seq_len x seq_len) call sees: with ``size`` (left,
    right; -1 unbounded), keys i - left .. i + right; causal, none past i."""
    i = torch.arange(seq_len)
    left, right = size if size is not None else (-1, -1)
    low = (i - left).clamp(min=0) if left >= 0 else torch.zeros_like(i)
    high = torch.full_like(i, seq_len - 1)
    if right >= 0:
        high = (i + right).clamp(max=seq_len - 1)
    if causal:
        high = torch.minimum(high, i)
    return int((high - low + 1).clamp(min=0).sum())


def attention_call(variant: str, args):
    """``call(q, k, v) -> out``: our kernel, full or over the window."""
    from kernels import flash_attention

    if variant == "full":
        return lambda q, k, v: flash_attention(q, k, v, is_causal=args.causal)
    size = window_size(args)
    return lambda q, k, v: flash_attention(q, k, v, is_causal=args.causal, window_size=size)


def measure(variant: str, seq_len: int, pass_: str, args, device: torch.device) -> dict:
    """The median time of one pass of one variant at one length, or its failure."""
    dtype = getattr(torch, args.dtype)
    shape = (args.batch, args.heads, seq_len, args.head_dim)
    generator = torch.Generator(device=device).manual_seed(0)
    q, k, v, dout = (
        torch.randn(shape, generator=generator, device=device, dtype=dtype) for _ in range(4)
    )
    for t in (q, k, v):
        t.requires_grad_(pass_ == "forward_backward")
    call = attention_call(variant, args)

    def forward():
        with torch.no_grad():
            call(q, k, v)

    fn = forward if pass_ == "forward" else (lambda: call(q, k, v).backward(dout))
    try:
        ms = median_ms(fn, device, [q, k, v], args.cpu_repeats)
    except Exception as err:  # noqa: BLE001
        return failure(err)
    record = {"status": "ok", "median_ms": ms}
    if device.type == "cuda":
        size = window_size(args) if variant == "window" else None
        flops = 4.0 * args.batch * args.heads * pairs(seq_len, size, args.causal) * args.head_dim
        record["tflops"] = flops * PASS_FLOP_FACTOR[pass_] / ms / 1e9
    return record


def sweep(args, device: torch.device, on_point=None) -> list[dict]:
    """Every point's record; ``on_point(records so far)`` after each point (the benchmark
    writes its results file then, so a run stopped midway keeps every finished point)."""
    records = []
    progress = tqdm(total=len(args.lengths) * len(VARIANTS) * len(PASSES), desc="window")
    for seq_len in args.lengths:
        for variant in VARIANTS:
            for pass_ in PASSES:
                progress.set_postfix_str(f"{variant} len={seq_len} {pass_}")
                size = window_size(args) if variant == "window" else (-1, -1)
                record = measure(variant, seq_len, pass_, args, device)
                records.append(
                    dict(variant=variant, seq_len=seq_len, window_size=list(size),
                         causal=args.causal, **{"pass": pass_}, **record)
                )  # fmt: skip
                progress.update()
                if on_point is not None:
                    on_point(records)
    progress.close()
    return records


def ratios(records: list[dict], args) -> list[dict]:
    """Per length and pass: window / full, measured in this run, and the ideal (pairs)."""
    timed = {(r["variant"], r["seq_len"], r["pass"]): r for r in records if r["status"] == "ok"}
    out = []
    for seq_len in args.lengths:
        for pass_ in PASSES:
            full, window = (
                timed.get(("full", seq_len, pass_)),
                timed.get(("window", seq_len, pass_)),
            )
            if full is None or window is None:
                continue
            in_window = pairs(seq_len, window_size(args), args.causal)
            out.append(
                dict(seq_len=seq_len, window=args.window, causal=args.causal,
                     **{"pass": pass_}, full_ms=full["median_ms"], window_ms=window["median_ms"],
                     ratio=window["median_ms"] / full["median_ms"],
                     pairs_ratio=in_window / pairs(seq_len, None, args.causal))
            )  # fmt: skip
    return out


# --- reporting ----------------------------------------------------------------------------------


def time_label(env: dict) -> str:
    if env["device_type"] == "cuda":
        return "median time (ms)"
    return "interpreter time (ms), not speed"


def plot(payload: dict, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env, records = payload["environment"], payload["records"]
    fig, (times, ratio_ax) = plt.subplots(1, 2, figsize=(11, 4.8))
    plotted = False
    for variant in VARIANTS:
        for pass_ in PASSES:
            by_length = {r["seq_len"]: r for r in records
                         if (r["variant"], r["pass"]) == (variant, pass_)}  # fmt: skip
            name = f"window {args.window}" if variant == "window" else "full"
            style = {**STYLES[variant, pass_], "label": f"{name}, {PASS_LABELS[pass_]}"}
            plotted |= plot_series(times, args.lengths, by_length, "median_ms", style)
    log_axes(times, plotted)
    times.set_title(time_label(env), fontsize=11)
    plotted = False
    for pass_ in PASSES:
        mine = {
            r["seq_len"]: {**r, "status": "ok"} for r in payload["ratios"] if r["pass"] == pass_
        }
        style = {**STYLES["window", pass_], "label": f"measured, {PASS_LABELS[pass_]}"}
        plotted |= plot_series(ratio_ax, args.lengths, mine, "ratio", style)
    ideal = {n: {"status": "ok", "ratio": pairs(n, window_size(args), args.causal)
                 / pairs(n, None, args.causal)} for n in args.lengths}  # fmt: skip
    ideal_style = dict(color="gray", linestyle=":", marker=".", label="pairs in the window / all")
    plotted |= plot_series(ratio_ax, args.lengths, ideal, "ratio", ideal_style)
    log_axes(ratio_ax, plotted)
    ratio_ax.set_title("time of the window / time of full attention", fontsize=11)
    for ax in (times, ratio_ax):
        ax.set_xlabel("sequence length")
        ax.legend(fontsize=9)
    causal = "causal" if args.causal else "not causal"
    fig.suptitle(
        f"Sliding window {tuple(window_size(args))} vs full, ours, {args.dtype}, {causal}, "
        f"batch {args.batch}, {args.heads} head(s), head dim {args.head_dim}\n"
        f"{env['device_name']}, torch {env['torch']}, triton {env['triton']}, {env['date'][:10]}",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def table_rows(payload: dict, args) -> list[dict]:
    """One row per length and pass: both times (or statuses), their ratio and the ideal one."""
    table = {(r["variant"], r["seq_len"], r["pass"]): r for r in payload["records"]}
    ratio = {(r["seq_len"], r["pass"]): r for r in payload["ratios"]}
    rows = []
    for seq_len in args.lengths:
        for pass_ in PASSES:
            full, window = (table.get((v, seq_len, pass_)) or {} for v in VARIANTS)
            measured = ratio.get((seq_len, pass_), {})
            size = window_size(args)
            rows.append(
                dict(seq_len=seq_len, window_size=f"{size[0]} {size[1]}", causal=args.causal,
                     **{"pass": pass_}, full_status=full.get("status"),
                     full_ms=full.get("median_ms"), window_status=window.get("status"),
                     window_ms=window.get("median_ms"), ratio=measured.get("ratio"),
                     pairs_ratio=pairs(seq_len, size, args.causal)
                     / pairs(seq_len, None, args.causal))
            )  # fmt: skip
    return rows


def markdown(payload: dict, args) -> str:
    table = {(r["variant"], r["seq_len"], r["pass"]): r for r in payload["records"]}
    unit = time_label(payload["environment"])
    header = ["length", "pass", f"full, {unit}", f"window {args.window}, {unit}",
              "window / full", "pairs in the window / all"]  # fmt: skip
    rows = [
        [str(row["seq_len"]), PASS_LABELS[row["pass"]],
         format_cell(table.get(("full", row["seq_len"], row["pass"])), "median_ms"),
         format_cell(table.get(("window", row["seq_len"], row["pass"])), "median_ms"),
         "n/a" if row["ratio"] is None else f"{row['ratio']:.3f}", f"{row['pairs_ratio']:.3f}"]
        for row in table_rows(payload, args)
    ]  # fmt: skip
    notes = [
        f"- {r['variant']} at {r['seq_len']}, {PASS_LABELS[r['pass']]}: {r['status']} -- "
        f"{(r.get('note') or '').splitlines()[0][:200]}"
        for r in payload["records"]
        if r["status"] != "ok"
    ]
    return "\n\n".join([markdown_table(header, rows), *(["\n".join(notes)] if notes else [])])


def csv_rows(payload: dict, args) -> list[dict]:
    """The table's rows, each with the device, versions and date of the run."""
    env = payload["environment"]
    stamp = {k: env.get(k) for k in ("device_name", "torch", "triton", "date")}
    return [{**row, **stamp} for row in table_rows(payload, args)]


def report(payload: dict, stem: Path, wrote_json: bool = True) -> None:
    """Write ``stem``.png, .md and .csv from a results payload and print the markdown; then
    what was written (``wrote_json``: ``stem``.json too)."""
    args = argparse.Namespace(**payload["settings"])
    plot(payload, args, Path(f"{stem}.png"))
    write_markdown(stem, payload["environment"], markdown(payload, args))
    write_csv(Path(f"{stem}.csv"), csv_rows(payload, args))
    print("\n" + wrote(stem, [".json"] * wrote_json + [".csv", ".png", ".md"]))


# --- command line -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__)
    parser.add_argument(
        "--window", type=positive_int, default=None, help="keys left of each query (w); default 64"
    )
    parser.add_argument(
        "--causal", default="yes", choices=("yes", "no"),
        help="yes: window (w, 0) with causal attention; no: window (w, w)",
    )  # fmt: skip
    parser.add_argument(
        "--min-len", type=positive_int, default=None,
        help="shortest length, doubled up to --max-len; default: 1024 on CUDA, 256 on the CPU",
    )  # fmt: skip
    parser.add_argument(
        "--max-len", type=positive_int, default=None, help="default: 32768 on CUDA, 1024 on the CPU"
    )
    parser.add_argument("--head-dim", type=positive_int, default=None, help="default 64")
    parser.add_argument(
        "--heads", type=positive_int, default=None, help="default: 16 on CUDA, 1 on CPU"
    )
    parser.add_argument("--batch", type=positive_int, default=None, help="default 1")
    parser.add_argument(
        "--dtype", default=None, choices=("float32", "bfloat16", "float16"),
        help="default: bfloat16 on CUDA, float32 on the CPU",
    )  # fmt: skip
    parser.add_argument(
        "--cpu-repeats", type=positive_int, default=None,
        help="timed runs per point on the CPU after one warm-up (median); default 3",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true",
        help="tiny sizes (lengths 64 and 128, window 16, head dim 16, one head, one repeat): "
        "checks the script runs, in seconds; numbers mean nothing. Its files' default stem "
        "ends in _quick (not the full run's)",
    )  # fmt: skip
    add_output_arguments(parser, "window", drawn="the CSV, PNG and markdown")
    return parser


def parse_args(argv=None, parser: argparse.ArgumentParser | None = None):
    args = (parser or build_parser()).parse_args(argv)
    args.causal = args.causal == "yes"
    return args


def settle(parser: argparse.ArgumentParser, args, cuda: bool) -> None:
    """Fill what the command line left to the device (or to --quick)."""
    defaults = dict(window=64, head_dim=64, batch=1, cpu_repeats=3)
    if cuda:
        defaults |= dict(min_len=1024, max_len=32768, heads=16)
    else:
        defaults |= dict(min_len=256, max_len=1024, heads=1)
    if args.quick:
        defaults |= QUICK
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.lengths = length_range(parser, args)


def results_payload(args, env: dict, records: list[dict], partial: bool) -> dict:
    """The results file's content; ``partial``: written after a point, more are to come (a run
    stopped midway leaves its last such file)."""
    settings = settings_of(args)
    return {
        "benchmark": "window",
        "partial": partial,
        "environment": env,
        "settings": settings,
        "conventions": {
            "window_size": "(left, right) as flash_attention takes it: query i sees keys "
            "i - left .. i + right (causal: right 0)",
            "time": "median milliseconds after one warm-up call (triton.testing.do_bench on "
            "CUDA; wall clock on the CPU, where the kernel runs under the Triton interpreter, "
            "so it is the interpreter's time, which grows with the blocks visited, not speed)",
            "ratio": "window time / full time at the same length and pass, from this run",
            "pairs_ratio": "(query, key) pairs inside the window / all pairs (causal: those "
            "at or before the query): the ratio if the kernel visited no pair outside it",
            "tflops": "CUDA only: 4*batch*heads*pairs*head_dim, backward 2.5x, forward + "
            "backward 3.5x",
            "statuses": list(STATUSES),
        },
        "records": records,
        "ratios": ratios(records, args),
    }


def main(argv=None) -> dict:
    parser = build_parser()
    args = parse_args(argv, parser)
    if args.replot is not None:
        payload, stem, copied = replot_payload(parser, args, "window")
        report(payload, stem, wrote_json=copied)
        return payload
    device = pick_kernel_device(args.device)
    cuda = device.type == "cuda"
    settle(parser, args, cuda)
    stem = results_stem(args, f"window_{device_tag(device)}")
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
