"""Whole-model training throughput and peak memory, per attention backend and sequence length.

One training step = forward of the encoder-decoder on random tokens (source and target both of
the given length), label-smoothed cross-entropy, backward, AdamW step, under bf16 autocast.
Reported per backend (``naive``, ``sdpa``, ``triton``) and length:

* training tokens per second: target tokens (the ones the loss is taken over) per second of
  median step time; source + target tokens per second as well in the JSON;
* peak memory of a step above what is held between steps (weights, gradients' absence,
  optimizer state), i.e. activations and temporaries.

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
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python benchmarks/x.py): import from the repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from tqdm import tqdm

from benchmarks import common
from transformer.config import ModelConfig
from transformer.model import Transformer

BACKENDS = ("naive", "sdpa", "triton")
LABELS = {"naive": "naive (einops)", "sdpa": "PyTorch SDPA", "triton": "ours (Triton)"}
STYLES = {
    "naive": dict(color="tab:red", marker="o", linestyle="-"),
    "sdpa": dict(color="tab:blue", marker="s", linestyle="--"),
    "triton": dict(color="tab:green", marker="*", linestyle="-", markersize=10),
}
LABEL_SMOOTHING = 0.1


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
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def batch(seq_len: int):
        # Token 0 is padding: draw from 1.. so that every position is real.
        src = torch.randint(1, spec["vocab"], (spec["batch"], seq_len), device=device)
        tgt = torch.randint(1, spec["vocab"], (spec["batch"], seq_len + 1), device=device)
        return src, tgt[:, :-1], tgt[:, 1:]

    def step(src, tgt_in, tgt_out):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(src, tgt_in)
        loss = F.cross_entropy(
            logits.float().flatten(0, 1), tgt_out.flatten(), label_smoothing=LABEL_SMOOTHING
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    try:
        # A short step first: libraries set up, optimizer state allocated, kernels compiled.
        step(*batch(8))
        tokens = batch(spec["seq_len"])
        # On the CPU, cap the address space from here: a failed allocation is an OOM, not a
        # crash. The cap covers the full-size warm-up too, whose freed memory stays mapped.
        common.cap_address_space(memory_cap_bytes)
        step(*tokens)
        peak = common.peak_memory(lambda: step(*tokens), device)
        ms = common.median_ms(lambda: step(*tokens), device, cpu_repeats=spec["cpu_repeats"])
    except Exception as err:  # noqa: BLE001
        return common.failure(err, capped=memory_cap_bytes is not None)
    tgt_tokens = spec["batch"] * spec["seq_len"]
    return {
        "status": "ok",
        "peak_bytes": peak,
        "median_ms": ms,
        "tgt_tokens_per_s": tgt_tokens / ms * 1e3,
        "tokens_per_s": 2 * tgt_tokens / ms * 1e3,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def sweep(args, device: torch.device) -> list[dict]:
    cap = None if device.type == "cuda" else args.cpu_memory_cap_mib * common.MIB
    records = []
    progress = tqdm(total=len(args.backends) * len(args.lengths), desc="model")
    for backend in args.backends:
        out_of_memory = False
        for seq_len in args.lengths:
            progress.set_postfix_str(f"{backend} len={seq_len}")
            spec = dict(
                backend=backend,
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
                result = {"status": "not_measurable", "note": common.NOT_MEASURABLE_ON_CPU}
            elif out_of_memory:
                result = {"status": "skipped", "note": "out of memory at a shorter length"}
            elif device.type == "cuda":
                result = measure_point(spec)
                torch.cuda.empty_cache()
            else:
                result = common.run_isolated("benchmarks.model_benchmark:measure_point", spec, cap)
            out_of_memory = out_of_memory or result["status"] == "oom"
            records.append(dict(backend=backend, seq_len=seq_len, batch=args.batch, **result))
            progress.update()
    progress.close()
    return records


def plot(records: list[dict], args, env: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("tgt_tokens_per_s", "training tokens / s (target)"),
        ("peak_mib", "peak memory of a step (MiB)"),
    )
    notes = [
        f"{LABELS[b]}: {rs[0]['status']} at every point"
        + (" -- runs on the CPU only under the Triton interpreter" if b == "triton" else "")
        for b in args.backends
        if (rs := [r for r in records if r["backend"] == b])
        and not any(r["status"] == "ok" for r in rs)
    ]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2 + 0.25 * len(notes)))
    for ax, (key, title) in zip(axes, panels, strict=True):
        plotted = False
        for slot, backend in enumerate(args.backends):
            by_length = {}
            for r in records:
                if r["backend"] == backend:
                    extra = (
                        {"peak_mib": r["peak_bytes"] / common.MIB} if r["status"] == "ok" else {}
                    )
                    by_length[r["seq_len"]] = {**r, **extra}
            style = {**STYLES[backend], "label": LABELS[backend]}
            plotted |= common.plot_series(ax, args.lengths, by_length, key, style, slot)
        common.log_axes(ax, plotted)
        ax.set_xlabel("sequence length (source = target)")
        ax.set_title(title)
    handles = [plt.Line2D([], [], **{**STYLES[b], "label": LABELS[b]}) for b in args.backends]
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


def markdown(records: list[dict], args) -> str:
    by_key = {(r["backend"], r["seq_len"]): r for r in records}
    header = ["length"]
    for b in args.backends:
        header += [f"{LABELS[b]} tokens/s", f"{LABELS[b]} MiB"]
    rows = []
    for n in args.lengths:
        row = [str(n)]
        for b in args.backends:
            record = by_key.get((b, n))
            row.append(common.format_cell(record, "tgt_tokens_per_s"))
            row.append(common.format_cell(record, "peak_bytes", 1 / common.MIB))
        rows.append(row)
    title = f"### Training step: target tokens/s and peak step memory (MiB), batch {args.batch}\n\n"
    return title + common.markdown_table(header, rows)


def parse_args(argv=None):
    parser = common.benchmark_parser(__doc__)
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
        type=int,
        default=None,
        help="default: 256 ... 8192 on CUDA, 64 ... 2048 on the CPU (doubling)",
    )
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on CUDA, 2 on CPU")
    parser.add_argument("--vocab", type=int, default=8000, help="source and target vocabulary size")
    parser.add_argument("--d-model", type=int, default=256, help="model width")
    parser.add_argument("--heads", type=int, default=4, help="attention heads")
    parser.add_argument("--layers", type=int, default=3, help="encoder and decoder layers each")
    parser.add_argument("--d-ff", type=int, default=1024, help="feed-forward width")
    common.add_cpu_and_output_arguments(parser, "model", 2048, "timed steps per CPU point")
    return parser.parse_args(argv)


def report(payload: dict, stem: Path) -> None:
    """Write ``stem``.png and ``stem``.md from a results payload and print the markdown."""
    args = argparse.Namespace(**payload["settings"])
    plot(payload["records"], args, payload["environment"], Path(f"{stem}.png"))
    text = markdown(payload["records"], args)
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
    args.lengths = args.lengths or (
        common.doubling(256, 8192) if cuda else common.doubling(64, 2048)
    )
    args.batch = args.batch or (8 if cuda else 2)
    torch.set_num_threads(1)
    env = common.environment(device)
    records = sweep(args, device)
    stem = args.tag or f"model_{common.device_tag(device)}"
    settings = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "tag"
    }
    payload = {
        "benchmark": "model",
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
            "statuses": list(common.STATUSES),
        },
        "records": records,
    }
    common.write_json(args.out_dir / f"{stem}.json", payload)
    report(payload, args.out_dir / stem)
    return payload


if __name__ == "__main__":
    main()
