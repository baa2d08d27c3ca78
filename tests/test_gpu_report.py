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
