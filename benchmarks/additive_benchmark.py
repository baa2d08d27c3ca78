"""Peak memory and time of additive (Bahdanau) attention against sequence length.

Implementations, all on one head configuration: the naive additive path
(``AdditiveScore`` on backend ``naive``, which builds a (b, h, i, j, a) tensor), the fused
additive kernel (``AdditiveScore`` on backend ``triton``: features outside, tanh tiles on chip)
and, for reference, dot-product flash attention (``attend(backend="triton")``) on the same
q, k, v. For each length (doubling) it measures peak memory of the forward (under
``torch.no_grad``) and of forward + backward, above the inputs and parameters, and the median
time of both.

Memory is torch's allocations above the inputs
(:func:`benchmarks.common.measure.peak_allocated`), as in the attention benchmark. On a machine
without a GPU every memory point runs in a fresh process (see ``benchmarks/common/isolation.py``)
and the Triton kernels run under Triton's interpreter (``TRITON_INTERPRET=1``): what they
allocate through torch (outputs, log-sum-exp, buffers) is what they allocate on a GPU, and is
counted; the interpreter's own numpy arrays are not. Their time is not meaningful (recorded as
``not_measurable``). The interpreter is slow, so the CPU
defaults are one head and lengths up to 1024.

    python -m benchmarks.additive_benchmark             # defaults for this machine
    python -m benchmarks.additive_benchmark --help
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
from benchmarks.common.isolation import run_isolated
from benchmarks.common.measure import MIB, cap_address_space, median_ms, peak_allocated
from benchmarks.common.options import (
    add_cpu_and_output_arguments,
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
    write_markdown,
    wrote,
)
from benchmarks.common.statuses import NOT_MEASURABLE_ON_CPU, STATUSES, failure
from transformer.translation.cli import positive_int

IMPLEMENTATIONS = ("naive_additive", "fused_additive", "flash_dot")
LABELS = {
    "naive_additive": "additive, naive",
    "fused_additive": "additive, fused kernel (ours)",
    "flash_dot": "dot-product flash (ours)",
}
STYLES = {
    "naive_additive": dict(color="tab:red", marker="o", linestyle="-"),
    "fused_additive": dict(color="tab:green", marker="*", linestyle="-", markersize=9),
    "flash_dot": dict(color="tab:blue", marker="s", linestyle="--"),
}
PASSES = ("forward", "forward_backward")
PASS_LABELS = {"forward": "forward", "forward_backward": "forward + backward"}
TRITON_IMPLS = ("fused_additive", "flash_dot")
WARMUP_LEN = 16


# --- one point --------------------------------------------------------------------------------


def _setup(spec: dict, length: int):
    """(call, q, k, v, dout): the implementation bound to a fresh score module, and inputs."""
    from transformer.attention import AdditiveScore, attend
    from transformer.config import ModelConfig

    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    heads, head_dim = spec["heads"], spec["head_dim"]
    config = ModelConfig(
        src_vocab_size=8, tgt_vocab_size=8, d_model=heads * head_dim, heads=heads,
        score="additive", backend="triton",
    )  # fmt: skip
    torch.manual_seed(0)
    score = AdditiveScore(config).to(device, dtype)
    impl, causal = spec["impl"], spec["causal"]
    if impl == "flash_dot":

        def call(q, k, v):
            return attend(q, k, v, is_causal=causal, backend="triton")
    else:
        backend = "naive" if impl == "naive_additive" else "triton"

        def call(q, k, v):
            return score(q, k, v, None, causal, backend, 0.0)

    shape = (spec["batch"], heads, length, head_dim)
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v, dout = (
        torch.randn(shape, generator=gen, device=device, dtype=dtype) for _ in range(4)
    )
    return call, q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), dout


def _pass_fn(call, q, k, v, dout, pass_: str):
    if pass_ == "forward":

        def forward():
            with torch.no_grad():
                call(q, k, v)

        return forward
    return lambda: call(q, k, v).backward(dout)


def measure_point(spec: dict, memory_cap_bytes: int | None = None) -> dict:
    """One measurement (``spec["measure"]``: memory or time) of one pass of one point.
    Runs in-process on CUDA, in a fresh child process on the CPU."""
    device = torch.device(spec["device"])
    try:  # a tiny call first, so one-time set-up (imports, workspaces) is not measured
        call, q, k, v, dout = _setup(spec, WARMUP_LEN)
        call(q, k, v).backward(dout)
        call, q, k, v, dout = _setup(spec, spec["seq_len"])
    except Exception as err:  # noqa: BLE001
        return failure(err)
    if memory_cap_bytes is not None and spec["measure"] == "time":
        memory_cap_bytes *= 2  # repeats fragment the address space; see attention_measure
    cap_address_space(memory_cap_bytes)
    try:
        fn = _pass_fn(call, q, k, v, dout, spec["pass"])
        if spec["measure"] == "memory":
            return {"status": "ok", "peak_bytes": peak_allocated(fn, device)}
        ms = median_ms(fn, device, [q, k, v], spec["cpu_repeats"])
        return {"status": "ok", "median_ms": ms}
    except Exception as err:  # noqa: BLE001
        return failure(err, capped=memory_cap_bytes is not None)


def run_point(spec: dict, device: torch.device, memory_cap_bytes: int | None) -> dict:
    if device.type == "cuda":
        result = measure_point(spec)
        torch.cuda.empty_cache()
        return result
    return run_isolated("benchmarks.additive_benchmark:measure_point", spec, memory_cap_bytes)


# --- the sweep --------------------------------------------------------------------------------


def sweep(args, device: torch.device, on_point=None) -> list[dict]:
    """Every point's records; ``on_point(records so far)`` after each point (the benchmark
    writes its results file then, so a run stopped midway keeps every finished point)."""
    cap = None if device.type == "cuda" else args.cpu_memory_cap_mib * MIB
    records = []
    progress = tqdm(total=len(args.impls) * len(args.lengths), desc="additive")
    for impl in args.impls:
        out_of_memory = set()  # (measure, pass) that ran out of memory at a shorter length
        for seq_len in args.lengths:
            progress.set_postfix_str(f"{impl} len={seq_len}")
            base = dict(
                implementation=impl, seq_len=seq_len, batch=args.batch, heads=args.heads,
                head_dim=args.head_dim, features=args.head_dim, causal=args.causal,
                dtype=args.dtype,
            )  # fmt: skip
            for measure in ("memory", "time"):
                for pass_ in PASSES:
                    key = (measure, pass_)
                    if key in out_of_memory or ("memory", pass_) in out_of_memory:
                        record = {"status": "skipped", "note": "out of memory at this or a "
                                  "shorter length"}  # fmt: skip
                    elif measure == "time" and device.type != "cuda" and impl in TRITON_IMPLS:
                        record = {"status": "not_measurable", "note": NOT_MEASURABLE_ON_CPU}
                    else:
                        spec = dict(
                            base, impl=impl, device=str(device), measure=measure,
                            cpu_repeats=args.cpu_repeats, **{"pass": pass_},
                        )  # fmt: skip
                        record = run_point(spec, device, cap)
                    if record["status"] == "oom":
                        out_of_memory.add(key)
                    records.append({**base, "measure": measure, "pass": pass_, **record})
            if on_point is not None:
                on_point(records)
            progress.update()
    progress.close()
    return records


# --- reporting --------------------------------------------------------------------------------


def _lookup(records: list[dict]) -> dict:
    return {(r["implementation"], r["seq_len"], r["measure"], r["pass"]): r for r in records}


def ratios_at(records: list[dict], seq_len: int) -> dict:
    """Naive additive memory over fused additive memory at one length, per pass."""
    table = _lookup(records)
    out = {}
    for pass_ in PASSES:
        naive = table.get(("naive_additive", seq_len, "memory", pass_))
        fused = table.get(("fused_additive", seq_len, "memory", pass_))
        if naive and fused and naive["status"] == fused["status"] == "ok":
            out[pass_] = naive["peak_bytes"] / max(1, fused["peak_bytes"])
    return out


def plot(records: list[dict], args, env: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = _lookup(records)
    panels = [("memory", p) for p in PASSES] + [("time", p) for p in PASSES]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 4.6), squeeze=False)
    for col, (measure, pass_) in enumerate(panels):
        ax = axes[0][col]
        key = "peak_bytes" if measure == "memory" else "median_ms"
        plotted = False
        for slot, impl in enumerate(args.impls):
            by_length = {}
            for n in args.lengths:
                record = table.get((impl, n, measure, pass_))
                if record is not None and record["status"] == "ok" and measure == "memory":
                    record = {**record, "peak_bytes": record["peak_bytes"] / MIB}
                if record is not None:
                    by_length[n] = record
            style = {**STYLES[impl], "label": LABELS[impl]}
            plotted |= plot_series(ax, args.lengths, by_length, key, style, slot)
        log_axes(ax, plotted)
        unit = "peak memory (MiB)" if measure == "memory" else "median time (ms)"
        ax.set_title(f"{unit}\n{PASS_LABELS[pass_]}", fontsize=11)
        ax.set_xlabel("sequence length")
    handles = [plt.Line2D([], [], **{**STYLES[i], "label": LABELS[i]}) for i in args.impls]
    fig.legend(
        handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.93), ncol=len(handles),
        fontsize=11, frameon=False,
    )  # fmt: skip
    cpu = env["device_type"] == "cpu"
    note = (
        "CPU: memory is torch allocations (the Triton kernels' under the interpreter); "
        "their time is not measured; "
        f"out of memory = over a {args.cpu_memory_cap_mib} MiB cap per point"
        if cpu
        else ""
    )
    fig.suptitle(
        f"Additive attention, {args.dtype}, batch {args.batch}, {args.heads} head(s), "
        f"head dim = a = {args.head_dim}{', causal' if args.causal else ''} -- "
        f"{env['device_name']}, torch {env['torch']}, triton {env['triton']}, {env['date'][:10]}",
        y=0.99,
        fontsize=11,
    )
    fig.text(0.01, 0.01, note, fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 0.84))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def markdown(records: list[dict], args) -> str:
    table = _lookup(records)
    sections = []
    for measure in ("memory", "time"):
        for pass_ in PASSES:
            if measure == "memory":
                title = f"Peak torch allocations above the inputs (MiB), {PASS_LABELS[pass_]}"
            else:
                title = f"Median time (ms), {PASS_LABELS[pass_]}"
            header = ["length", *(LABELS[i] for i in args.impls)]
            rows = []
            for n in args.lengths:
                row = [str(n)]
                for impl in args.impls:
                    record = table.get((impl, n, measure, pass_))
                    if measure == "memory":
                        row.append(format_cell(record, "peak_bytes", 1 / MIB))
                    else:
                        row.append(format_cell(record, "median_ms"))
                rows.append(row)
            sections.append(f"### {title}\n\n" + markdown_table(header, rows))
    lines = []
    for n in args.lengths:
        ratio = ratios_at(records, n)
        if ratio:
            parts = ", ".join(f"{PASS_LABELS[p]} {r:.0f}x" for p, r in ratio.items())
            lines.append(
                f"- length {n}: naive additive needs {parts} the memory of the fused kernel"
            )
    if lines:
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


# --- command line -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__)
    parser.add_argument(
        "--impls", nargs="+", default=list(IMPLEMENTATIONS), choices=IMPLEMENTATIONS,
        help="implementations to compare",
    )  # fmt: skip
    parser.add_argument(
        "--head-dim",
        type=positive_int,
        default=64,
        help="head dim, also the additive feature size a",
    )
    parser.add_argument("--causal", action="store_true", help="causal attention")
    parser.add_argument(
        "--min-len",
        type=positive_int,
        default=None,
        help="shortest length, doubled up to --max-len; default: 512 on CUDA, 256 on the CPU",
    )
    parser.add_argument(
        "--max-len", type=positive_int, default=None, help="default: 16384 on CUDA, 1024 on the CPU"
    )
    parser.add_argument("--batch", type=positive_int, default=1, help="batch size")
    parser.add_argument(
        "--heads", type=positive_int, default=None, help="default: 8 on CUDA, 1 on CPU"
    )
    parser.add_argument(
        "--dtype", default=None, choices=("float32", "bfloat16", "float16"),
        help="default: bfloat16 on CUDA, float32 on the CPU",
    )  # fmt: skip
    add_cpu_and_output_arguments(
        parser, "additive", 6144, "timed runs per point on the CPU (median)"
    )
    return parser


def parse_args(argv=None, parser: argparse.ArgumentParser | None = None):
    return (parser or build_parser()).parse_args(argv)


def report(payload: dict, stem: Path, wrote_json: bool = True) -> None:
    """Write ``stem``.png and ``stem``.md from a results payload and print the markdown; then
    what was written (``wrote_json``: ``stem``.json too)."""
    args = argparse.Namespace(**payload["settings"])
    plot(payload["records"], args, payload["environment"], Path(f"{stem}.png"))
    write_markdown(stem, payload["environment"], markdown(payload["records"], args))
    print("\n" + wrote(stem, [".json"] * wrote_json + [".png", ".md"]))


def results_payload(args, env: dict, records: list[dict], partial: bool) -> dict:
    """The results file's content; ``partial``: written after a point, more are to come (a run
    stopped midway leaves its last such file)."""
    settings = settings_of(args)
    return {
        "benchmark": "additive",
        "partial": partial,
        "environment": env,
        "settings": settings,
        "conventions": {
            "memory": "peak bytes torch allocated above the inputs (q, k, v, the output gradient "
            "and the score module's parameters) during the call: torch.cuda.max_memory_allocated "
            "on CUDA, the CPU allocator's blocks read from torch.profiler on the CPU (under the "
            "interpreter, not the interpreter's own numpy arrays); forward runs under "
            "torch.no_grad",
            "time": "median milliseconds after warm-up (triton.testing.do_bench on CUDA, "
            "wall clock on the CPU)",
            "statuses": list(STATUSES),
        },
        "records": records,
        "memory_ratio_naive_over_fused": {
            str(n): ratios_at(records, n) for n in args.lengths if ratios_at(records, n)
        },
    }


def main(argv=None) -> dict:
    parser = build_parser()
    args = parse_args(argv, parser)
    if args.replot is not None:
        payload, stem, copied = replot_payload(parser, args, "additive")
        report(payload, stem, wrote_json=copied)
        return payload
    device = pick_kernel_device(args.device)
    cuda = device.type == "cuda"
    args.min_len = args.min_len or (512 if cuda else 256)
    args.max_len = args.max_len or (16384 if cuda else 1024)
    args.heads = args.heads or (8 if cuda else 1)
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.lengths = length_range(parser, args)
    stem = results_stem(args, f"additive_{device_tag(device)}")
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
