"""The GPU report's process handling and its CPU rehearsal (issue 26, items 8 and build 3): a
step past its limit goes with every process it started, and ``gpu_report --rehearse`` passes
on a good report and fails on each fault it is there to catch."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_report

ROOT = Path(__file__).resolve().parents[1]


# --- a step past its limit: the whole process group goes (issue 26, item 8) -------------------

STUBBORN_FAMILY = """
import os, signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(600)
"""


def alive(pid: int) -> bool:
    from benchmarks.common.process_group import group_members

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return pid in group_members(os.getpgid(pid))  # running, not a zombie


def test_a_step_past_its_limit_is_stopped_with_every_process_it_started(tmp_path):
    """The step's child ignores SIGTERM (as a busy compiler or a CUDA call may): SIGTERM to the
    group, the grace period, then SIGKILL to the group leave nothing running."""
    from benchmarks.common.process_group import run_limited

    pid_file = tmp_path / "child.pid"
    command = [sys.executable, "-c", STUBBORN_FAMILY, str(pid_file)]
    outcome = run_limited(command, 3.0, grace_s=1.0, stop_when=None)
    child = int(pid_file.read_text())
    try:
        assert outcome.stopped and outcome.returncode is None
        assert outcome.killed and outcome.left_running == 0
        assert not alive(child)
    finally:  # a failing run must not leave the stubborn child to the rest of the suite
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_step_that_ends_gives_its_exit_code_and_is_not_stopped():
    from benchmarks.common.process_group import run_limited

    outcome = run_limited([sys.executable, "-c", "raise SystemExit(3)"], 60.0)
    assert (outcome.returncode, outcome.stopped, outcome.left_running) == (3, False, 0)


def test_stop_when_cuts_a_step_before_its_limit(tmp_path):
    from benchmarks.common.process_group import run_limited

    flag = tmp_path / "first point done"
    command = [sys.executable, "-c", f"import time; open({str(flag)!r}, 'w'); time.sleep(600)"]
    outcome = run_limited(command, 120.0, grace_s=1.0, stop_when=flag.exists)
    assert outcome.stopped and outcome.by_request and outcome.seconds < 60


# --- the rehearsal (issue 26, build 3) ---------------------------------------------------------


def rehearsed_folder(out_dir: Path, **changes) -> None:
    """A report folder as a good rehearsal leaves it; ``changes`` replace step records."""
    passed = "tests/test_flash_parity.py::test_output[1-7-16-nomask-full-torch.float32] PASSED\n"
    steps = {
        "warm": {"builds_planned": 10, "compiled": 0},
        "parity": {"partial": True, "error": "stopped after 20 s", "passed": 1,
                   "collection_errors": 0, "left_running": 0},
        "speed": {"ratios": [], "points": 3, "left_running": 0},
        "memory": {"records": [], "points": 3, "left_running": 0},
        "model": {"records": [], "points": 3, "left_running": 0},
        "training": {"skipped": "missing ['datasets']"},
        **changes,
    }  # fmt: skip
    for step, record in steps.items():
        gpu_report.write_step(out_dir, step, record)
    (out_dir / "gpu_parity_cpu.log").write_text("collected 9 items\n" + passed)
    (out_dir / "gpu_report.md").write_text("| parity: stopped early, kept | 1 passed |\n")


def failed_checks(out_dir: Path, marker: str = "none") -> list[str]:
    from benchmarks import gpu_rehearsal

    return [name for name, ok, _ in gpu_rehearsal.checks(out_dir, marker, 1) if not ok]


def test_the_rehearsal_checks_pass_on_a_good_report(tmp_path):
    rehearsed_folder(tmp_path)
    assert failed_checks(tmp_path) == []


CUT = {"partial": True, "error": "stopped", "passed": 1, "collection_errors": 0, "left_running": 0}


@pytest.mark.parametrize(
    "changes,failed",
    [
        ({"parity": {**CUT, "collection_errors": 9}},
         "the parity step collected and ran its tests without it"),
        ({"memory": {"skipped": "missing ['einops']"}}, "the missing package skipped only its step"),
        ({"parity": {**CUT, "passed": 0}}, "its finished tests were kept"),
        ({"parity": {**CUT, "left_running": 1}}, "it left no process behind"),
        ({"parity": {"passed": 1, "collection_errors": 0, "left_running": 0}},
         "the parity step was stopped midway"),
        ({"model": {"error": "timed out after 30 s", "partial": True}}, "every other step finished"),
    ],
    ids=["collection-errors", "wrong-step-skipped", "nothing-kept", "left-running", "not-cut",
         "other-cut"],
)  # fmt: skip
def test_the_rehearsal_fails_on_each_fault(tmp_path, changes, failed):
    rehearsed_folder(tmp_path, **changes)
    assert failed in failed_checks(tmp_path)


def test_the_rehearsal_finds_a_process_the_report_left_running(tmp_path):
    """Any live process carrying the rehearsal's marker in its environment fails the check."""
    from benchmarks import gpu_rehearsal

    rehearsed_folder(tmp_path)
    env = {**os.environ, gpu_rehearsal.MARKER: "abc123"}
    straggler = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    try:
        assert failed_checks(tmp_path, "abc123") == ["it left no process behind"]
    finally:
        straggler.kill()
        straggler.wait()
    assert failed_checks(tmp_path, "abc123") == []


@pytest.mark.slow  # the whole report at toy sizes: about 3 minutes of wall clock on 2 busy cores
def test_the_rehearsal_passes_on_the_cpu(tmp_path):
    command = [sys.executable, "-m", "benchmarks.gpu_report", "--rehearse", "--budget-minutes",
               "3", "--out-dir", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    assert "rehearsal: every check passed" in done.stdout
