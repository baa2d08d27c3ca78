"""The attention benchmark's results as a PNG (memory and TFLOP/s against length, one row per
head dim and causal mode) and as markdown tables, with a line for each implementation (and
measure) that has no measured point, saying why, and a line saying what memory counts. Our
kernel's memory measured under Triton's interpreter (on the CPU) is labelled so.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from benchmarks.attention_measure import INTERPRETED_MEMORY_MEASURE, MEMORY_PASSES, PASSES
from benchmarks.common.measure import MIB
from benchmarks.common.plotting import log_axes, plot_series
from benchmarks.common.records import format_cell, markdown_table, write_markdown, wrote

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
PASS_LABELS = {
    "forward": "forward",
    "backward": "backward",
    "forward_backward": "forward + backward",
}


def _lookup(records: list[dict]) -> dict:
    return {
        (r["implementation"], r["head_dim"], r["causal"], r["seq_len"], r["measure"], r["pass"]): r
        for r in records
    }


def interpreted(records: list[dict], impl: str) -> bool:
    """Whether ``impl``'s memory was measured under Triton's interpreter (our kernel on the
    CPU)."""
    return any(
        r["implementation"] == impl
        and r["measure"] == "memory"
        and r["status"] == "ok"
        and INTERPRETED_MEMORY_MEASURE in r.get("memory_measure", "")
        for r in records
    )


def label(records: list[dict], impl: str, measure: str | None = None) -> str:
    """``impl``'s name in a legend (``measure`` None) or a table column; our kernel's says when
    its memory is torch allocations under the interpreter."""
    if not interpreted(records, impl) or measure == "time":
        return LABELS[impl]
    if measure == "memory":
        return f"{LABELS[impl]}, {INTERPRETED_MEMORY_MEASURE}"
    return f"{LABELS[impl]}: memory = {INTERPRETED_MEMORY_MEASURE}"


def memory_note(records: list[dict], env: dict) -> str:
    """What the memory panels and tables count, in one line."""
    where = (
        "torch.cuda.max_memory_allocated"
        if env["device_type"] == "cuda"
        else "torch's CPU allocator, read from torch.profiler"
    )
    text = f"Memory: torch allocations above the inputs ({where})"
    if any(interpreted(records, impl) for impl in LABELS):
        text += (
            "; ours on the CPU runs under the Triton interpreter: its outputs, log-sum-exp and "
            "buffers, what it allocates on a GPU (its time is not measured there)"
        )
    return text


def _config_label(head_dim: int, causal: bool) -> str:
    return f"head dim {head_dim}, {'causal' if causal else 'not causal'}"


def plot(records: list[dict], args, env: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = _lookup(records)
    configs = list(itertools.product(args.head_dims, args.causal_modes))
    panels = [("memory", p) for p in MEMORY_PASSES] + [("time", p) for p in PASSES]
    notes = [memory_note(records, env), *_absent_notes(records, args.impls)]
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
                        record = {**record, "peak_bytes": record["peak_bytes"] / MIB}
                    if record is not None:
                        by_length[n] = record
                style = {**STYLES[impl], "label": label(records, impl)}
                plotted |= plot_series(ax, args.lengths, by_length, key, style, slot)
            log_axes(ax, plotted)
            if row == 0:
                unit = "peak memory (MiB)" if measure == "memory" else "TFLOP/s"
                ax.set_title(f"{unit}\n{PASS_LABELS[pass_]}", fontsize=11)
            if col == 0:
                ax.set_ylabel(_config_label(head_dim, causal), fontsize=11)
            if row == len(configs) - 1:
                ax.set_xlabel("sequence length")
    handles = [
        plt.Line2D([], [], **{**STYLES[impl], "label": label(records, impl)}) for impl in args.impls
    ] + [
        plt.Line2D(
            [], [], marker="X", color="gray", linestyle="none", markersize=10, label="out of memory"
        )
    ]
    fig.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 1 - 0.45 / height),
        ncol=min(len(handles), 4),
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
    "(TRITON_INTERPRET=1), so its time would mean nothing",
    "unavailable": "kernels.flash_attention cannot be imported",
}
MEASURE_WORDS = {"memory": "memory", "time": "TFLOP/s"}


def _absent_notes(records: list[dict], impls) -> list[str]:
    """One line per implementation that has no measured point of a measure (memory or time),
    saying why; one line for both when they have the same reason."""
    notes = []
    for impl in impls:
        mine = [r for r in records if r["implementation"] == impl]
        groups = [
            (f" {MEASURE_WORDS[m]}", [r for r in mine if r["measure"] == m])
            for m in ("memory", "time")
            if not any(r["measure"] == m and r["status"] == "ok" for r in mine)
            and any(r["measure"] == m for r in mine)
        ]
        if len(groups) == 2 and len({group[0]["status"] for _, group in groups}) == 1:
            groups = [("", mine)]
        for what, group in groups:
            status = group[0]["status"]
            why = SHORT_NOTES.get(status) or (group[0].get("note") or "").splitlines()[0][:100]
            notes.append(f"{LABELS[impl]}{what}: {status} at every point -- {why}")
    return notes


def markdown(records: list[dict], ratio_records: list[dict], args, env: dict) -> str:
    table = _lookup(records)
    configs = list(itertools.product(args.head_dims, args.causal_modes))
    sections = []
    for measure, passes in (("memory", MEMORY_PASSES), ("time", PASSES)):
        header_impls = [label(records, i, measure) for i in args.impls]
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
                        row.append(format_cell(record, "peak_bytes", 1 / MIB))
                    else:
                        row.append(format_cell(record, "tflops"))
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
            sections.append(f"### {title}\n\n" + markdown_table(header, rows))
    notes = [memory_note(records, env), *_absent_notes(records, args.impls)]
    sections.append("\n".join(f"- {n}" for n in notes))
    return "\n\n".join(sections)


def report(payload: dict, stem: Path, wrote_json: bool = True) -> None:
    """Write ``stem``.png and ``stem``.md from a results payload and print the markdown; then
    what was written (``wrote_json``: ``stem``.json too)."""
    args = argparse.Namespace(**payload["settings"])
    env = payload["environment"]
    plot(payload["records"], args, env, Path(f"{stem}.png"))
    write_markdown(stem, env, markdown(payload["records"], payload["ratios"], args, env))
    print("\n" + wrote(stem, [".json"] * wrote_json + [".png", ".md"]))
