"""The attention benchmark's sweep: every implementation, head dim, causal mode and doubling
length, each point's memory and then (what fitted) its time; and our kernel's TFLOP/s over each
SDPA backend's from the same run. An implementation that runs out of memory at one length is
not run at longer ones (recorded as ``skipped``).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import torch
from tqdm import tqdm

from benchmarks.attention_measure import (
    IMPLEMENTATIONS,
    MEMORY_PASSES,
    PASSES,
    kernel_availability,
    run_phase,
)
from benchmarks.common.measure import MIB


def batch_and_heads(args, seq_len: int, head_dim: int) -> tuple[int, int]:
    """Fixed (batch, heads), or FlashAttention's fixed tokens per batch and hidden size."""
    batch = max(1, args.tokens // seq_len) if args.tokens else args.batch
    heads = max(1, args.hidden // head_dim) if args.hidden else args.heads
    return batch, heads


def sweep(
    args, device: torch.device, on_point: Callable[[list[dict]], None] | None = None
) -> list[dict]:
    """Every point's records; ``on_point(records so far)`` after each point (the benchmark
    writes its results file then, so a run stopped midway keeps every finished point)."""
    configs = list(itertools.product(args.head_dims, args.causal_modes))
    kernel_missing = kernel_availability(device) if "triton" in args.impls else None
    cap = None if device.type == "cuda" else args.cpu_memory_cap_mib * MIB
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
            started = time.perf_counter()
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
            seconds = round(time.perf_counter() - started, 3)  # the point's cost, for planning
            for (measure, pass_), record in point.items():
                records.append(
                    {**base, "measure": measure, "pass": pass_, **record, "point_seconds": seconds}
                )
            if on_point is not None:
                on_point(records)
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
