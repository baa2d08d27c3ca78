"""Measuring one call: the FLOPs it does, its peak memory above the inputs, its median time.

Memory is the peak *above* what was held just before the call (the inputs), i.e. what the call
itself needs, measured one of two ways:

* :func:`peak_allocated`, torch's allocations: on CUDA ``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats``, around a second call at the measured shape (the first one
  autotunes, and autotuning's ``do_bench`` allocates a 256 MiB L2-flush buffer); on the CPU the
  blocks torch's CPU allocator hands out during the call, each counted from its allocation to its
  free, read from ``torch.profiler`` (``profile_memory=True``). Memory that libraries allocate
  past torch (oneDNN's scratch, numpy's arrays) is not counted, so a Triton kernel run by the
  interpreter on the CPU counts what it allocates through torch (outputs, log-sum-exp, its
  buffers: what it allocates on a GPU), not the interpreter's own numpy arrays.
* :func:`peak_memory`, what the process holds: CUDA as above; on the CPU the kernel's
  peak-resident-set counter of a fresh child process (:mod:`benchmarks.common.isolation`, forked
  from a server that has already imported torch), reset (``/proc/self/clear_refs``) and read
  back (``VmHWM``), so allocator caching from earlier points cannot hide memory.

A CPU child also caps its address space, so "out of memory" on the CPU means "over
``--cpu-memory-cap-mib``", never a machine brought to its knees.
"""

from __future__ import annotations

import contextlib
import ctypes
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

MIB = 2**20


# --- FLOPs ------------------------------------------------------------------------------------

PASS_FLOP_FACTOR = {"forward": 1.0, "backward": 2.5, "forward_backward": 3.5}


def attention_flops(
    batch: int, heads: int, len_q: int, len_k: int, head_dim: int, causal: bool, pass_: str
) -> float:
    """The usual convention: forward = two matmuls = 4·b·h·i·j·d, halved when causal; the
    backward counts 2.5× the forward (five matmuls against two), forward + backward 3.5×."""
    forward = 4.0 * batch * heads * len_q * len_k * head_dim
    if causal:
        forward /= 2
    return forward * PASS_FLOP_FACTOR[pass_]


# --- peak memory ------------------------------------------------------------------------------


def _proc_status_bytes(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM, VmSize), in bytes; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _ru_maxrss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _release_free_heap() -> None:
    """Hand memory that glibc's malloc holds free back to the kernel, so that the resident set
    is what is live and a later allocation shows up in the peak again (no-op off glibc)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _cuda_peak(fn: Callable[[], object], device: torch.device) -> int:
    """Bytes torch's CUDA allocator held above its level before ``fn()``, at the peak of a
    second call: the first call at a new length bucket autotunes
    (:func:`kernels.common.tuning.pick`), compiling and timing candidates with ``do_bench``,
    whose 256 MiB L2-flush buffer would otherwise be counted as the kernel's memory."""
    fn()  # warm-up at this shape: autotuning and its flush buffer stay outside the window
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - baseline


def _cpu_allocations(prof) -> list[tuple[int, int]]:
    """(address, signed bytes) of every CPU block allocated (+) or freed (-) while ``prof``
    recorded, in order."""
    events = []

    def walk(nodes):
        for node in nodes:
            fields = node.extra_fields
            if hasattr(fields, "alloc_size") and fields.device.type == "cpu":
                events.append((node.start_time_ns, len(events), fields.ptr, fields.alloc_size))
            walk(node.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    return [(ptr, size) for _, _, ptr, size in sorted(events)]


def peak_live_bytes(allocations: list[tuple[int, int]]) -> int:
    """The most bytes live at once over (address, signed bytes) allocations (+) and frees (-),
    in order. A free counts only for a block allocated among them: torch reports the free of
    a block it allocated before profiling began with a size remembered from an earlier profile
    (or not at all), which would otherwise lower the count."""
    live, peak, sizes = 0, 0, {}
    for ptr, size in allocations:
        if size > 0:
            sizes[ptr] = size
            live += size
            peak = max(peak, live)
        elif ptr in sizes:
            live -= sizes.pop(ptr)
    return peak


def peak_torch_cpu_allocations(fn: Callable[[], object]) -> int:
    """The most bytes that blocks allocated by ``fn()`` through torch's CPU allocator held at
    once, each from its allocation to its free (:func:`peak_live_bytes`)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return peak_live_bytes(_cpu_allocations(prof))


def peak_allocated(fn: Callable[[], object], device: torch.device) -> int:
    """Bytes torch allocated above what it held before ``fn()``, at the peak of running it: on
    CUDA the caching allocator's count (:func:`_cuda_peak`), on the CPU the profiler's record
    of the CPU allocator (:func:`peak_torch_cpu_allocations`)."""
    if device.type == "cuda":
        return _cuda_peak(fn, device)
    return peak_torch_cpu_allocations(fn)


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Bytes above what was allocated before ``fn()`` at the peak of running it: torch's CUDA
    allocations on CUDA (:func:`_cuda_peak`), the process's resident set on the CPU (meant to
    run in a fresh child process, see :mod:`benchmarks.common.isolation`)."""
    if device.type == "cuda":
        return _cuda_peak(fn, device)
    _release_free_heap()
    reset = _reset_peak_rss()
    baseline = _proc_status_bytes("VmRSS") if reset else None
    if baseline is None:  # no /proc: the child's high-water mark so far is the baseline
        baseline = _ru_maxrss_bytes()
    fn()
    peak = _proc_status_bytes("VmHWM") if reset else None
    return max(0, (peak if peak is not None else _ru_maxrss_bytes()) - baseline)


def cap_address_space(extra_bytes: int | None) -> None:
    """Let this process map at most ``extra_bytes`` more than it has now (CPU children only):
    past that the allocator fails, torch raises, and the point is recorded as out of memory."""
    size = _proc_status_bytes("VmSize")
    if extra_bytes is None or size is None:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = size + extra_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


# --- time -------------------------------------------------------------------------------------


def median_ms(
    fn: Callable[[], object],
    device: torch.device,
    grad_to_none: list[torch.Tensor] | None = None,
    cpu_repeats: int = 3,
) -> float:
    """Median milliseconds of ``fn()`` after warm-up: ``triton.testing.do_bench`` on CUDA
    (which also flushes the L2 cache between runs); on the CPU, one warm-up call then the
    median of ``cpu_repeats`` wall-clock runs.

    ``do_bench`` times with events on the *current* device's stream (and synchronizes and
    allocates its flush buffer there), so ``device`` is made current for it: timing tensors on
    ``cuda:1`` while ``cuda:0`` is current would otherwise time an idle stream."""
    if device.type == "cuda":
        from triton.testing import do_bench

        with torch.cuda.device(device):
            fn()  # autotuning at this shape happens here, not in do_bench's estimate of fn's time
            return float(do_bench(fn, grad_to_none=grad_to_none, return_mode="median"))
    fn()
    times = []
    for _ in range(cpu_repeats):
        for t in grad_to_none or ():
            t.grad = None
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
