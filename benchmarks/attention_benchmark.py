"""Peak memory and speed of one attention call against sequence length.

Implementations: the naive einops path (``attend(backend="naive")``), PyTorch SDPA pinned to
each of its backends in turn (flash, memory-efficient, cuDNN, math, via
``torch.nn.attention.sdpa_kernel``), and our Triton kernel (``attend(backend="triton")``).
For each head dim, causal or not, and length (doubling), it measures, in bfloat16:

* peak memory of the forward alone (under ``torch.no_grad``, i.e. inference) and of forward +
  backward, above the inputs;
* median time of the forward, the backward alone, and forward + backward, reported as TFLOP/s
  (``common.attention_flops``) and, for our kernel, as a ratio to each SDPA backend of this run.

An implementation that runs out of memory at one length is not run at longer ones (recorded as
``skipped``). On a machine without a GPU, memory and time are measured on the CPU, one fresh
process per point, and the Triton kernel is recorded as ``not_measurable``.

    python -m benchmarks.attention_benchmark             # defaults for this machine
    python -m benchmarks.attention_benchmark --help
    python benchmarks/attention_benchmark.py --help   # the same, run as a file
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python benchmarks/x.py): import from the repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm import tqdm

from benchmarks import common
from transformer.attention import attend

IMPLEMENTATIONS = ("naive", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "sdpa_math", "triton")
LABELS = {
    "naive": "naive (einops)",
    "sdpa_flash": "SDPA flash",
    "sdpa_efficient": "SDPA mem-efficient",
    "sdpa_cudnn": "SDPA cuDNN",
    "sdpa_math": "SDPA math",
    "triton": "ours (Triton)",
}
STYLES = {
    "naive": dict(color="tab:red", marker="o", linestyle="-"),
    "sdpa_flash": dict(color="tab:blue", marker="s", linestyle="--"),
    "sdpa_efficient": dict(color="tab:cyan", marker="v", linestyle="--"),
    "sdpa_cudnn": dict(color="tab:purple", marker="D", linestyle="--"),
    "sdpa_math": dict(color="tab:orange", marker="^", linestyle=":"),
    "triton": dict(color="tab:green", marker="*", linestyle="-", markersize=9),
}
PASSES = ("forward", "backward", "forward_backward")
PASS_LABELS = {
    "forward": "forward",
    "backward": "backward",
    "forward_backward": "forward + backward",
}
MEMORY_PASSES = ("forward", "forward_backward")
DTYPE = torch.bfloat16
WARMUP_LEN = 32


def sdpa_backend(impl: str) -> SDPBackend:
    return {
        "sdpa_flash": SDPBackend.FLASH_ATTENTION,
        "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
        "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
        "sdpa_math": SDPBackend.MATH,
    }[impl]


def attention_call(impl: str, causal: bool):
    """``call(q, k, v) -> out`` for one implementation."""
    if impl == "naive":
        return lambda q, k, v: attend(q, k, v, is_causal=causal, backend="naive")
    if impl == "triton":
        return lambda q, k, v: attend(q, k, v, is_causal=causal, backend="triton")
    backend = sdpa_backend(impl)

    def call(q, k, v):
        # Only the forward picks a backend; its backward is recorded with it in the graph.
        with sdpa_kernel([backend]):
            return attend(q, k, v, is_causal=causal, backend="sdpa")

    return call


def kernel_availability(device: torch.device) -> tuple[str, str] | None:
    """(status, note) when our kernel cannot be measured here, None when it can."""
    if device.type != "cuda":
        return "not_measurable", common.NOT_MEASURABLE_ON_CPU
    try:
        from kernels import flash_attention  # noqa: F401 -- written concurrently; may be absent
    except ImportError as err:
        return "unavailable", f"kernels.flash_attention cannot be imported: {err}"
    return None


# --- one point --------------------------------------------------------------------------------


def _inputs(spec: dict, length: int, requires_grad: bool):
    device = torch.device(spec["device"])
    shape = (spec["batch"], spec["heads"], length, spec["head_dim"])
    generator = torch.Generator(device=device).manual_seed(0)

    def randn():
        t = torch.randn(shape, generator=generator, device=device, dtype=DTYPE)
        return t.requires_grad_(requires_grad)

    q, k, v = randn(), randn(), randn()
    return q, k, v, randn().detach()


def _pass_fn(call, q, k, v, dout, pass_: str):
    if pass_ == "forward":

        def forward():
            with torch.no_grad():
                call(q, k, v)

        return forward
    if pass_ == "forward_backward":
        return lambda: call(q, k, v).backward(dout)
    out = call(q, k, v)
    return lambda: out.backward(dout, retain_graph=True)


def measure_point(spec: dict, memory_cap_bytes: int | None = None) -> dict:
    """One phase of one point: ``spec["phase"]`` is ``("memory", [pass])`` or
    ``("time", [passes...])``. Returns ``{pass: record}``. Runs in-process on CUDA, in a fresh
    child process on the CPU (one per memory measurement, so nothing freed earlier is reused).
    """
    device = torch.device(spec["device"])
    call = attention_call(spec["impl"], spec["causal"])
    measure, passes = spec["phase"]
    try:  # a tiny call first, so one-time set-up (libraries, workspaces) is not measured
        q, k, v, dout = _inputs(spec, WARMUP_LEN, requires_grad=True)
        call(q, k, v).backward(dout)
        del q, k, v, dout
    except Exception as err:  # noqa: BLE001
        return {p: common.failure(err) for p in passes}
    records = {}
    try:
        q, k, v, dout = _inputs(spec, spec["seq_len"], requires_grad=True)
    except Exception as err:  # noqa: BLE001
        return {p: common.failure(err) for p in passes}
    if memory_cap_bytes is not None and measure == "time":
        # Repeated calls fragment the allocator's address space: a looser cap, so that a point
        # that fitted in its memory measurement is not failed by its repeats.
        memory_cap_bytes *= 2
    common.cap_address_space(memory_cap_bytes)
    flops_args = (spec["batch"], spec["heads"], spec["seq_len"], spec["seq_len"], spec["head_dim"])
    for pass_ in passes:
        try:
            fn = _pass_fn(call, q, k, v, dout, pass_)
            if measure == "memory":
                records[pass_] = {"status": "ok", "peak_bytes": common.peak_memory(fn, device)}
            else:
                ms = common.median_ms(fn, device, [q, k, v], spec["cpu_repeats"])
                flops = common.attention_flops(*flops_args, spec["causal"], pass_)
                records[pass_] = {"status": "ok", "median_ms": ms, "tflops": flops / ms / 1e9}
            del fn
        except Exception as err:  # noqa: BLE001
            records[pass_] = common.failure(err, capped=memory_cap_bytes is not None)
        for t in (q, k, v):
            t.grad = None
    return records


def run_phase(spec: dict, device: torch.device, memory_cap_bytes: int | None) -> dict:
    if device.type == "cuda":
        result = measure_point(spec)
        torch.cuda.empty_cache()
        return result
    result = common.run_isolated(
        "benchmarks.attention_benchmark:measure_point", spec, memory_cap_bytes
    )
    passes = spec["phase"][1]
    if set(result) != set(passes):  # the child died: the same failure for every pass
        return {p: dict(result) for p in passes}
    return result


# --- the sweep --------------------------------------------------------------------------------


def batch_and_heads(args, seq_len: int, head_dim: int) -> tuple[int, int]:
    """Fixed (batch, heads), or FlashAttention's fixed tokens per batch and hidden size."""
    batch = max(1, args.tokens // seq_len) if args.tokens else args.batch
    heads = max(1, args.hidden // head_dim) if args.hidden else args.heads
    return batch, heads


def sweep(args, device: torch.device) -> list[dict]:
    configs = list(itertools.product(args.head_dims, args.causal_modes))
    kernel_missing = kernel_availability(device) if "triton" in args.impls else None
    cap = None if device.type == "cuda" else args.cpu_memory_cap_mib * common.MIB
    records = []
    progress = tqdm(total=len(configs) * len(args.impls) * len(args.lengths), desc="attention")
    for (head_dim, causal), impl in itertools.product(configs, args.impls):
        out_of_memory = set()  # (measure, pass) that already ran out of memory at a shorter length
        for seq_len in args.lengths:
            progress.set_postfix_str(f"{impl} d={head_dim} causal={causal} len={seq_len}")
            batch, heads = batch_and_heads(args, seq_len, head_dim)
            base = dict(
                implementation=impl,
                head_dim=head_dim,
                causal=causal,
                seq_len=seq_len,
                batch=batch,
                heads=heads,
                dtype="bfloat16",
            )
            spec = dict(
                impl=impl,
                device=str(device),
                batch=batch,
                heads=heads,
                head_dim=head_dim,
                causal=causal,
                seq_len=seq_len,
                cpu_repeats=args.cpu_repeats,
            )
            point = {}  # (measure, pass) -> record
            if impl == "triton" and kernel_missing is not None:
                status, note = kernel_missing
                for key in [("memory", p) for p in MEMORY_PASSES] + [("time", p) for p in PASSES]:
                    point[key] = {"status": status, "note": note}
            else:
                for pass_ in MEMORY_PASSES:
                    if ("memory", pass_) in out_of_memory:
                        point["memory", pass_] = {
                            "status": "skipped",
                            "note": "out of memory at a shorter length",
                        }
                        continue
                    result = run_phase({**spec, "phase": ("memory", [pass_])}, device, cap)
                    point["memory", pass_] = result[pass_]
                # Time only what fitted in memory: forward after the forward, the backward and
                # forward + backward after forward + backward.
                needs = {"forward": "forward", "backward": "forward_backward"}
                needs["forward_backward"] = "forward_backward"
                to_time = [p for p in PASSES if point["memory", needs[p]]["status"] == "ok"]
                for pass_ in PASSES:
                    if pass_ not in to_time:
                        memory = point["memory", needs[pass_]]
                        note = memory.get("note") or ""
                        if memory["status"] == "oom":
                            note = "out of memory in the memory measurement"
                        point["time", pass_] = {"status": memory["status"], "note": note}
                if to_time:
                    result = run_phase({**spec, "phase": ("time", to_time)}, device, cap)
                    for pass_ in to_time:
                        point["time", pass_] = result[pass_]
                for (measure, pass_), record in point.items():
                    if record["status"] == "oom":
                        out_of_memory.add((measure, pass_))
            for (measure, pass_), record in point.items():
                records.append({**base, "measure": measure, "pass": pass_, **record})
            progress.update()
    progress.close()
    return records


def ratios(records: list[dict]) -> list[dict]:
    """Our TFLOP/s over each SDPA backend's, point by point, from this run."""
    timed = {
        (r["head_dim"], r["causal"], r["seq_len"], r["pass"], r["implementation"]): r
        for r in records
        if r["measure"] == "time" and r["status"] == "ok"
    }
    out = []
    for (head_dim, causal, seq_len, pass_, impl), ours in timed.items():
        if impl != "triton":
            continue
        for other in IMPLEMENTATIONS:
            theirs = timed.get((head_dim, causal, seq_len, pass_, other))
            if other.startswith("sdpa_") and theirs is not None:
                out.append(
                    {
                        "head_dim": head_dim,
                        "causal": causal,
                        "seq_len": seq_len,
                        "pass": pass_,
                        "sdpa_backend": other,
                        "ours_tflops": ours["tflops"],
                        "sdpa_tflops": theirs["tflops"],
                        "ratio": ours["tflops"] / theirs["tflops"],
                    }
                )
    return out


# --- reporting --------------------------------------------------------------------------------


def _lookup(records: list[dict]) -> dict:
    return {
        (r["implementation"], r["head_dim"], r["causal"], r["seq_len"], r["measure"], r["pass"]): r
        for r in records
    }


def _config_label(head_dim: int, causal: bool) -> str:
    return f"head dim {head_dim}, {'causal' if causal else 'not causal'}"


def plot(records: list[dict], args, env: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = _lookup(records)
    configs = list(itertools.product(args.head_dims, args.causal_modes))
    panels = [("memory", p) for p in MEMORY_PASSES] + [("time", p) for p in PASSES]
    notes = _absent_notes(records, args.impls)
    top_in, bottom_in = 1.1, 0.3 + 0.2 * len(notes)  # title + legend; notes on absent lines
    height = 3.4 * len(configs) + top_in + bottom_in
    fig, axes = plt.subplots(
        len(configs), len(panels), figsize=(4.2 * len(panels), height), squeeze=False, sharex=True
    )
    for row, (head_dim, causal) in enumerate(configs):
        for col, (measure, pass_) in enumerate(panels):
            ax = axes[row][col]
            key = "peak_bytes" if measure == "memory" else "tflops"
            plotted = False
            for slot, impl in enumerate(args.impls):
                by_length = {}
                for n in args.lengths:
                    record = table.get((impl, head_dim, causal, n, measure, pass_))
                    if record is not None and record["status"] == "ok" and measure == "memory":
                        record = {**record, "peak_bytes": record["peak_bytes"] / common.MIB}
                    if record is not None:
                        by_length[n] = record
                style = {**STYLES[impl], "label": LABELS[impl]}
                plotted |= common.plot_series(ax, args.lengths, by_length, key, style, slot)
            common.log_axes(ax, plotted)
            if row == 0:
                unit = "peak memory (MiB)" if measure == "memory" else "TFLOP/s"
                ax.set_title(f"{unit}\n{PASS_LABELS[pass_]}", fontsize=11)
            if col == 0:
                ax.set_ylabel(_config_label(head_dim, causal), fontsize=11)
            if row == len(configs) - 1:
                ax.set_xlabel("sequence length")
    handles = [
        plt.Line2D([], [], **{**STYLES[impl], "label": LABELS[impl]}) for impl in args.impls
    ] + [
        plt.Line2D(
            [], [], marker="X", color="gray", linestyle="none", markersize=10, label="out of memory"
        )
    ]
    fig.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 1 - 0.45 / height),
        ncol=len(handles),
        fontsize=11,
        frameon=False,
    )
    cap = (
        f"; CPU out of memory = over a {args.cpu_memory_cap_mib} MiB cap per point"
        if env["device_type"] == "cpu"
        else ""
    )
    shape = f"batch {args.batch}, {args.heads} heads"
    if getattr(args, "tokens", None) or getattr(args, "hidden", None):
        shape = (
            f"batch x length = {args.tokens or 'batch*len'} tokens, "
            f"heads x head dim = {args.hidden or 'heads*d'}"
        )
    fig.suptitle(
        f"One attention call, bf16, {shape} -- {env['device_name']}, torch {env['torch']}{cap}",
        y=1 - 0.08 / height,
        va="top",
        fontsize=13,
    )
    fig.text(0.01, 0.1 / height, "\n".join(notes), fontsize=10, va="bottom", ha="left")
    fig.tight_layout(rect=(0, bottom_in / height, 1, 1 - top_in / height))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


SHORT_NOTES = {
    "unsupported": "SDPA has no such backend for these inputs on this device",
    "not_measurable": "the kernel runs on the CPU only under the Triton interpreter "
    "(TRITON_INTERPRET=1), so its numbers would mean nothing",
    "unavailable": "kernels.flash_attention cannot be imported",
}


def _absent_notes(records: list[dict], impls) -> list[str]:
    """One line per implementation that has no measured point at all, saying why."""
    notes = []
    for impl in impls:
        mine = [r for r in records if r["implementation"] == impl]
        if mine and not any(r["status"] == "ok" for r in mine):
            status = mine[0]["status"]
            why = SHORT_NOTES.get(status) or (mine[0].get("note") or "").splitlines()[0][:100]
            notes.append(f"{LABELS[impl]}: {status} at every point -- {why}")
    return notes


def markdown(records: list[dict], ratio_records: list[dict], args) -> str:
    table = _lookup(records)
    configs = list(itertools.product(args.head_dims, args.causal_modes))
    sections = []
    header_impls = [LABELS[i] for i in args.impls]
    for measure, passes in (("memory", MEMORY_PASSES), ("time", PASSES)):
        for pass_ in passes:
            if measure == "memory":
                title = f"Peak memory above the inputs (MiB), {PASS_LABELS[pass_]}"
                header = ["head dim", "causal", "length", *header_impls]
            else:
                title = f"TFLOP/s, {PASS_LABELS[pass_]}"
                header = ["head dim", "causal", "length", *header_impls, "ours / best SDPA"]
            rows = []
            for (head_dim, causal), n in itertools.product(configs, args.lengths):
                row = [str(head_dim), "yes" if causal else "no", str(n)]
                for impl in args.impls:
                    record = table.get((impl, head_dim, causal, n, measure, pass_))
                    if measure == "memory":
                        row.append(common.format_cell(record, "peak_bytes", 1 / common.MIB))
                    else:
                        row.append(common.format_cell(record, "tflops"))
                if measure == "time":
                    mine = [
                        r
                        for r in ratio_records
                        if (r["head_dim"], r["causal"], r["seq_len"], r["pass"])
                        == (head_dim, causal, n, pass_)
                    ]
                    best = min(mine, key=lambda r: r["ratio"], default=None)
                    row.append(
                        f"{best['ratio']:.2f} ({LABELS[best['sdpa_backend']]})" if best else "n/a"
                    )
                rows.append(row)
            sections.append(f"### {title}\n\n" + common.markdown_table(header, rows))
    notes = _absent_notes(records, args.impls)
    if notes:
        sections.append("\n".join(f"- {n}" for n in notes))
    return "\n\n".join(sections)


# --- command line -----------------------------------------------------------------------------


def parse_args(argv=None):
    parser = common.benchmark_parser(__doc__)
    parser.add_argument(
        "--impls",
        nargs="+",
        default=list(IMPLEMENTATIONS),
        choices=IMPLEMENTATIONS,
        help="implementations to compare",
    )
    parser.add_argument(
        "--head-dims", nargs="+", type=int, default=[64, 128], help="head dimensions to measure"
    )
    parser.add_argument(
        "--causal", default="both", choices=("both", "no", "yes"), help="causal attention"
    )
    parser.add_argument(
        "--min-len", type=int, default=128, help="shortest sequence length; doubled up to --max-len"
    )
    parser.add_argument(
        "--max-len", type=int, default=None, help="default: 65536 on CUDA, 4096 on the CPU"
    )
    parser.add_argument("--batch", type=int, default=None, help="default: 2 on CUDA, 1 on CPU")
    parser.add_argument("--heads", type=int, default=None, help="default: 16 on CUDA, 4 on CPU")
    parser.add_argument(
        "--tokens",
        type=int,
        default=None,
        help="FlashAttention's setting: batch = TOKENS // length at each length (e.g. 16384), "
        "so every length does about the same work; overrides --batch",
    )
    parser.add_argument(
        "--hidden",
        type=int,
        default=None,
        help="FlashAttention's setting: heads = HIDDEN // head_dim (e.g. 2048); overrides --heads",
    )
    common.add_cpu_and_output_arguments(
        parser, "attention", 512, "timed runs per point on the CPU (median)"
    )
    args = parser.parse_args(argv)
    return args


def report(payload: dict, stem: Path) -> None:
    """Write ``stem``.png and ``stem``.md from a results payload and print the markdown."""
    args = argparse.Namespace(**payload["settings"])
    plot(payload["records"], args, payload["environment"], Path(f"{stem}.png"))
    text = markdown(payload["records"], payload["ratios"], args)
    Path(f"{stem}.md").write_text(text + "\n")
    print(text)
    print(f"\nwrote {stem}.json, .png and .md")


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.replot is not None:
        payload = common.read_json(args.replot)
        report(payload, args.replot.with_suffix(""))
        return payload
    device = common.pick_device(args.device)
    cuda = device.type == "cuda"
    args.max_len = args.max_len or (65536 if cuda else 4096)
    args.batch = args.batch or (2 if cuda else 1)
    args.heads = args.heads or (16 if cuda else 4)
    args.lengths = common.doubling(args.min_len, args.max_len)
    args.causal_modes = {"both": [False, True], "no": [False], "yes": [True]}[args.causal]
    torch.set_num_threads(1)
    env = common.environment(device)
    records = sweep(args, device)
    ratio_records = ratios(records)
    stem = args.tag or f"attention_{common.device_tag(device)}"
    settings = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "tag"
    }
    payload = {
        "benchmark": "attention",
        "environment": env,
        "settings": settings,
        "conventions": {
            "memory": "peak bytes above the inputs (q, k, v and the output gradient) during "
            "the call; forward runs under torch.no_grad",
            "flops": "forward 4*batch*heads*len_q*len_k*head_dim, halved when causal; "
            "backward 2.5x forward; forward+backward 3.5x",
            "time": "median milliseconds after warm-up (triton.testing.do_bench on CUDA, "
            "wall clock on the CPU)",
            "statuses": list(common.STATUSES),
        },
        "records": records,
        "ratios": ratio_records,
    }
    common.write_json(args.out_dir / f"{stem}.json", payload)
    report(payload, args.out_dir / stem)
    return payload


if __name__ == "__main__":
    main()
