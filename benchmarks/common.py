"""What both benchmark scripts share: the environment record, FLOP counting, OOM-safe peak-memory
and timing measurement, and writing results as JSON, a PNG plot and a markdown table.

Every measured point ends with one status:

    ok              measured
    oom             out of memory (CUDA OutOfMemoryError; on the CPU, over the per-point cap)
    unsupported     the implementation refused the shape (e.g. an SDPA backend this machine
                    or this head dim does not have)
    not_measurable  runs here, but a number would mean nothing (the Triton kernel on the CPU
                    runs only under the numpy interpreter)
    unavailable     the implementation cannot be imported here
    skipped         not run: an earlier, cheaper point already ran out of memory
    error           anything else; ``note`` holds the message

Memory is the peak *above* what was held just before the call (the inputs), i.e. what the call
itself needs. On CUDA that is ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``, around a second call at the measured shape (the first one
autotunes, and autotuning's ``do_bench`` allocates a 256 MiB L2-flush buffer). On the CPU each point runs in a fresh child process (forked from a
server that has already imported torch), which resets the kernel's peak-resident-set counter
(``/proc/self/clear_refs``) and reads it back (``VmHWM``), so allocator caching from earlier
points cannot hide memory; the child also caps its address space, so "out of memory" on the CPU
means "over ``--cpu-memory-cap-mib``", never a machine brought to its knees.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import importlib
import importlib.metadata
import json
import math
import multiprocessing
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from transformer.translation.cli import HelpFormatter

RESULTS_DIR = Path(__file__).resolve().parent / "results"

STATUSES = ("ok", "oom", "unsupported", "not_measurable", "unavailable", "skipped", "error")

# How each non-ok status is written in tables.
STATUS_LABELS = {
    "oom": "OOM",
    "unsupported": "unsupported",
    "not_measurable": "n/m",
    "unavailable": "unavailable",
    "skipped": "skipped",
    "error": "error",
}

NOT_MEASURABLE_ON_CPU = (
    "not measurable on CPU: the Triton kernel runs here only under TRITON_INTERPRET=1, a numpy "
    "interpreter whose memory and speed say nothing about the compiled GPU kernel"
)

MIB = 2**20


# --- the environment --------------------------------------------------------------------------


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def environment(device: torch.device) -> dict:
    """Device, driver, library versions, date and command line, for every results file."""
    env = {
        "device_type": device.type,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.orig_argv[1:]]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _package_version("triton"),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            device_name=torch.cuda.get_device_name(device),
            device_memory_bytes=props.total_memory,
            driver=_nvidia_driver(),
            cuda_runtime=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        env.update(
            device_name=_cpu_name(),
            driver=None,
            cpu_count=os.cpu_count(),
            torch_threads=1,
        )
    return env


def device_tag(device: torch.device) -> str:
    """The device kind in result file names: ``cpu``, or the GPU's name, e.g. ``h100``."""
    if device.type != "cuda":
        return device.type
    name = torch.cuda.get_device_name(device).lower()
    for known in ("h200", "h100", "a100", "l40s", "l4", "a10g", "v100", "t4"):
        if known in name:
            return known
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def doubling(start: int, stop: int) -> list[int]:
    """start, 2·start, 4·start, ... up to and including stop."""
    lengths = []
    n = start
    while n <= stop:
        lengths.append(n)
        n *= 2
    return lengths


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


# --- failures ---------------------------------------------------------------------------------


def is_oom(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator failing (here: hitting the cap)."""
    if isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "can't allocate memory" in text
        or "not enough memory" in text
        or "out of memory" in text.lower()
    )


def is_unsupported(err: BaseException) -> bool:
    """SDPA's answer when the backends allowed by ``sdpa_kernel`` all refuse the inputs."""
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "No available kernel" in text or "No viable backend" in text
    )


def failure(err: BaseException, capped: bool = False) -> dict:
    """A result record for a call that raised. ``capped``: under ``cap_address_space``, where
    oneDNN reports a failed allocation as "could not create a primitive"."""
    if capped and "could not create a primitive" in str(err):
        return {"status": "oom", "note": "oneDNN could not create a primitive under the cap"}
    if is_oom(err):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"status": "oom", "note": str(err).splitlines()[0][:200]}
    if is_unsupported(err):
        return {"status": "unsupported", "note": str(err).splitlines()[0][:200]}
    return {"status": "error", "note": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}


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
    first call at a new length bucket autotunes (:func:`kernels.launch.pick`), compiling and
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
    # CPU: meant to run in a fresh child process (see run_isolated).
    _release_free_heap()
    reset = _reset_peak_rss()
    baseline = _proc_status_bytes("VmRSS") if reset else None
    if baseline is None:  # no /proc: the child's high-water mark so far is the baseline
        baseline = _ru_maxrss_bytes()
    fn()
    peak = _proc_status_bytes("VmHWM") if reset else None
    return max(0, (peak if peak is not None else _ru_maxrss_bytes()) - baseline)


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


# --- isolation: one fresh process per CPU point -----------------------------------------------

_CONTEXT: multiprocessing.context.BaseContext | None = None


def _context() -> multiprocessing.context.BaseContext:
    """Fork children from a server that has imported torch and the model already: a fresh
    process per point for a few milliseconds, not the seconds a spawn spends on imports."""
    global _CONTEXT
    if _CONTEXT is None:
        methods = multiprocessing.get_all_start_methods()
        _CONTEXT = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if "forkserver" in methods:
            # The first backward imports symbolic_shapes (and sympy): half a second a child.
            # The scripts themselves are left out: a child re-runs its __main__ module anyway.
            _CONTEXT.set_forkserver_preload(
                [
                    "torch",
                    "torch.fx.experimental.symbolic_shapes",
                    "transformer.model",
                    "benchmarks.common",
                ]
            )
    return _CONTEXT


def _child(target: str, spec: dict, memory_cap_bytes: int | None, conn) -> None:
    torch.set_num_threads(1)  # the machine is shared; and a fair single-thread comparison
    try:
        module_name, function_name = target.split(":")
        function = getattr(importlib.import_module(module_name), function_name)
        result = function(spec, memory_cap_bytes)
    except BaseException as err:  # noqa: BLE001 -- report everything back to the parent
        result = failure(err)
        if result["status"] == "error":
            result["note"] += "\n" + traceback.format_exc(limit=3)
    conn.send(result)
    conn.close()


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


def run_isolated(target: str, spec: dict, memory_cap_bytes: int | None) -> dict:
    """``module:function`` called as ``function(spec, memory_cap_bytes)`` in a fresh process;
    its dict result, or an oom/error record if the child died (killed: out of memory)."""
    ctx = _context()
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(target, spec, memory_cap_bytes, child_conn))
    process.start()
    child_conn.close()
    result = None
    with contextlib.suppress(EOFError):
        result = parent_conn.recv()
    process.join()
    if result is not None:
        return result
    if process.exitcode == -9:
        return {"status": "oom", "note": "child process killed (SIGKILL), most likely for memory"}
    note = f"child process exited with code {process.exitcode}"
    if process.exitcode == -11 and memory_cap_bytes is not None:
        note += " (SIGSEGV: a library that does not check for failed allocations hit the cap?)"
    return {"status": "error", "note": note}


# --- writing results --------------------------------------------------------------------------


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def format_cell(record: dict | None, key: str, scale: float = 1.0, digits: int = 3) -> str:
    """A number to ``digits`` significant figures, or the record's status label."""
    if record is None:
        return ""
    if record["status"] != "ok":
        return STATUS_LABELS[record["status"]]
    value = record[key] * scale
    if value == 0:
        return "0"
    return f"{value:.{max(0, digits - 1 - math.floor(math.log10(abs(value))))}f}"


def plot_series(
    ax, lengths: list[int], records_by_length: dict[int, dict], key: str, style, slot=0
):
    """One implementation's line on a log-log axis: measured points joined, the first OOM
    marked with a cross near the top of the axis at its length (``slot`` staggers the crosses
    of implementations that run out of memory at the same length)."""
    xs = [n for n in lengths if records_by_length.get(n, {}).get("status") == "ok"]
    ys = [records_by_length[n][key] for n in xs]
    if xs:
        ax.plot(xs, ys, **style)
    oom = [n for n in lengths if records_by_length.get(n, {}).get("status") == "oom"]
    if oom:
        ax.plot(
            [oom[0]],
            [0.95 - 0.07 * slot],
            marker="X",
            markersize=10,
            linestyle="none",
            color=style["color"],
            transform=ax.get_xaxis_transform(),
            clip_on=False,
        )
    return bool(xs)


def log_axes(ax, any_data: bool) -> None:
    """Log-scaled axes with plain tick labels, lengths on x in base 2, and head-room at the top
    for the out-of-memory crosses (y stays linear on a panel with no data)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(format_length))
    ax.grid(True, which="both", alpha=0.3)
    if not any_data:
        return
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ax.set_ylim(low, high * (high / low) ** 0.2)
    if high / low < 100:  # within a decade or two, ticks at 1, 2, 3, 5 of each decade
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(_plain_number))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _plain_number(y: float, _position=None) -> str:
    return f"{y:.0f}" if y >= 100 else f"{y:.3g}"


def format_length(n: float, _position=None) -> str:
    """Sequence lengths on an axis: 512, 4k, 64k."""
    return f"{n / 1024:g}k" if n >= 1024 else f"{n:g}"


# --- command line shared by the benchmark scripts ---------------------------------------------


def benchmark_parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by the script's docstring, with the --device option every script has."""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cuda", "cpu"),
        help="where to measure; auto: CUDA if present, else the CPU",
    )
    return parser


def add_cpu_and_output_arguments(
    parser: argparse.ArgumentParser, stem: str, memory_cap_mib: int, repeats_help: str
) -> None:
    """The CPU measurement and results-file options every script has."""
    parser.add_argument("--cpu-repeats", type=int, default=3, help=repeats_help)
    parser.add_argument(
        "--cpu-memory-cap-mib",
        type=int,
        default=memory_cap_mib,
        help="on the CPU, a point that needs more than this is recorded as out of memory",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=RESULTS_DIR,
        help="directory for the results' JSON, PNG and markdown",
    )
    parser.add_argument(
        "--replot",
        type=Path,
        default=None,
        metavar="JSON",
        help="measure nothing: redraw the PNG and markdown of a results file (e.g. one from a GPU)",
    )
    parser.add_argument("--tag", default=None, help=f"file name stem; default {stem}_<device kind>")
