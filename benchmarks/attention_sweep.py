"""The attention benchmark's sweep: every implementation, head dim, causal mode and doubling
length, each point's memory and then (what fitted) its time; and our kernel's TFLOP/s over each
SDPA backend's from the same run. An implementation that runs out of memory at one length is
not run at longer ones (recorded as ``skipped``); on the CPU our kernel's memory is measured
under Triton's interpreter up to ``--interpreter-max-len`` (longer points: ``skipped``) and its
time not at all (``not_measurable``).
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
    kernel_unmeasured,
    memory_measure,
    run_phase,
)
from benchmarks.common.measure import MIB

# Which memory pass a timed pass needs to have fitted before it is timed.
TIME_NEEDS = {"forward": "forward", "backward": "forward_backward"}
TIME_NEEDS["forward_backward"] = "forward_backward"
# Every (measure, pass) of a point, in the order its records are written.
KEYS = [("memory", p) for p in MEMORY_PASSES] + [("time", p) for p in PASSES]


def batch_and_heads(args, seq_len: int, head_dim: int) -> tuple[int, int]:
    """Fixed (batch, heads), or FlashAttention's fixed tokens per batch and hidden size."""
    batch = max(1, args.tokens // seq_len) if args.tokens else args.batch
    heads = max(1, args.hidden // head_dim) if args.hidden else args.heads
    return batch, heads


def not_run(args, device: torch.device, impl: str, seq_len: int) -> dict:
    """(measure, pass) -> the record of each measurement that is not taken at this point, for
    reasons known before running it: our kernel missing, its time on the CPU, its memory on
    the CPU past ``args.interpreter_max_len``."""
    if impl != "triton":
        return {}
    records = {}
    for measure, passes in (("memory", MEMORY_PASSES), ("time", PASSES)):
        unmeasured = kernel_unmeasured(device, measure)
        if unmeasured is None and measure == "memory" and device.type != "cuda":
            if seq_len > args.interpreter_max_len:
                note = (
                    f"longer than --interpreter-max-len {args.interpreter_max_len}: the Triton "
                    "interpreter is slow"
                )
                unmeasured = ("skipped", note)
        if unmeasured is not None:
            status, note = unmeasured
            records |= {(measure, p): {"status": status, "note": note} for p in passes}
    return records


def point_records(spec: dict, device: torch.device, cap, out_of_memory: set, known: dict) -> dict:
    """(measure, pass) -> record for one point: its memory, then the time of what fitted.
    ``known``: what is already decided (:func:`not_run`); ``out_of_memory``: (measure, pass)
    that ran out of memory at a shorter length, skipped here."""
    point = dict(known)
    for pass_ in MEMORY_PASSES:
        if ("memory", pass_) in point:
            continue
        if ("memory", pass_) in out_of_memory:
            point["memory", pass_] = {
                "status": "skipped",
                "note": "out of memory at a shorter length",
            }
            continue
        phase = {**spec, "phase": ("memory", [pass_])}
        point["memory", pass_] = run_phase(phase, device, cap)[pass_]
    # Time only what fitted in memory: forward after the forward, the backward and forward +
    # backward after forward + backward.
    to_time = []
    for pass_ in PASSES:
        if ("time", pass_) in point:
            continue
        memory = point["memory", TIME_NEEDS[pass_]]
        if memory["status"] == "ok":
            to_time.append(pass_)
            continue
        note = memory.get("note") or ""
        if memory["status"] == "oom":
            note = "out of memory in the memory measurement"
        point["time", pass_] = {"status": memory["status"], "note": note}
    if to_time:
        result = run_phase({**spec, "phase": ("time", to_time)}, device, cap)
        for pass_ in to_time:
            point["time", pass_] = result[pass_]
    return point


def sweep(
    args, device: torch.device, on_point: Callable[[list[dict]], None] | None = None
) -> list[dict]:
    """Every point's records; ``on_point(records so far)`` after each point (the benchmark
    writes its results file then, so a run stopped midway keeps every finished point)."""
    configs = list(itertools.product(args.head_dims, args.causal_modes))
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
            started = time.perf_counter()
            known = not_run(args, device, impl, seq_len)
            point = point_records(spec, device, cap, out_of_memory, known)
            out_of_memory |= {key for key, record in point.items() if record["status"] == "oom"}
            seconds = round(time.perf_counter() - started, 3)  # the point's cost, for planning
            for measure, pass_ in KEYS:
                record = point[measure, pass_]
                if measure == "memory":
                    record = {**record, "memory_measure": memory_measure(impl, device.type)}
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
