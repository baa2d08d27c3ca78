"""Compiling what the cases launch, in a process pool: every config, or the launcher's order until
a config compiles without spills; each distinct build once."""

from __future__ import annotations

import itertools
from concurrent.futures import ProcessPoolExecutor

from kernels.common.warm import progress_bar, spawn_context
from kernels.compile_gate.builds import Build, compile_build
from kernels.compile_gate.capture import plan


def run(cases_every, cases_first, archs_every, archs_first, jobs, progress=True) -> list[Build]:
    """Compile what the cases launch: every config of cases_every on archs_every; everything
    else (cases_first anywhere, cases_every on the other archs_first) in the launcher's order
    until one config compiles without spills, as the launcher itself picks with autotuning off.
    Each distinct build is compiled once."""
    builds = plan(cases_every + cases_first, sorted(set(archs_every) | set(archs_first)), True)
    every = {c.label() for c in cases_every}
    eager = [b for b in builds if b.arch in archs_every and every & set(b.cases)]
    done: dict[str, Build] = {}
    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=spawn_context()) as pool:
        for round_ in itertools.count():
            todo = eager if round_ == 0 else []
            todo = {b.key(): b for b in todo + _next_choices(builds, done, round_)}
            todo = [b for k, b in todo.items() if k not in done]
            if not todo:
                break
            if progress:
                print(f"round {round_}: compiling {len(todo)} builds", flush=True)
            for build in progress_bar(
                pool.map(compile_build, todo, chunksize=2), progress, len(todo)
            ):
                done[build.key()] = build
    return list(done.values())


def _next_choices(builds: list[Build], done: dict[str, Build], round_: int) -> list[Build]:
    """The builds ranked ``round_`` for every (arch, case, kernel) with no spill-free build yet."""
    settled = set()
    for build in builds:
        compiled = done.get(build.key())
        if compiled is not None and compiled.ok and compiled.local_bytes == 0:
            settled.update((build.arch, serves) for serves in build.ranks)
    return [
        build
        for build in builds
        for serves, rank in build.ranks.items()
        if rank == round_ and (build.arch, serves) not in settled
    ]
