"""benchmarks.gpu_report without a GPU: it refuses at once, and its summary, memory ratios,
loss-curve agreement and plot read results shaped as its steps write them."""

import pytest
import torch

from benchmarks import gpu_report


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_without_a_gpu_it_says_so_and_exits_2(capsys):
    assert gpu_report.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def memory_record(impl, seq_len, status="ok", peak=None):
    record = dict(implementation=impl, seq_len=seq_len, status=status, peak_bytes=peak)
    return {**record, "pass": "forward_backward"}


def test_memory_ratios_divide_ours_by_sdpa_flash_and_mark_naive_failures():
    records = [
        memory_record("triton", 1024, peak=110),
        memory_record("sdpa_flash", 1024, peak=100),
        memory_record("naive", 1024, peak=4000),
        memory_record("triton", 2048, peak=220),
        memory_record("sdpa_flash", 2048, peak=200),
        memory_record("naive", 2048, status="oom"),
    ]
    ratios = gpu_report.memory_ratios(records)
    assert [r["seq_len"] for r in ratios] == [1024, 2048]
    assert ratios[0]["over_sdpa_flash"] == pytest.approx(1.1)
    assert ratios[0]["over_naive"] == pytest.approx(110 / 4000)
    assert ratios[1]["over_naive"] is None and ratios[1]["naive_status"] == "oom"


def test_loss_agreement_compares_only_steps_both_runs_logged():
    a = {"steps": [10, 20, 30], "loss": [4.0, 3.0, 2.0]}
    b = {"steps": [10, 20], "loss": [4.0, 3.3]}
    agreement = gpu_report._loss_agreement(a, b)
    assert agreement["steps_compared"] == 2
    assert agreement["max_relative_loss_difference"] == pytest.approx(0.3 / 3.3)


def test_summary_and_plot_from_a_report(tmp_path):
    ratio = dict(sdpa_backend="sdpa_flash", head_dim=64, causal=True, seq_len=4096,
                 ratio=0.93)  # fmt: skip
    results = {
        "parity": {"returncode": 0, "passed": 49, "failed": 0, "skipped": 0},
        "speed": {"ratios": [{**ratio, "pass": p} for p in ("forward", "forward_backward")]},
        "memory": {
            "ratios": gpu_report.memory_ratios(
                [
                    memory_record("triton", 1024, peak=110),
                    memory_record("sdpa_flash", 1024, peak=100),
                    memory_record("naive", 1024, status="oom"),
                ]
            )
        },  # fmt: skip
        "training": {
            "runs": {"triton": {"tokens_per_s": 51000.0}, "sdpa": {"tokens_per_s": 50000.0}},
            "max_relative_loss_difference": 0.004,
        },
        "model": {"error": "Traceback ...\nRuntimeError: boom"},
    }
    table = dict(gpu_report.summary_rows(results))
    assert table["CUDA parity tests"] == "49 passed, 0 failed, 0 skipped"
    assert table["ours/SDPA-flash forward d=64 causal len 4096"] == "0.93x"
    assert table["peak memory ours/SDPA-flash, fwd+bwd, len 1024"] == "1.10x"
    assert table["naive fwd+bwd first fails at length"] == "1024"
    assert table["base training tokens/s, triton"] == "51,000"
    assert table["model: FAILED"] == "RuntimeError: boom"
    env = {"device_name": "test GPU", "torch": "2.x", "triton": "3.x", "date": "today"}
    gpu_report.plot(results, env, tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 0


# --- the plan and the budget ------------------------------------------------------------------


def test_the_default_plan_fits_nine_minutes_on_16_cores_with_every_step():
    """With 400 kernel builds to warm (the compile gate's plan counts about 250 for the default
    steps; see the slow test below), the plan for 9 minutes keeps every step."""
    from benchmarks import gpu_plan

    plan = gpu_plan.make_plan(9 * 60, 16, list(gpu_plan.STEPS), lambda every, first: 400)
    assert plan.total_s <= 9 * 60
    assert plan.steps == list(gpu_plan.STEPS) and not plan.dropped
    assert all(plan.limit_s(s) >= plan.estimates[s] for s in plan.steps)
    assert "warm" in gpu_plan.describe(plan) and "400 kernel builds" in gpu_plan.describe(plan)


def test_a_small_budget_shrinks_sizes_then_leaves_steps_out():
    from benchmarks import gpu_plan

    full = gpu_plan.make_plan(3600, 16, list(gpu_plan.STEPS), lambda every, first: 100)
    small = gpu_plan.make_plan(240, 16, list(gpu_plan.STEPS), lambda every, first: 100)
    assert full.sizes == gpu_plan.Sizes()
    assert small.total_s <= 240
    assert small.sizes.train_minutes < full.sizes.train_minutes
    assert small.dropped and small.dropped[0] == "training"


@pytest.mark.slow
def test_dry_run_counts_the_real_builds_and_fits_nine_minutes():
    """The command itself, as a GPU user runs it with --dry-run (compiled-mode Triton, so no
    TRITON_INTERPRET): ~20 s of CPU for the compile gate's plan."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_report", "--dry-run", "--budget-minutes", "9"],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert "16 CPU cores" in first
    total = float(first.rsplit(":", 1)[1].split()[0])
    assert total <= 540 and "left out" not in done.stdout, done.stdout


def test_a_nan_loss_still_gives_the_markdown_and_the_plot(tmp_path):
    nan = float("nan")
    runs = {"triton": {"tokens_per_s": nan, "loss": [4.0, nan], "steps": [1, 2]},
            "sdpa": {"tokens_per_s": 50000.0, "loss": [4.0, 3.0], "steps": [1, 2]}}  # fmt: skip
    training = {"runs": runs, **gpu_report._loss_agreement(runs["triton"], runs["sdpa"])}
    gpu_report.write_step(tmp_path, "training", {**training, "seconds": 1.0})
    gpu_report.write_step(tmp_path, "parity", {"passed": 3, "failed": 0, "seconds": 2.0})
    assert gpu_report.write_summary(tmp_path) == 0
    table = (tmp_path / "gpu_report.md").read_text()
    assert "| base training tokens/s, triton | NaN |" in table
    assert "| loss curves triton vs sdpa (max rel. diff) | NaN |" in table
    assert (tmp_path / "gpu_report.png").stat().st_size > 0


def test_the_summary_reads_whatever_step_files_exist(tmp_path):
    gpu_report.write_step(tmp_path, "parity", {"passed": 3, "failed": 1, "seconds": 2.0})
    gpu_report.write_step(tmp_path, "training", {"skipped": "missing ['datasets']"})
    (tmp_path / "gpu_speed.json").write_text("{ cut short")  # a step killed mid-write
    results = gpu_report.read_steps(tmp_path)
    assert set(results) == {"parity", "training"}
    table = dict(gpu_report.summary_rows(results))
    assert table["training: skipped"] == "missing ['datasets']"


def test_a_missing_package_skips_its_step_with_one_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "datasets" else real(name)
    )
    assert gpu_report.missing_dependencies("training") == ["datasets"]
    assert gpu_report.missing_dependencies("speed") == []


def test_each_step_runs_in_its_own_process_and_is_stopped_at_its_limit(
    monkeypatch, tmp_path, capsys
):
    """The report keeps its budget: a step over its limit is stopped and recorded, the next
    still runs, and the summary is written from the files that exist."""
    import subprocess

    from benchmarks import gpu_plan

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    sizes = gpu_plan.Sizes()
    plan = gpu_plan.Plan(60, 16, sizes, ["parity", "speed"], 0, {"parity": 20, "speed": 20})
    monkeypatch.setattr(gpu_report, "plan_for", lambda args: plan)
    limits = []

    def fake_run(command, cwd, timeout, check):
        step = command[command.index("--run-step") + 1]
        limits.append(timeout)
        if step == "parity":
            raise subprocess.TimeoutExpired(command, timeout)
        gpu_report.write_step(tmp_path, step, {"ratios": [], "seconds": 3.0})

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert gpu_report.main(["--out-dir", str(tmp_path)]) == 1  # parity failed: timed out
    assert limits[0] == pytest.approx(30.0) and limits[1] <= 30.0
    assert "parity: stopped at its limit of 30 s" in capsys.readouterr().out
    results = gpu_report.read_steps(tmp_path)
    assert "timed out" in results["parity"]["error"] and "ratios" in results["speed"]
    assert (tmp_path / "gpu_report.md").exists()
