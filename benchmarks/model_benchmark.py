"""Whole-model training throughput and peak memory, per attention backend and sequence length.

One training step = forward of the encoder-decoder on random tokens (source and target both of
the given length), label-smoothed cross-entropy, backward, AdamW step, under bf16 autocast.
Reported per backend (``naive``, ``sdpa``, ``triton``) and length:

* training tokens per second: target tokens (the ones the loss is taken over) per second of
  median step time; source + target tokens per second as well in the JSON;
* peak memory of a step above what is held between steps (weights, gradients' absence,
  optimizer state), i.e. activations and temporaries.

``--compile`` adds a row per backend with the model under ``torch.compile(fullgraph=True)``
(batch and length marked dynamic, as ``train.py --compile`` does); its ``warmup_s`` (the first
two steps, one short and one full-size) includes compiling, which happens once per process, and
``breakeven_tokens`` says how many training tokens the compiled model must see before its faster
steps have paid for that (warm-up time over the per-token saving).

A backend that runs out of memory at one length is not run at longer ones (``skipped``). On a
machine without a GPU each point runs on the CPU in a fresh process, and ``triton`` is recorded
as ``not_measurable``.

    python -m benchmarks.model_benchmark                 # defaults for this machine
    python -m benchmarks.model_benchmark --help
    python benchmarks/model_benchmark.py --help   # the same, run as a file
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python benchmarks/x.py): import from the repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from tqdm import tqdm

from benchmarks.common.environment import device_tag, environment, pick_device
from benchmarks.common.isolation import run_isolated
from benchmarks.common.measure import MIB, cap_address_space, median_ms, peak_memory
from benchmarks.common.options import (
    add_cpu_and_output_arguments,
    benchmark_parser,
    doubling,
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
from transformer.config import ModelConfig
from transformer.model import Transformer, mark_dynamic_batch
from transformer.translation.cli import positive_int

BACKENDS = ("naive", "sdpa", "triton")
LABELS = {"naive": "naive (einops)", "sdpa": "PyTorch SDPA", "triton": "ours (Triton)"}
STYLES = {
    "naive": dict(color="tab:red", marker="o", linestyle="-"),
    "sdpa": dict(color="tab:blue", marker="s", linestyle="--"),
    "triton": dict(color="tab:green", marker="*", linestyle="-", markersize=10),
}
LABEL_SMOOTHING = 0.1
# The warm-up step's length: a multiple of 16, like every measured length, so the kernels it
# compiles are the ones the measured steps launch (Triton specialises lengths on divisibility
# by 16; benchmarks.gpu_report's warm step prepares that specialisation).
WARMUP_LEN = 16


def measure_point(spec: dict, memory_cap_bytes: int | None = None) -> dict:
    """Build the model for one backend, take one warm-up step, then measure a step's peak
    memory and median time. Run in-process on CUDA, in a fresh child on the CPU."""
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    config = ModelConfig(
        src_vocab_size=spec["vocab"],
        tgt_vocab_size=spec["vocab"],
        d_model=spec["d_model"],
        heads=spec["heads"],
        encoder_layers=spec["layers"],
        decoder_layers=spec["layers"],
        d_ff=spec["d_ff"],
        backend=spec["backend"],
    )
    model = Transformer(config).to(device).train()
    forward = torch.compile(model, fullgraph=True) if spec.get("compile") else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def batch(seq_len: int):
        # Token 0 is padding: draw from 1.. so that every position is real.
        src = torch.randint(1, spec["vocab"], (spec["batch"], seq_len), device=device)
        tgt = torch.randint(1, spec["vocab"], (spec["batch"], seq_len + 1), device=device)
        mark_dynamic_batch(src, tgt)  # one compiled graph for both lengths
        return src, tgt[:, :-1], tgt[:, 1:]

    def step(src, tgt_in, tgt_out):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = forward(src, tgt_in)
        loss = F.cross_entropy(
            logits.float().flatten(0, 1), tgt_out.flatten(), label_smoothing=LABEL_SMOOTHING
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    try:
        # A short step first: libraries set up, optimizer state allocated, kernels compiled.
        warmup_start = time.perf_counter()
        step(*batch(WARMUP_LEN))
        tokens = batch(spec["seq_len"])
        # On the CPU, cap the address space from here: a failed allocation is an OOM, not a
        # crash. The cap covers the full-size warm-up too, whose freed memory stays mapped.
        cap_address_space(memory_cap_bytes)
        step(*tokens)
        warmup_s = time.perf_counter() - warmup_start
        peak = peak_memory(lambda: step(*tokens), device)
        ms = median_ms(lambda: step(*tokens), device, cpu_repeats=spec["cpu_repeats"])
    except Exception as err:  # noqa: BLE001
        return failure(err, capped=memory_cap_bytes is not None)
    tgt_tokens = spec["batch"] * spec["seq_len"]
    return {
        "status": "ok",
        "peak_bytes": peak,
        "median_ms": ms,
        "warmup_s": warmup_s,
        "tgt_tokens_per_s": tgt_tokens / ms * 1e3,
        "tokens_per_s": 2 * tgt_tokens / ms * 1e3,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def series(args) -> list[tuple[str, bool]]:
    """(backend, compiled) of every row: each backend eager, then compiled with --compile."""
    compiled = getattr(args, "compile", False)  # absent from results written before --compile
    return [(b, False) for b in args.backends] + [(b, True) for b in args.backends if compiled]


def series_name(backend: str, compiled: bool) -> str:
    return f"{backend}+compile" if compiled else backend


def label(name: str) -> str:
    backend, _, compiled = name.partition("+")
    return LABELS[backend] + (" + torch.compile" if compiled else "")


def style(name: str) -> dict:
    backend, _, compiled = name.partition("+")
    return {**STYLES[backend], **(dict(linestyle=":", markerfacecolor="none") if compiled else {})}


def sweep(args, device: torch.device, on_point=None) -> list[dict]:
    """Every point's record; ``on_point(records so far)`` after each point (the benchmark
    writes its results file then, so a run stopped midway keeps every finished point)."""
    cap = None if device.type == "cuda" else args.cpu_memory_cap_mib * MIB
    records = []
    progress = tqdm(total=len(series(args)) * len(args.lengths), desc="model")
    for backend, compiled in series(args):
        out_of_memory = False
        for seq_len in args.lengths:
            progress.set_postfix_str(f"{series_name(backend, compiled)} len={seq_len}")
            started = time.perf_counter()
            spec = dict(
                backend=backend,
                compile=compiled,
                device=str(device),
                seq_len=seq_len,
                batch=args.batch,
                vocab=args.vocab,
                d_model=args.d_model,
                heads=args.heads,
                layers=args.layers,
                d_ff=args.d_ff,
                cpu_repeats=args.cpu_repeats,
            )
            if backend == "triton" and device.type != "cuda":
                result = {"status": "not_measurable", "note": NOT_MEASURABLE_ON_CPU}
            elif out_of_memory:
                result = {"status": "skipped", "note": "out of memory at a shorter length"}
            elif device.type == "cuda":
                result = measure_point(spec)
                torch.cuda.empty_cache()
            else:
                result = run_isolated("benchmarks.model_benchmark:measure_point", spec, cap)
            out_of_memory = out_of_memory or result["status"] == "oom"
            records.append(
                dict(
                    backend=backend, compiled=compiled, seq_len=seq_len, batch=args.batch, **result,
                    point_seconds=round(time.perf_counter() - started, 3),
                )
            )  # fmt: skip
            if on_point is not None:
                on_point(records)
            progress.update()
    progress.close()
    add_breakeven(records)
    return records


def add_breakeven(records: list[dict]) -> None:
    """On each compiled record: the training tokens after which compiling has paid for itself,
    (extra warm-up seconds) / (seconds saved per token); None when it is not faster per step."""
    eager = {(r["backend"], r["seq_len"]): r for r in records if not r.get("compiled")}
    for r in records:
        base = eager.get((r["backend"], r["seq_len"]))
        if not r.get("compiled") or r["status"] != "ok" or not base or base["status"] != "ok":
            continue
        saved = 1 / base["tgt_tokens_per_s"] - 1 / r["tgt_tokens_per_s"]
        extra = r["warmup_s"] - base["warmup_s"]
        r["breakeven_tokens"] = extra / saved if saved > 0 else None


def plot(records: list[dict], args, env: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("tgt_tokens_per_s", "training tokens / s (target)"),
        ("peak_mib", "peak memory of a step (MiB)"),
    )
    names = [series_name(*s) for s in series(args)]
    by_name = {n: [r for r in records if record_series(r) == n] for n in names}
    notes = [
        f"{label(n)}: {rs[0]['status']} at every point"
        + (
            " -- runs on the CPU only under the Triton interpreter"
            if n.startswith("triton")
            else ""
        )
        for n, rs in by_name.items()
        if rs and not any(r["status"] == "ok" for r in rs)
    ]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2 + 0.25 * len(notes)))
    for ax, (key, title) in zip(axes, panels, strict=True):
        plotted = False
        for slot, name in enumerate(names):
            by_length = {}
            for r in by_name[name]:
                extra = {"peak_mib": r["peak_bytes"] / MIB} if r["status"] == "ok" else {}
                by_length[r["seq_len"]] = {**r, **extra}
            line = {**style(name), "label": label(name)}
            plotted |= plot_series(ax, args.lengths, by_length, key, line, slot)
        log_axes(ax, plotted)
        ax.set_xlabel("sequence length (source = target)")
        ax.set_title(title)
    handles = [plt.Line2D([], [], **{**style(n), "label": label(n)}) for n in names]
    handles.append(
        plt.Line2D(
            [], [], marker="X", color="gray", linestyle="none", markersize=10, label="out of memory"
        )
    )
    axes[0].legend(handles=handles, loc="best")
    cap = f"; CPU OOM = over {args.cpu_memory_cap_mib} MiB" if env["device_type"] == "cpu" else ""
    fig.suptitle(
        f"Training step, bf16 autocast, batch {args.batch}, d_model {args.d_model}, "
        f"{args.layers}+{args.layers} layers -- {env['device_name']}{cap}",
        fontsize=12,
    )
    bottom = 0.0
    if notes:
        fig.text(0.01, 0.01, "\n".join(notes), fontsize=10, va="bottom")
        bottom = (0.3 + 0.22 * len(notes)) / fig.get_figheight()
    fig.tight_layout(rect=(0, bottom, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def record_series(record: dict) -> str:
    return series_name(record["backend"], record.get("compiled", False))


def markdown(records: list[dict], args) -> str:
    by_key = {(record_series(r), r["seq_len"]): r for r in records}
    names = [series_name(*s) for s in series(args)]
    header = ["length"]
    for n in names:
        header += [f"{label(n)} tokens/s", f"{label(n)} MiB"]
    rows = []
    for length in args.lengths:
        row = [str(length)]
        for n in names:
            record = by_key.get((n, length))
            row.append(format_cell(record, "tgt_tokens_per_s"))
            row.append(format_cell(record, "peak_bytes", 1 / MIB))
        rows.append(row)
    title = f"### Training step: target tokens/s and peak step memory (MiB), batch {args.batch}\n\n"
    text = title + markdown_table(header, rows)
    compiled = [r for r in records if r.get("compiled") and r["status"] == "ok"]
    if compiled:
        eager = {(r["backend"], r["seq_len"]): r for r in records if not r.get("compiled")}
        rows = []
        for r in compiled:
            base = eager.get((r["backend"], r["seq_len"]))
            tokens = r.get("breakeven_tokens")
            rows.append([LABELS[r["backend"]], str(r["seq_len"]), format_cell(base, "warmup_s"),
                         format_cell(r, "warmup_s"),
                         "never" if tokens is None else f"{tokens:,.0f}"])  # fmt: skip
        header = ["backend", "length", "eager warm-up s", "compiled warm-up s",
                  "training tokens to break even"]  # fmt: skip
        text += (
            "\n\n### torch.compile: first two steps (s, compiling included) and break-even\n\n"
            + markdown_table(header, rows)
        )
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__)
    parser.add_argument(
        "--backends",
        nargs="+",
        default=list(BACKENDS),
        choices=BACKENDS,
        help="attention backends to compare",
    )
    parser.add_argument(
        "--lengths",
        nargs="+",
        type=positive_int,
        default=None,
        help="default: 256 ... 8192 on CUDA, 64 ... 2048 on the CPU (doubling)",
    )
    parser.add_argument(
        "--batch", type=positive_int, default=None, help="default: 8 on CUDA, 2 on CPU"
    )
    parser.add_argument(
        "--vocab", type=positive_int, default=8000, help="source and target vocabulary size"
    )
    parser.add_argument("--d-model", type=positive_int, default=256, help="model width")
    parser.add_argument("--heads", type=positive_int, default=4, help="attention heads")
    parser.add_argument(
        "--layers", type=positive_int, default=3, help="encoder and decoder layers each"
    )
    parser.add_argument("--d-ff", type=positive_int, default=1024, help="feed-forward width")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="add a torch.compile(fullgraph=True) row per backend, with its warm-up "
        "(compile) time and the training tokens it takes to pay for it",
    )
    add_cpu_and_output_arguments(parser, "model", 2048, "timed steps per CPU point")
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
        "benchmark": "model",
        "partial": partial,
        "environment": env,
        "settings": settings,
        "conventions": {
            "step": "forward, label-smoothed cross-entropy, backward, AdamW step; bf16 autocast",
            "tgt_tokens_per_s": "batch*seq_len target tokens per second of median step time",
            "tokens_per_s": "source + target tokens per second",
            "memory": "peak bytes of a step above what is held between steps (weights, "
            "optimizer state)",
            "time": "median milliseconds after a warm-up step (triton.testing.do_bench on "
            "CUDA, wall clock on the CPU)",
            "point_seconds": "wall seconds the point took, model building included",
            "statuses": list(STATUSES),
        },
        "records": records,
    }


def main(argv=None) -> dict:
    parser = build_parser()
    args = parse_args(argv, parser)
    if args.replot is not None:
        payload, stem, copied = replot_payload(parser, args, "model")
        report(payload, stem, wrote_json=copied)
        return payload
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    args.lengths = args.lengths or (doubling(256, 8192) if cuda else doubling(64, 2048))
    args.batch = args.batch or (8 if cuda else 2)
    stem = results_stem(args, f"model_{device_tag(device)}")
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
