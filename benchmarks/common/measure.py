"""Measuring one call: the FLOPs it does, its peak memory above the inputs, its median time.

Memory is the peak *above* what was held just before the call (the inputs), i.e. what the call
itself needs. On CUDA that is ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``, around a second call at the measured shape (the first one
autotunes, and autotuning's ``do_bench`` allocates a 256 MiB L2-flush buffer). On the CPU each
point runs in a fresh child process (:mod:`benchmarks.common.isolation`, forked from a server
that has already imported torch), which resets the kernel's peak-resident-set counter
(``/proc/self/clear_refs``) and reads it back (``VmHWM``), so allocator caching from earlier
points cannot hide memory; the child also caps its address space, so "out of memory" on the CPU
means "over ``--cpu-memory-cap-mib``", never a machine brought to its knees.
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


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Bytes above what was allocated before ``fn()`` at the peak of running it.

    On CUDA ``fn()`` runs once before the window opens, at the measured shape: the kernels'
    first call at a new length bucket autotunes (:func:`kernels.common.tuning.pick`), compiling and
    timing candidates with ``do_bench``, whose 256 MiB L2-flush buffer would otherwise be
    counted as the kernel's memory. Only the second call is measured.
    """
    if device.type == "cuda":
        fn()  # warm-up at this shape: autotuning and its flush buffer stay outside the window
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - baseline
    # CPU: meant to run in a fresh child process (see benchmarks.common.isolation).
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
    median of ``cpu_repeats`` wall-clock runs."""
    if device.type == "cuda":
        from triton.testing import do_bench

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
