"""Compiling kernels ahead of time: launches recorded instead of run, reduced to what Triton's JIT
specialises on, and compiled in a pool of processes (one per CPU core) without launching them.

Triton compiles a kernel the first time it is launched with a new specialisation (dtype,
constexprs, each integer's divisibility by 16 or equality to 1, each pointer's alignment), about
a second each, one at a time, in the middle of whatever runs then. Ahead of time:

1. :func:`recording`: the code that will run (a model's steps, a kernel call on ``meta``
   tensors) runs under a :class:`~kernels.common.runtime.Hook` that records every launch instead
   of running it (outputs stay uninitialised), the tuner launching every candidate
   configuration it may time (``configs="every"``) or its first choice only.
2. :meth:`CompileJob.of`: each recorded launch becomes a small picklable job: the kernel by
   module and name, each argument replaced by a stand-in of its specialisation class (a tensor
   by :class:`PointerArg`, its dtype and alignment; an integer by a representative of its class,
   chosen with Triton's own specialisation function), and the keyword arguments as they were.
   Nothing here knows a kernel's signature: jobs are generic over the launch's arguments, so
   two launches Triton would compile once are one job.
3. :func:`compile_ahead`: the distinct jobs are compiled in worker processes through the JIT's
   own ``warmup`` (:func:`compile_job`): its binder, specialisation, options and cache key, up
   to, not including, the launch. The compiled kernels land in Triton's on-disk cache
   (``TRITON_CACHE_DIR``); the real launch later computes the same key and loads the kernel
   instead of compiling it. (Why the JIT's ``warmup`` and not ``triton.compile`` as the compile
   gate does for foreign architectures: the key the JIT looks up includes options the JIT adds
   before hashing, which differ between Triton versions; calling the JIT is the same path by
   construction.)

A launch that was not warmed still works: it compiles at first use.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from kernels.common import runtime

# One representative per class of scalar Triton's JIT tells apart (equal to 1, divisible by 16,
# neither; 32 or 64 bits, signed or not; a float): an argument is replaced by the first of these
# of its type that Triton specialises as it specialises the argument.
SCALAR_STAND_INS = (1, 16, 3, 2**32, 2**32 + 1, 2**63, 2**63 + 1, 1.0)


@dataclass(frozen=True)
class PointerArg:
    """A tensor argument as Triton's JIT sees it when it specialises a launch: its dtype, and
    whether its address is a multiple of 16 (the only question the JIT asks of it)."""

    dtype: torch.dtype
    aligned: bool

    def data_ptr(self) -> int:
        return 0 if self.aligned else 8


def specialisation(arg: Any) -> tuple:
    """What Triton's JIT keys a compiled kernel on for one (non-constexpr) argument: its type
    and its specialisation (``("i32", "D")`` for an integer divisible by 16, ...)."""
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import native_specialize_impl

    return tuple(native_specialize_impl(BaseBackend, arg, False, True, True))


def stand_in(arg: Any) -> Any:
    """``arg`` as a compile job keeps it: a tensor as a :class:`PointerArg`, a scalar as the
    representative of its specialisation class, anything else (None, a bool, a constexpr) as is."""
    if hasattr(arg, "data_ptr") and hasattr(arg, "dtype"):  # a tensor, or a view Triton made
        return PointerArg(arg.dtype, arg.data_ptr() % 16 == 0)
    if isinstance(arg, (int, float)) and not isinstance(arg, bool):
        kind = specialisation(arg)
        for candidate in SCALAR_STAND_INS:
            if type(candidate) is type(arg) and specialisation(candidate) == kind:
                return candidate
    return arg


@dataclass(frozen=True)
class CompileJob:
    """One kernel specialisation to compile: ``module.name`` called with ``args`` (stand-ins) and
    ``meta`` (constexprs, ``num_warps``, ``num_stages``, as sorted pairs)."""

    module: str
    name: str
    args: tuple
    meta: tuple = field(default=())

    @classmethod
    def of(cls, launch: runtime.Launch) -> CompileJob:
        """The job of one launch: each positional argument as its :func:`stand_in`, but one the
        kernel declares ``tl.constexpr`` (compiled in by value) as it is."""
        fn = getattr(launch.kernel, "fn", launch.kernel)  # a JITFunction's (or the interpreter's)
        constexprs = _constexpr_positions(fn)
        return cls(
            fn.__module__,
            fn.__name__,
            tuple(a if i in constexprs else stand_in(a) for i, a in enumerate(launch.args)),
            tuple(sorted(launch.meta.items())),
        )

    def kernel(self):
        return getattr(importlib.import_module(self.module), self.name)

    def label(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.meta)})"


def _constexpr_positions(fn) -> set[int]:
    """The positions of ``fn``'s parameters annotated ``tl.constexpr``."""
    parameters = inspect.signature(fn).parameters.values()
    return {i for i, p in enumerate(parameters) if "constexpr" in str(p.annotation)}


@contextlib.contextmanager
def recording(
    configs: Literal["pick", "every", "first"] = "every", arch: int | None = None
) -> Iterator[list[runtime.Launch]]:
    """Within the block, kernel launches are recorded (appended to the list it yields), not run:
    their outputs stay uninitialised. ``configs``: the tuner launches every candidate
    configuration (``"every"``, what autotuning may compile), its first choice (``"first"``) or
    its choice as usual (``"pick"``); ``arch``: the compute capability whose launch tables are
    used (None: the tensors' GPU's; ``meta`` tensors need one)."""
    launches: list[runtime.Launch] = []

    def record(launch: runtime.Launch) -> None:
        launches.append(launch)

    with runtime.hooked(runtime.Hook(record, arch=arch, configs=configs)):
        yield launches


def compile_jobs(launches: Iterable[runtime.Launch]) -> list[CompileJob]:
    """The distinct specialisations among ``launches``, in the order first launched."""
    return list(dict.fromkeys(CompileJob.of(launch) for launch in launches))


def compile_job(job: CompileJob) -> float:
    """Compile ``job`` (or find it in Triton's cache) through the JIT's ``warmup``, launching
    nothing; the seconds it took. Runs in a worker process; under the interpreter a no-op."""
    start = time.perf_counter()
    job.kernel().warmup(*job.args, grid=(1,), **dict(job.meta))
    return time.perf_counter() - start


@dataclass
class CompileReport:
    """What :func:`compile_ahead` did: distinct builds, worker processes, wall seconds, the
    builds that failed ("label: error"; the launch would fail alike, or the tuner pass it over)."""

    builds: int
    processes: int
    seconds: float
    failed: list[str] = field(default_factory=list)


def compile_ahead(
    jobs: Iterable[CompileJob],
    processes: int | None = None,
    compile: Callable[[CompileJob], Any] = compile_job,
    progress: bool = False,
) -> CompileReport:
    """Compile each distinct job once, ``processes`` at a time in worker processes (default:
    one per CPU core this process may run on, :func:`usable_cores`; at most one per job), with
    a progress bar on stderr if ``progress``.

    ``compile(job)`` compiles one job in a worker (default :func:`compile_job`; it must be
    importable by name from a fresh process). A job that fails is reported, not raised."""
    todo = list(dict.fromkeys(jobs))
    processes = max(1, min(processes or usable_cores(), len(todo) or 1))
    start, failed = time.perf_counter(), []
    if todo:
        with ProcessPoolExecutor(max_workers=processes, mp_context=spawn_context()) as pool:
            futures = {pool.submit(compile, job): job for job in todo}
            for future in progress_bar(as_completed(futures), progress, len(todo)):
                error = future.exception()
                if error is not None:
                    failed.append(f"{futures[future].label()}: {type(error).__name__}: {error}")
    return CompileReport(len(todo), processes, time.perf_counter() - start, failed)


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity set where the OS has one (a batch
    job's or container's cores, taskset), else every core. ``os.cpu_count()`` counts the whole
    machine: on a 128-core node where a job holds 16, it would start 128 workers, each
    importing torch (hundreds of MB), on 16 cores."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def spawn_context():
    """Worker processes start fresh (spawn): a forked Triton/torch (or CUDA) state is not safe to
    reuse."""
    import multiprocessing

    return multiprocessing.get_context("spawn")


def progress_bar(items, enabled: bool, total: int | None = None, unit: str = "build"):
    """``items``, with a progress bar on stderr when ``enabled``."""
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, unit=unit, file=sys.stderr, desc="compiling kernels")
