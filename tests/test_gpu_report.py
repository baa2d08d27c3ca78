"""benchmarks.gpu_report without a GPU: it refuses at once, and its summary, memory ratios,
loss-curve agreement and plot read results shaped as its steps write them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_report

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_without_a_gpu_it_says_so_and_exits_2(capsys):
    assert gpu_report.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def memory_record(impl, seq_len, status="ok", peak=None):
    record = dict(implementation=impl, seq_len=seq_len, status=status, peak_bytes=peak)
    return {**record, "pass": "forward_backward"}


@pytest.mark.parametrize(
    "argv",
    [
        ["--budget-minutes", "-3"],
        ["--budget-minutes", "nan"],
        ["--budget-minutes", "0"],
        ["--cores", "0"],
        ["--out-dir", __file__],  # a file: no step could write there
    ],
)
def test_a_budget_or_core_count_not_positive_or_an_out_dir_that_is_a_file_is_refused(argv, capsys):
    """Before, --dry-run --budget-minutes -3 planned a "-3.0-minute budget"."""
    with pytest.raises(SystemExit) as exit_info:
        gpu_report.parse_args(["--dry-run", *argv])
    assert exit_info.value.code == 2 and "error: argument" in capsys.readouterr().err


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
    agreement = gpu_report.loss_agreement(a, b)
    assert agreement["steps_compared"] == 2
    assert agreement["max_relative_loss_difference"] == pytest.approx(0.3 / 3.3)


def test_summary_and_plot_from_a_report(tmp_path):
    window_ratios = [
        dict(seq_len=n, window=64, causal=True, ratio=r, pairs_ratio=64 / n) | {"pass": p}
        for n, r in ((1024, 0.3), (4096, 0.08))
        for p in ("forward", "forward_backward")
    ]
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
        "window": {"ratios": window_ratios},
        "model": {"error": "Traceback ...\nRuntimeError: boom"},
    }
    table = dict(gpu_report.summary_rows(results))
    assert table["window 64 / full, causal, fwd+bwd, len 4096"] == "0.080 (pairs 0.016)"
    assert table["CUDA parity tests"] == "49 passed, 0 failed, 0 skipped"
    assert table["ours/SDPA-flash forward d=64 causal len 4096"] == "0.93x"
    assert table["peak memory ours/SDPA-flash, fwd+bwd, len 1024"] == "1.10x"
    assert table["naive fwd+bwd first fails at length"] == "1024"
    assert table["base training tokens/s, triton"] == "51,000"
    assert table["model: FAILED"] == "RuntimeError: boom"
    env = {"device_name": "test GPU", "torch": "2.x", "triton": "3.x", "date": "today"}
    gpu_report.plot(results, env, tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 0


# --- the plan and the budget ----------------------------------------------------------------------


def test_the_default_plan_fits_nine_minutes_on_16_cores_with_every_step():
    """The compile gate's plan counts 290 kernel builds to warm for the default steps (see the
    slow test below), beside the training step's own warm-up: the plan for 9 minutes keeps
    every step. With a quarter more builds (350) it keeps every step but the last, the window
    benchmark, which is the first to go."""
    from benchmarks import gpu_plan

    plan = gpu_plan.make_plan(9 * 60, 16, list(gpu_plan.STEPS), lambda every, first: 290)
    assert plan.total_s <= 9 * 60
    assert plan.steps == list(gpu_plan.STEPS) and not plan.dropped
    assert all(plan.limit_s(s) >= plan.estimates[s] for s in plan.steps)
    assert "warm" in gpu_plan.describe(plan) and "290 kernel builds" in gpu_plan.describe(plan)
    more = gpu_plan.make_plan(9 * 60, 16, list(gpu_plan.STEPS), lambda every, first: 350)
    assert more.total_s <= 9 * 60 and more.dropped == ["window"]
    assert more.steps == [s for s in gpu_plan.STEPS if s != "window"]


def test_a_small_budget_shrinks_sizes_then_leaves_steps_out():
    from benchmarks import gpu_plan

    full = gpu_plan.make_plan(3600, 16, list(gpu_plan.STEPS), lambda every, first: 100)
    small = gpu_plan.make_plan(240, 16, list(gpu_plan.STEPS), lambda every, first: 100)
    assert full.sizes == gpu_plan.Sizes()
    assert small.total_s <= 240
    assert small.sizes.train_minutes < full.sizes.train_minutes
    assert small.dropped[:2] == ["window", "training"]  # from the end of STEPS


@pytest.mark.slow
def test_dry_run_counts_the_real_builds_and_fits_nine_minutes():
    """The command itself, as a GPU user runs it with --dry-run (compiled-mode Triton, so no
    TRITON_INTERPRET): ~20 s of CPU for the compile gate's plan."""
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
    training = {"runs": runs, **gpu_report.loss_agreement(runs["triton"], runs["sdpa"])}
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
    assert gpu_report.missing_dependencies("parity") == []


# --- optional packages: a missing one skips only what needs it ------------------------------------


def test_the_parity_step_collects_only_files_with_cuda_tests():
    from benchmarks import gpu_steps

    files = gpu_steps.parity_files()
    assert {"tests/test_flash_parity.py", "tests/test_additive_parity.py"} <= set(files)
    assert "tests/test_data.py" not in files and "tests/test_training.py" not in files


def hidden_env(*packages: str) -> dict:
    from benchmarks import gpu_rehearsal

    env = gpu_rehearsal.rehearsal_env(Path("/nonexistent"), "test")
    return {**env, "GPU_REPORT_HIDDEN_PACKAGES": ",".join(packages)}


def test_a_hidden_package_is_missing_for_training_only():
    """With `datasets` hidden as the rehearsal hides it (a sitecustomize on PYTHONPATH), the
    dependency check names it for training and for no other step."""
    script = (
        "from benchmarks import gpu_report\n"
        "print({s: gpu_report.missing_dependencies(s) for s in gpu_report.STEPS})"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=hidden_env("datasets"), cwd=ROOT, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    missing = eval(done.stdout)  # noqa: S307 - our own dict's repr
    assert missing == {s: (["datasets"] if s == "training" else []) for s in gpu_report.STEPS}


@pytest.mark.slow  # a pytest collection in a fresh process: ~15 s on 2 busy cores
def test_the_parity_tests_collect_without_datasets():
    from benchmarks import gpu_steps

    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "cuda",
               "-p", "no:cacheprovider", *gpu_steps.parity_files()]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=hidden_env("datasets"),
                          cwd=ROOT, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    assert "error" not in done.stdout.splitlines()[-1]


def test_parity_counts_come_from_the_summary_or_from_a_cut_log():
    from benchmarks import gpu_steps

    lines = [
        "tests/test_flash_parity.py::test_long[1024-1024-64-nomask-full-torch.float32] PASSED",
        "tests/test_flash_parity.py::test_long[4096-4096-128-nomask-full-torch.float32] FAILED",
        "tests/test_additive_parity.py::test_long[1024-1024-64-full-torch.float32] PASSED",
    ]
    cut = "collected 870 items / 2 errors / 800 deselected / 70 selected\n" + "\n".join(lines)
    expected = {"collection_errors": 2, "passed": 2, "failed": 1}
    assert gpu_steps.parity_counts(cut + "\n") == expected
    done = cut + "\n==== 1 failed, 65 passed, 4 skipped, 800 deselected, 2 errors in 61.20s ====\n"
    counts = gpu_steps.parity_counts(done)
    assert (counts["passed"], counts["failed"], counts["skipped"], counts["errors"]) == (
        65,
        1,
        4,
        2,
    )
    assert gpu_steps.parity_counts("collected 66 items\n")["collection_errors"] == 0
    line = dict(gpu_report.summary_rows({"parity": counts | {"collection_errors": 2}}))
    assert line["CUDA parity tests"] == (
        "65 passed, 1 failed, 4 skipped, 2 errors, 2 test files not collected"
    )


# --- the warm step prepares what the later steps launch -------------------------------------------


def parametrized(function) -> dict:
    """A test function's parametrize arguments: {argnames: values}."""
    return {
        mark.args[0]: list(mark.args[1])
        for mark in function.pytestmark
        if mark.name == "parametrize"
    }


def test_the_warm_cases_are_the_cuda_parity_tests_own_shapes():
    """gpu_plan's copy of the CUDA parity tests' shapes must be theirs, or the parity step
    compiles what the warm step did not prepare."""
    import test_additive_parity
    import test_flash_parity

    from benchmarks import gpu_plan

    flash = parametrized(test_flash_parity.test_long_sequences_within_2x_naive_error_on_gpu)
    assert tuple(flash["len_q,len_k,head_dim"]) == gpu_plan.FLASH_PARITY_SHAPES
    additive = parametrized(test_additive_parity.test_long_sequences_within_2x_naive_error_on_gpu)
    assert tuple(additive["len_q,len_k,a"]) == gpu_plan.ADDITIVE_PARITY_SHAPES
    dtypes = [str(d).removeprefix("torch.") for d in flash["dtype"]]
    assert sorted(dtypes) == sorted(gpu_plan.PARITY_DTYPES)
    cases = gpu_plan.parity_cases(gpu_plan.Sizes())
    assert len(cases) == gpu_plan.Sizes().parity_tests
    shapes = {(c.len_q, c.len_k, c.head_dim) for c in cases if c.workload == "flash_attention"}
    assert shapes == set(gpu_plan.FLASH_PARITY_SHAPES)


def test_the_model_benchmark_warms_up_at_a_length_the_warm_step_prepares():
    """Triton specialises lengths on divisibility by 16: the warm-up length and every measured
    length are multiples of 16, the class the warm step's model cases compile."""
    from benchmarks import gpu_plan, model_benchmark

    assert model_benchmark.WARMUP_LEN % 16 == 0
    lengths = gpu_plan.doubling(gpu_plan.Sizes().model_min_len, gpu_plan.Sizes().model_max_len)
    cases = gpu_plan.model_cases(gpu_plan.Sizes())
    assert all(n % 16 == 0 for n in lengths) and all(c.len_q % 16 == 0 for c in cases)


def test_the_window_step_launches_the_integer_classes_the_warm_step_prepares():
    """Triton specialises integers on 1, a multiple of 16 or other: the window benchmark's
    lengths and its window (the kernels' window_left) must fall in the classes of the warm
    step's window cases, which compile the compile gate's window (GATE_WINDOW)."""
    from benchmarks import gpu_plan
    from kernels.compile_gate.cases import GATE_WINDOW

    def int_class(n):
        return "one" if n == 1 else "multiple of 16" if n % 16 == 0 else "other"

    sizes = gpu_plan.Sizes()
    assert int_class(sizes.window) == int_class(GATE_WINDOW[0])
    lengths = gpu_plan.doubling(sizes.window_min_len, sizes.window_max_len)
    cases = gpu_plan.window_cases(sizes)
    assert {c.masking for c in cases} == {"causal", "causal+window"}
    assert {int_class(n) for n in lengths} == {int_class(c.len_q) for c in cases}
    assert all((c.batch, c.heads, c.head_dim) == (1, sizes.window_heads, sizes.window_head_dim)
               for c in cases)  # fmt: skip


def test_the_window_steps_estimate_grows_with_the_window():
    """The window's calls cost its pairs: at 16k tokens a window of 64 costs less than one as
    wide as the sequence (which costs full attention twice), and more than full attention
    alone (do_bench's 125 ms per measure do not shrink with the window)."""
    from benchmarks import gpu_costs

    rates = dict(gpu_costs.ASSUMED_TFLOPS)
    narrow = gpu_costs.window_point_s(1, 16, 16384, 64, 64, rates)
    wide = gpu_costs.window_point_s(1, 16, 16384, 64, 16384, rates)
    full_only = wide / 2
    assert full_only < narrow < wide


def test_kernels_a_step_compiled_are_read_from_the_triton_cache(tmp_path, monkeypatch):
    from benchmarks.common import triton_cache

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    (tmp_path / "AAAA").mkdir()
    (tmp_path / "AAAA" / "__grp___attn_fwd.json").write_text("{}")
    before = triton_cache.builds()
    for name, kernel in (("BBBB", "_attn_fwd"), ("CCCC", "_attn_bwd_dq")):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"__grp__{kernel}.json").write_text("{}")
        (tmp_path / name / f"{kernel}.cubin").write_text("")
    assert triton_cache.compiled_since(before) == {"_attn_bwd_dq": 1, "_attn_fwd": 1}
    assert triton_cache.compiled_since(triton_cache.builds()) == {}


def test_the_summary_names_kernels_compiled_after_warm_and_processes_left():
    results = {
        "warm": {"launches_warmed": 10, "seconds": 5.0, "compiled_kernels": {"_attn_fwd": 4}},
        "parity": {"passed": 66, "compiled_kernels": {"_additive_fwd": 2}, "left_running": 0},
        "model": {"records": [], "compiled_kernels": {}, "left_running": 2},
    }
    table = dict(gpu_report.summary_rows(results))
    assert table["parity: kernels compiled after warm (2)"] == "_additive_fwd x2"
    assert table["model: processes left running"] == "2"
    assert not any(k.startswith("warm: kernels compiled") for k in table)


# --- estimates from what the steps do -------------------------------------------------------------


def test_do_bench_makes_at_least_eight_calls_and_fills_its_125_ms():
    from benchmarks import gpu_costs

    assert gpu_costs.do_bench_s(1.0) == pytest.approx(8.0)  # 1 + 5 estimate + 1 + 1
    assert gpu_costs.do_bench_s(1e-3) == pytest.approx(0.006 + 0.025 + 0.100)


def test_the_memory_step_at_131k_tokens_costs_its_calls_not_a_fixed_do_bench():
    """At 131k tokens a forward + backward takes about a second: the point's estimate holds its
    three do_bench runs (8 calls each at least) and its autotuning, far above 3 x 135 ms."""
    from benchmarks import gpu_costs

    rates = gpu_costs.ASSUMED_TFLOPS
    fwd, bwd = gpu_costs.attention_call_s(1, 16, 131072, 128, True, "triton", rates)
    assert 0.5 < fwd + bwd < 3
    point = gpu_costs.attention_point_s(1, 16, 131072, 128, True, "triton", rates)
    assert point > 8 * (fwd + (fwd + bwd) + bwd) + 4 * 8 * (fwd + bwd)


def test_tflops_measured_by_an_earlier_report_replace_the_assumed_rates(tmp_path):
    from benchmarks import gpu_costs, gpu_plan

    record = dict(measure="time", status="ok", implementation="triton", tflops=400.0)
    records = [{**record, "pass": p} for p in ("forward", "forward_backward")]
    (tmp_path / "gpu_attention_h200.json").write_text(json.dumps({"records": records}))
    rates = gpu_costs.measured_tflops(tmp_path)
    assert rates["triton"] == 400.0 and rates["naive"] == gpu_costs.ASSUMED_TFLOPS["naive"]
    faster = gpu_plan.make_plan(3600, 16, ["speed"], lambda e, f: 0, rates=rates)
    slower = gpu_plan.make_plan(3600, 16, ["speed"], lambda e, f: 0)
    assert faster.estimates["speed"] < slower.estimates["speed"]


def test_the_training_step_keeps_each_runs_kernel_warmup(tmp_path, monkeypatch):
    """train.py's kernel_warmup line (the triton run's, before its budget) reaches the step's
    record; a run without one (sdpa) records None. train.py itself is a stand-in here."""
    from benchmarks import gpu_plan, gpu_steps

    def fake_train(argv, **kwargs):
        name, backend = argv[argv.index("--name") + 1], argv[argv.index("--attention") + 1]
        rows = [{"split": "train", "step": 1, "loss": 4.0, "tokens_per_s": 1.0}]
        if backend == "triton":
            rows.insert(0, {"split": "kernel_warmup", "step": 0, "kernel_warmup_seconds": 12.5})
        run_dir = tmp_path / "runs" / name
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(gpu_steps, "ROOT", tmp_path)
    monkeypatch.setattr(gpu_steps.subprocess, "run", fake_train)
    ctx = gpu_steps.StepContext(tmp_path / "out", gpu_plan.Sizes(), "test", ("training",))
    (tmp_path / "out").mkdir()
    runs = gpu_steps.run_training(ctx)["runs"]
    assert runs["triton"]["kernel_warmup_seconds"] == 12.5
    assert runs["sdpa"]["kernel_warmup_seconds"] is None
