"""The GPU report's process handling and its CPU rehearsal: a step past its limit goes with every
process it started and keeps what it finished, and ``gpu_report --rehearse`` passes on a good
report and fails on each fault it is there to catch."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_report

ROOT = Path(__file__).resolve().parents[1]


# --- a step past its limit: the whole process group goes ------------------------------------------

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


# --- a step cut short keeps what it finished, and the summary reads it ----------------------------


def test_a_cut_step_keeps_its_finished_points_and_the_summary_shows_them(
    monkeypatch, tmp_path, capsys
):
    """The speed step is stopped after its script wrote one point: its record holds that point
    and its ratios, marked partial; the next step still runs; the summary says so."""
    from benchmarks import gpu_plan
    from benchmarks.common.process_group import Outcome

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    sizes = gpu_plan.Sizes()
    plan = gpu_plan.Plan(60, 16, sizes, ["speed", "memory"], 0, {"speed": 20, "memory": 20})
    monkeypatch.setattr(gpu_report, "plan_for", lambda args: plan)
    monkeypatch.setattr(gpu_report, "device_tag", lambda device: "h200")
    point = dict(head_dim=64, causal=True, seq_len=4096, status="ok", measure="time")
    records = [{**point, "implementation": impl, "pass": "forward", "tflops": t}
               for impl, t in (("triton", 93.0), ("sdpa_flash", 100.0))]  # fmt: skip
    limits = []

    def fake_run_limited(command, limit, **kwargs):
        step = command[command.index("--run-step") + 1]
        limits.append(limit)
        if step == "speed":  # one point written, then stopped at the limit
            payload = {"records": records, "ratios": attention_sweep.ratios(records)}
            (tmp_path / "gpu_attention_h200.json").write_text(json.dumps(payload))
            return Outcome(None, limit, stopped=True)
        gpu_report.write_step(tmp_path, step, {"ratios": [], "seconds": 3.0})
        return Outcome(0, 3.0)

    from benchmarks import attention_sweep

    monkeypatch.setattr(gpu_report, "run_limited", fake_run_limited)
    assert gpu_report.main(["--out-dir", str(tmp_path)]) == 1  # speed failed: timed out
    assert limits[0] == pytest.approx(30.0, abs=0.5)  # 20 s of 40 s estimated: half of 60 s
    assert 30.0 <= limits[1] <= 60.0  # the time speed left (the fake took none) goes to memory
    assert "speed: timed out after 30 s" in capsys.readouterr().out
    results = gpu_report.read_steps(tmp_path)
    speed = results["speed"]
    assert speed["partial"] and "timed out" in speed["error"] and speed["points"] == 2
    assert speed["ratios"][0]["ratio"] == pytest.approx(0.93)
    assert "ratios" in results["memory"]
    table = (tmp_path / "gpu_report.md").read_text()
    assert "| speed: stopped early, kept | 2 points |" in table
    assert "| ours/SDPA-flash forward d=64 causal len 4096 | 0.93x |" in table


def test_the_attention_benchmark_writes_its_results_after_every_point(tmp_path, monkeypatch):
    """A run stopped midway leaves a results file with every finished point, marked partial;
    the finished run's file is complete and not partial."""
    from benchmarks import attention_benchmark, attention_sweep

    seen = []

    def one_phase(spec, device, cap):
        path = tmp_path / "attention_cpu.json"
        if path.exists():  # what a stop at this moment would leave
            seen.append((json.loads(path.read_text())["partial"],
                         len(json.loads(path.read_text())["records"])))  # fmt: skip
        return {p: {"status": "ok", "peak_bytes": 1, "median_ms": 1.0, "tflops": 1.0}
                for p in spec["phase"][1]}  # fmt: skip

    monkeypatch.setattr(attention_sweep, "run_phase", one_phase)
    monkeypatch.setattr(attention_benchmark, "report", lambda payload, stem: None)
    payload = attention_benchmark.main([
        "--device", "cpu", "--impls", "naive", "sdpa_math", "--head-dims", "16",
        "--causal", "no", "--min-len", "16", "--max-len", "32", "--out-dir", str(tmp_path),
    ])  # fmt: skip
    per_point = 5  # 2 memory passes + 3 timed passes
    assert payload["partial"] is False and len(payload["records"]) == 4 * per_point
    assert {partial for partial, _ in seen} == {True}
    assert sorted({n for _, n in seen}) == [per_point, 2 * per_point, 3 * per_point]
    assert all(r["point_seconds"] >= 0 for r in payload["records"])


def test_the_window_benchmark_writes_its_results_after_every_point(tmp_path, monkeypatch):
    """The window step's script too: a run stopped midway leaves every finished point, marked
    partial, and the step reads them back (its points and ratios)."""
    from benchmarks import gpu_plan, gpu_steps, window_benchmark

    seen = []

    def one_point(variant, seq_len, pass_, args, device):
        path = tmp_path / "window_cpu.json"
        if path.exists():  # what a stop at this moment would leave
            payload = json.loads(path.read_text())
            seen.append((payload["partial"], len(payload["records"])))
        return {"status": "ok", "median_ms": 2.0 if variant == "full" else 1.0}

    monkeypatch.setattr(window_benchmark, "measure", one_point)
    monkeypatch.setattr(window_benchmark, "report", lambda payload, stem: None)
    payload = window_benchmark.main([
        "--device", "cpu", "--window", "8", "--min-len", "16", "--max-len", "32",
        "--out-dir", str(tmp_path),
    ])  # fmt: skip
    assert payload["partial"] is False and len(payload["records"]) == 8
    assert seen == [(True, n) for n in range(1, 8)]
    assert [r["ratio"] for r in payload["ratios"]] == [0.5] * 4
    ctx = gpu_steps.StepContext(tmp_path, gpu_plan.REHEARSAL, "cpu", ("window",))
    (tmp_path / "window_cpu.json").rename(gpu_steps.results_path(ctx, "window"))
    kept = gpu_steps.partial_result("window", ctx)
    assert kept["points"] == 4 and len(kept["ratios"]) == 4


# --- the rehearsal --------------------------------------------------------------------------------


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
        "window": {"ratios": [], "points": 2, "left_running": 0},
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
