"""benchmarks.warm_cache and kernels.common.warm on the CPU: what a compile job compiles through
Triton's JIT (a case's launches recorded on meta tensors, reduced to jobs) is what a fresh
process's JIT then finds in the cache (it compiles nothing), for an sm_90 target.

No GPU here: a stand-in for Triton's CUDA driver answers the three questions the JIT asks
before a launch (target, device, stream); the compile itself is the real one (Triton ships the
compiler and ptxas). ``warmup`` never launches, so nothing else of the driver is needed.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
from triton.backends.compiler import GPUTarget
from triton.compiler import compiler
from triton.runtime import driver

class StandInDriver:
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)
    def get_current_device(self):
        return 0
    def get_current_stream(self, device=None):
        return 0

driver.set_active(StandInDriver())
compiled = []
real_make_ir = compiler.ASTSource.make_ir
def counting_make_ir(self, *args, **kwargs):  # runs only when the cache has no such kernel
    compiled.append(self.fn.__name__)
    return real_make_ir(self, *args, **kwargs)
compiler.ASTSource.make_ir = counting_make_ir

from benchmarks import warm_cache
from kernels.common import warm
from kernels.compile_gate import Case
case = Case("flash_attention", "float16", 16, "none", len_q=16, len_k=16, batch=1, heads=2)
launches = warm_cache.record_cases([], [case], arch=90)
jobs = warm.compile_jobs(launches)
if sys.argv[1] == "jobs":  # as the warm-up compiles: each distinct job, its stand-in arguments
    for job in jobs:
        warm.compile_job(job)
else:  # as the real launch's JIT looks up: every launch, with CPU tensors of its layout
    import torch
    def real(arg):
        if not isinstance(arg, torch.Tensor):
            return arg
        return torch.empty_strided(arg.shape, arg.stride(), dtype=arg.dtype, device="cpu")
    for launch in launches:
        launch.kernel.warmup(*map(real, launch.args), grid=launch.grid, **launch.meta)
print(len(jobs), len(compiled))
"""


def warm_in_a_fresh_process(cache_dir: Path, mode: str = "jobs") -> tuple[int, int]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(cache_dir), PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, env=env, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    jobs, compiles = map(int, done.stdout.split())
    return jobs, compiles


@pytest.mark.slow  # three processes, four sm_90 compiles: ~20 s of CPU
def test_a_fresh_process_finds_every_warmed_kernel_in_the_cache(tmp_path):
    jobs, compiles = warm_in_a_fresh_process(tmp_path)
    assert jobs == compiles == 4  # forward, delta, dK/dV, dQ: each compiled once
    again, compiles = warm_in_a_fresh_process(tmp_path)
    assert (again, compiles) == (jobs, 0)  # the JIT's own lookup found every one
    # launches with real tensors (not the jobs' stand-ins) look up the same keys
    again, compiles = warm_in_a_fresh_process(tmp_path, "launches")
    assert (again, compiles) == (jobs, 0)
