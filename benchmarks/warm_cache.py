"""Compile every kernel a GPU session will launch into Triton's cache, on all CPU cores, before
anything is timed.

Each *case* (one call of a public kernel function at one shape, as
:class:`kernels.compile_gate.Case` describes it) runs the kernel's own launchers forward and
backward on ``meta`` tensors (shapes, no data, as the compile gate runs them), their launches
recorded with every configuration the tuner may time (or its first choice); the distinct
specialisations among them are compiled through Triton's JIT in a pool of worker processes
(:mod:`kernels.common.warm`: how, and why the JIT's ``warmup`` and not ``triton.compile``).
When the measured run later launches the same specialisation, the JIT computes the same key and
loads the kernel from disk instead of compiling it (tests/test_warm_cache.py checks, on the CPU
with a stand-in driver for an sm_90 target, that a fresh process then compiles nothing).

A warmed specialisation is only hit by a launch of the same specialisation: the cases mirror
the shapes each step of :mod:`benchmarks.gpu_report` launches (lengths of each divisibility
class, the heads each step uses). A launch that was not warmed still works: it compiles at first
use, as before.
"""

from __future__ import annotations

from collections.abc import Iterable

from kernels import compile_gate
from kernels.common import runtime
from kernels.common.warm import compile_ahead, compile_jobs, recording
from kernels.compile_gate import Case


def record_cases(every: Iterable[Case], first: Iterable[Case], arch: int) -> list[runtime.Launch]:
    """The launches of ``every`` case with every configuration the launcher may choose on
    ``arch`` (a compute capability), and of ``first`` with its first choice, recorded on
    ``meta`` tensors (nothing runs, nothing compiles)."""
    launches: list[runtime.Launch] = []
    for cases, configs in ((every, "every"), (first, "first")):
        for case in dict.fromkeys(cases):
            with recording(configs, arch=arch) as recorded:
                compile_gate.WORKLOADS[case.workload](case)
            launches += recorded
    return launches


def warm(
    every: Iterable[Case], first: Iterable[Case] = (), jobs: int | None = None, progress=False
) -> dict:
    """Warm ``every`` case with every configuration and ``first`` with the first choice, for the
    GPU this process sees, in a pool of ``jobs`` processes (default: one per core); a summary."""
    from triton.runtime import driver

    every, first = list(dict.fromkeys(every)), list(dict.fromkeys(first))
    launches = record_cases(every, first, driver.active.get_current_target().arch)
    report = compile_ahead(compile_jobs(launches), processes=jobs, progress=progress)
    return {
        "cases": len(every) + len(first),
        "launches_warmed": len(launches),
        "builds": report.builds,
        "failed": report.failed,
        "jobs": report.processes,
        "seconds": report.seconds,
    }


def count_builds(every: Iterable[Case], first: Iterable[Case], arch: int) -> int:
    """How many distinct kernel builds :func:`warm` compiles on ``arch`` (the compile gate's
    plan, which specialises without compiling: any machine with compiled-mode Triton)."""
    builds = compile_gate.plan(list(dict.fromkeys(every)), [arch], all_configs=True)
    # the first choice only: what warm(first=...) compiles (a quarter of planning every config)
    builds += compile_gate.plan(list(dict.fromkeys(first)), [arch], all_configs=False)
    return len({b.key() for b in builds})
