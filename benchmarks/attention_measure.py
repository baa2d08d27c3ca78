"""One point of the attention benchmark: one implementation, head dim, causal mode and length,
its peak memory or its median times (forward, backward, forward + backward), in bfloat16.

On CUDA a point runs in this process; on the CPU in a fresh child process per phase
(:mod:`benchmarks.common.isolation`), so nothing freed earlier is reused.
"""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.common.isolation import run_isolated
from benchmarks.common.measure import attention_flops, cap_address_space, median_ms, peak_memory
from benchmarks.common.statuses import NOT_MEASURABLE_ON_CPU, failure
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


def kernel_availability(device: torch.device) -> tuple[str, str] | None:
    """(status, note) when our kernel cannot be measured here, None when it can."""
    if device.type != "cuda":
        return "not_measurable", NOT_MEASURABLE_ON_CPU
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
                records[pass_] = {"status": "ok", "peak_bytes": peak_memory(fn, device)}
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
