"""kernels.common.warm on the CPU: launches reduced to what Triton's JIT specialises on (each
stand-in specialises as the argument it replaces, so launches Triton compiles once are one job),
and the parallel compile driver (worker processes, each job once, failures reported), with a
stand-in compile function. The real compile through the JIT: tests/test_warm_cache.py."""

import os
import pickle
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.common import runtime, warm


class FakeKernel:
    """Enough of a kernel for CompileJob.of: a function to name."""

    def __init__(self, fn):
        self.fn = fn


def _kernel(x_ptr, n):
    pass


KERNEL = FakeKernel(_kernel)


def launch(*args, **meta) -> runtime.Launch:
    return runtime.Launch(KERNEL, (1,), args, meta)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.integers(-(2**40), 2**40), st.integers(2**62, 2**64 - 1), st.floats()))
def test_a_scalar_stand_in_specialises_as_the_scalar(value):
    assert warm.specialisation(warm.stand_in(value)) == warm.specialisation(value)
    assert type(warm.stand_in(value)) is type(value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.uint8])
@pytest.mark.parametrize("offset", [0, 1, 8, 16])
def test_a_tensor_stand_in_specialises_as_the_tensor(dtype, offset):
    tensor = torch.empty(64, dtype=dtype)[offset:]
    stand_in = warm.stand_in(tensor)
    assert isinstance(stand_in, warm.PointerArg)
    assert warm.specialisation(stand_in) == warm.specialisation(tensor)
    assert stand_in.aligned == (tensor.data_ptr() % 16 == 0)


def test_launches_triton_compiles_once_are_one_job():
    x = torch.empty(8)
    same = [launch(x, 48, BLOCK=64), launch(x, 32, BLOCK=64), launch(x.clone(), 0, BLOCK=64)]
    other = [launch(x, 33, BLOCK=64), launch(x, 1, BLOCK=64), launch(x, 48, BLOCK=32)]
    other.append(launch(x.half(), 48, BLOCK=64))
    jobs = warm.compile_jobs(same + other)
    assert len(jobs) == 1 + len(other)
    assert jobs[0] == warm.CompileJob.of(same[0])


def _kernel_with_a_constexpr(x_ptr, n, BLOCK: "tl.constexpr"):  # noqa: F821
    pass


def test_a_positional_constexpr_is_kept_by_value():
    job = warm.CompileJob.of(
        runtime.Launch(FakeKernel(_kernel_with_a_constexpr), (1,), (torch.empty(2), 48, 48), {})
    )
    assert job.args[1:] == (16, 48)  # n by its class, BLOCK by its value


def test_a_job_names_its_kernel_and_survives_pickling():
    from kernels.flash_attention.forward import _attn_fwd

    job = warm.CompileJob.of(runtime.Launch(_attn_fwd, (1,), (torch.empty(2), 3), {"A": 1}))
    assert (job.module, job.name) == ("kernels.flash_attention.forward", "_attn_fwd")
    assert job.kernel() is _attn_fwd
    assert pickle.loads(pickle.dumps(job)) == job


def test_recording_records_launches_instead_of_running_them():
    def refuse(*args):
        raise AssertionError("launched")

    with warm.recording("first", arch=90) as launches:
        assert runtime.active_hook().configs == "first"
        assert runtime.launch(refuse, (2, 1), 1, BLOCK=16) is None
        assert runtime.launch(refuse, (0, 1), 1) is None  # an empty grid launches nothing
    assert launches == [runtime.Launch(refuse, (2, 1), (1,), {"BLOCK": 16})]
    assert runtime.active_hook().configs == "pick"


# --- the parallel driver, with a stand-in compile (module level: workers import it by name) ----

DONE_DIR = "WARM_TEST_DONE_DIR"


def stand_in_compile(job: warm.CompileJob) -> float:
    """Writes one file per call (the job's label and this worker's pid); fails on BLOCK=13."""
    if dict(job.meta).get("BLOCK") == 13:
        raise RuntimeError("no such configuration")
    directory = Path(os.environ[DONE_DIR])
    (directory / f"{job.args[1]}-{dict(job.meta)['BLOCK']}-{os.getpid()}").write_text("")
    return 0.0


def test_compile_ahead_compiles_each_distinct_job_once_in_worker_processes(tmp_path, monkeypatch):
    monkeypatch.setenv(DONE_DIR, str(tmp_path))
    x = torch.empty(8)
    launches = [launch(x, n, BLOCK=block) for n in (16, 32, 3, 5, 1) for block in (64, 128, 13)]
    report = warm.compile_ahead(
        warm.compile_jobs(launches), processes=2, compile=stand_in_compile, progress=True
    )
    compiled = sorted(p.name.rsplit("-", 1)[0] for p in tmp_path.iterdir())
    # 16 and 32 are one class, 3 and 5 another: 3 classes x 2 blocks, and 3 that fail
    assert compiled == sorted(f"{n}-{b}" for n in (16, 3, 1) for b in (64, 128))
    assert (report.builds, report.processes, len(report.failed)) == (9, 2, 3)
    assert all("no such configuration" in failure for failure in report.failed)
    pids = {p.name.rsplit("-", 1)[1] for p in tmp_path.iterdir()}
    assert str(os.getpid()) not in pids  # compiled in the workers, not here


def test_compile_ahead_with_nothing_to_compile_starts_no_worker():
    report = warm.compile_ahead([], compile=stand_in_compile)
    assert (report.builds, report.failed) == (0, [])


def test_compile_ahead_starts_one_worker_per_core_this_process_may_use(tmp_path, monkeypatch):
    """A batch job or container that holds 2 cores of a 64-core machine (its CPU affinity)
    gets 2 workers, not 64, each of which would import torch."""
    from concurrent.futures import Future

    started = []

    class InlinePool:  # stands in for ProcessPoolExecutor: runs each job here, at once
        def __init__(self, max_workers, mp_context):
            started.append(max_workers)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, fn, job):
            future = Future()
            future.set_result(fn(job))
            return future

    monkeypatch.setenv(DONE_DIR, str(tmp_path))
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(warm, "ProcessPoolExecutor", InlinePool)
    x = torch.empty(8)
    jobs = warm.compile_jobs([launch(x, n, BLOCK=b) for n in (16, 3, 1) for b in (64, 128)])
    report = warm.compile_ahead(jobs, compile=stand_in_compile)
    assert warm.usable_cores() == 2
    assert started == [2] and (report.builds, report.processes) == (6, 2)
