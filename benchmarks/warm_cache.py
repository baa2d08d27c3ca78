"""Compile every kernel a GPU session will launch into Triton's cache, on all CPU cores, before
anything is timed.

Triton compiles a kernel the first time it is launched with a new specialisation (dtype,
constexprs, integers' divisibility by 16, ...), about a second each, one at a time, in the
middle of whatever is being measured. Here each *case* (one call of a public kernel function at
one shape, as :class:`kernels.compile_gate.Case` describes it) runs in a worker process of a
pool: the kernel's own launchers run forward and backward on ``meta`` tensors (shapes, no data,
as the compile gate runs them) under a :class:`kernels.common.runtime.Hook` that makes the tuner
launch every configuration it may time, and hands each launch to Triton's
``JITFunction.warmup``: the JIT's own path (binder, specialisation, options, cache key, compile)
up to, not including, the launch. The compiled kernel lands in ``TRITON_CACHE_DIR``; when the
measured run later launches the same specialisation, the JIT computes the same key and loads the
kernel from disk instead of compiling it.

Why the JIT's ``warmup`` and not ``triton.compile(ASTSource(...))`` as the compile gate does:
the key the JIT looks up includes options the JIT adds itself before hashing (``debug``,
instrumentation knobs; they differ between Triton versions), so a hand-built compile can miss
the JIT's key in one version and not another. Calling the JIT is the same code path by
construction, on every version (tests/test_warm_cache.py checks, on the CPU with a stand-in
driver for an sm_90 target, that a fresh process then compiles nothing).

A warmed specialisation is only hit by a launch of the same specialisation: the cases mirror
the shapes each step of :mod:`benchmarks.gpu_report` launches (lengths of each divisibility
class, the heads each step uses). A launch that was not warmed still works: it compiles at first
use, as before.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor

from kernels import compile_gate
from kernels.compile_gate import Case


def warm_case(case: Case, every_config: bool = True) -> tuple[str, int, float]:
    """Compile (or find in the cache) every kernel ``case`` launches, with every configuration
    the launcher may choose (else its first choice); (label, launches, seconds). Runs in a
    worker process."""
    from triton.runtime import driver

    from kernels.common import runtime

    launches = 0

    def jit_warmup(launch: runtime.Launch) -> None:
        nonlocal launches
        launch.kernel.warmup(*launch.args, grid=launch.grid, **launch.meta)
        launches += 1

    # meta tensors have no CUDA device to ask: the launch tables of the GPU this process sees
    hook = runtime.Hook(
        jit_warmup,
        arch=driver.active.get_current_target().arch,
        configs="every" if every_config else "first",
    )
    start = time.perf_counter()
    with runtime.hooked(hook):
        compile_gate.WORKLOADS[case.workload](case)
    return case.label(), launches, time.perf_counter() - start


def warm(every: Iterable[Case], first: Iterable[Case] = (), jobs: int | None = None) -> dict:
    """Warm ``every`` case with every configuration and ``first`` with the first choice, in a
    pool of ``jobs`` processes (default: one per core); a summary."""
    every = list(dict.fromkeys(every))
    work = [(c, True) for c in every] + [(c, False) for c in dict.fromkeys(first)]
    jobs = jobs or os.cpu_count() or 1
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=compile_gate.spawn_context()) as pool:
        done = list(pool.map(warm_case, *zip(*work, strict=True))) if work else []
    return {
        "cases": len(work),
        "launches_warmed": sum(n for _, n, _ in done),
        "jobs": jobs,
        "seconds": time.perf_counter() - start,
        "per_case_seconds": {label: round(s, 2) for label, _, s in done},
    }


def count_builds(every: Iterable[Case], first: Iterable[Case], arch: int) -> int:
    """How many distinct kernel builds :func:`warm` compiles on ``arch`` (the compile gate's
    plan, which specialises without compiling: any machine with compiled-mode Triton)."""
    builds = compile_gate.plan(list(dict.fromkeys(every)), [arch], all_configs=True)
    # the first choice only: what warm(first=...) compiles (a quarter of planning every config)
    builds += compile_gate.plan(list(dict.fromkeys(first)), [arch], all_configs=False)
    return len({b.key() for b in builds})
