"""One point of the attention benchmark: one implementation, head dim, causal mode and length,
its peak memory or its median times (forward, backward, forward + backward), in bfloat16.

Memory is torch's allocations above the inputs (:func:`benchmarks.common.measure.peak_allocated`),
the same measure for every implementation. On the CPU our kernel runs under Triton's
interpreter: its memory is what it allocates through torch there, as on a GPU (outputs,
log-sum-exp, its buffers); its time means nothing and is not measured.

On CUDA a point runs in this process; on the CPU in a fresh child process per phase
(:mod:`benchmarks.common.isolation`), under the memory cap.
"""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.common.isolation import run_isolated
from benchmarks.common.measure import (
    attention_flops,
    cap_address_space,
    median_ms,
    peak_allocated,
)
from benchmarks.common.statuses import KERNEL_TIME_NOT_MEASURABLE_ON_CPU, failure
from transformer.attention import attend

IMPLEMENTATIONS = ("naive", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "sdpa_math", "triton")
PASSES = ("forward", "backward", "forward_backward")
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


# How each implementation's memory is measured, by device type (records and reports say it).
MEMORY_MEASURES = {
    "cuda": "torch allocations (torch.cuda.max_memory_allocated)",
    "cpu": "torch allocations (CPU allocator, torch.profiler)",
}
INTERPRETED_MEMORY_MEASURE = "torch allocations under the Triton interpreter"


def memory_measure(impl: str, device_type: str) -> str:
    """What a memory record of ``impl`` on ``device_type`` counts."""
    if impl == "triton" and device_type != "cuda":
        return f"{INTERPRETED_MEMORY_MEASURE} (CPU allocator, torch.profiler)"
    return MEMORY_MEASURES["cuda" if device_type == "cuda" else "cpu"]


def kernel_unmeasured(device: torch.device, measure: str) -> tuple[str, str] | None:
    """(status, note) when our kernel's ``measure`` ("memory" or "time") cannot be taken
    here, None when it can. On the CPU its memory is measured under the interpreter, its time
    is not."""
    try:
        from kernels import flash_attention  # noqa: F401 -- written concurrently; may be absent
    except ImportError as err:
        return "unavailable", f"kernels.flash_attention cannot be imported: {err}"
    if device.type != "cuda" and measure == "time":
        return "not_measurable", KERNEL_TIME_NOT_MEASURABLE_ON_CPU
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
        return {p: failure(err) for p in passes}
    records = {}
    try:
        q, k, v, dout = _inputs(spec, spec["seq_len"], requires_grad=True)
    except Exception as err:  # noqa: BLE001
        return {p: failure(err) for p in passes}
    if memory_cap_bytes is not None and measure == "time":
        # Repeated calls fragment the allocator's address space: a looser cap, so that a point
        # that fitted in its memory measurement is not failed by its repeats.
        memory_cap_bytes *= 2
    cap_address_space(memory_cap_bytes)
    flops_args = (spec["batch"], spec["heads"], spec["seq_len"], spec["seq_len"], spec["head_dim"])
    for pass_ in passes:
        try:
            fn = _pass_fn(call, q, k, v, dout, pass_)
            if measure == "memory":
                records[pass_] = {"status": "ok", "peak_bytes": peak_allocated(fn, device)}
            else:
                ms = median_ms(fn, device, [q, k, v], spec["cpu_repeats"])
                flops = attention_flops(*flops_args, spec["causal"], pass_)
                records[pass_] = {"status": "ok", "median_ms": ms, "tflops": flops / ms / 1e9}
            del fn
        except Exception as err:  # noqa: BLE001
            records[pass_] = failure(err, capped=memory_cap_bytes is not None)
        for t in (q, k, v):
            t.grad = None
    return records


def run_phase(spec: dict, device: torch.device, memory_cap_bytes: int | None) -> dict:
    if device.type == "cuda":
        result = measure_point(spec)
        torch.cuda.empty_cache()
        return result
    result = run_isolated("benchmarks.attention_measure:measure_point", spec, memory_cap_bytes)
    passes = spec["phase"][1]
    if set(result) != set(passes):  # the child died: the same failure for every pass
        return {p: dict(result) for p in passes}
    return result
