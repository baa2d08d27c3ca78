"""The benchmarks' memory measure and our kernels' lines on their memory plots (the attention
benchmark's flash kernel, the additive benchmark's fused kernel).

Memory is torch's allocations above the inputs, one measure for every implementation; on the
CPU our kernel runs under Triton's interpreter and its line is labelled so. The benchmark runs
here in this process (its per-point child processes replaced by a direct call), so the kernel
launches happen inside the test, on ``kernel_device``, where the tests' set-up sees them
(docs/testing.md). Nothing here times anything.
"""

import pytest
import torch

from benchmarks import attention_benchmark, attention_measure, attention_report, attention_sweep
from benchmarks.common.measure import MIB, peak_live_bytes, peak_torch_cpu_allocations

pytestmark = pytest.mark.usefixtures("kernel_device")


def block(mib: float) -> torch.Tensor:
    return torch.empty(int(mib * MIB), dtype=torch.uint8)


def test_peak_torch_cpu_allocations_counts_each_block_of_the_call_from_allocation_to_free():
    before = [block(4)]  # held before the call, freed inside it: not the call's memory

    def call():
        first = block(1)
        second = block(2)
        del first
        before.clear()
        third = block(0.5)
        return second, third

    assert peak_torch_cpu_allocations(call) == 3 * MIB  # first + second, before first's free


def test_peak_live_bytes_ignores_frees_of_blocks_allocated_before():
    # torch may report the free of a block allocated before profiling began (its address
    # reused since a block an earlier profile saw), with that block's old size: not the call's.
    unknown_free, first, second = (0xA000, -1000), (0xB000, 100), (0xC000, 50)
    events = [unknown_free, first, second, (0xB000, -100), (0xD000, 70)]
    assert peak_live_bytes(events) == 150


def records_by_key(payload: dict) -> dict:
    """A benchmark's records by (implementation, length, measure, pass)."""
    return {
        (r["implementation"], r["seq_len"], r["measure"], r["pass"]): r for r in payload["records"]
    }


def peak_bytes(records: dict, impl: str, seq_len: int, pass_: str) -> int:
    """One implementation's measured peak memory at one length and pass (it must be measured)."""
    record = records[impl, seq_len, "memory", pass_]
    assert record["status"] == "ok", record
    return record["peak_bytes"]


@pytest.fixture
def in_process(monkeypatch, restores_process_state):
    """The benchmark's points measured in this process (no child, no memory cap), and what its
    main() sets for the process (threads, TRITON_INTERPRET on the CPU) put back afterwards."""

    def run_phase(spec, device, cap):
        return attention_measure.measure_point(spec)

    monkeypatch.setattr(attention_sweep, "run_phase", run_phase)


def test_kernel_memory_line_is_present_labelled_and_linear_while_naive_is_quadratic(
    kernel_device, tmp_path, in_process
):
    payload = attention_benchmark.main([
        "--device", kernel_device.type, "--impls", "naive", "triton", "--head-dims", "16",
        "--causal", "no", "--heads", "1", "--min-len", "256", "--max-len", "512",
        "--cpu-repeats", "1", "--out-dir", str(tmp_path), "--tag", "bench",
    ])  # fmt: skip
    records = records_by_key(payload)

    def peak(impl, seq_len, pass_):
        return peak_bytes(records, impl, seq_len, pass_)

    for pass_ in ("forward", "forward_backward"):
        # Every buffer of the kernel is O(length): 2x per doubling (exactly, on the CPU).
        ours = peak("triton", 512, pass_) / peak("triton", 256, pass_)
        assert 1.9 <= ours <= 2.1, (pass_, ours)
    # Naive materialises (len x len) scores and their gradient: towards 4x per doubling.
    naive = peak("naive", 512, "forward_backward") / peak("naive", 256, "forward_backward")
    assert naive >= 3.0, naive
    assert peak("triton", 512, "forward_backward") * 3 <= peak("naive", 512, "forward_backward")
    measure = payload["conventions"]["memory_measure"]["triton"]
    assert records["triton", 512, "memory", "forward"]["memory_measure"] == measure
    text = (tmp_path / "bench.md").read_text()
    assert (tmp_path / "bench.png").stat().st_size > 0
    if kernel_device.type == "cpu":
        assert "torch allocations under the Triton interpreter" in measure
        assert "ours (Triton), torch allocations under the Triton interpreter" in text
        assert "under the Triton interpreter" in attention_report.label(
            payload["records"], "triton"
        )
        times = [r for key, r in records.items() if key[0] == "triton" and key[2] == "time"]
        assert len(times) == 2 * 3 and {r["status"] for r in times} == {"not_measurable"}
        assert "ours (Triton) TFLOP/s: not_measurable at every point" in text
    else:
        assert measure == attention_measure.MEMORY_MEASURES["cuda"]


def test_kernel_memory_on_the_cpu_stops_at_the_interpreter_length_limit(tmp_path, in_process):
    # No kernel launch: the one length is past the limit, so only records are written.
    payload = attention_benchmark.main([
        "--device", "cpu", "--impls", "triton", "--head-dims", "16", "--causal", "no",
        "--heads", "1", "--min-len", "64", "--max-len", "64", "--interpreter-max-len", "32",
        "--out-dir", str(tmp_path), "--tag", "bench",
    ])  # fmt: skip
    statuses = {(r["measure"], r["status"]) for r in payload["records"]}
    assert statuses == {("memory", "skipped"), ("time", "not_measurable")}
    (skipped, *_) = [r for r in payload["records"] if r["status"] == "skipped"]
    assert "--interpreter-max-len 32" in skipped["note"]
    text = (tmp_path / "bench.md").read_text()
    assert "ours (Triton): skipped at every point" not in text  # two reasons, two lines
    assert "ours (Triton) memory: skipped at every point" in text


@pytest.fixture
def additive_in_process(monkeypatch, restores_process_state):
    """The additive benchmark's points measured in this process (no child, no memory cap)."""
    from benchmarks import additive_benchmark

    monkeypatch.setattr(
        additive_benchmark,
        "run_point",
        lambda spec, device, cap: additive_benchmark.measure_point(spec),
    )
    return additive_benchmark


def test_additive_benchmark_memory_is_torch_allocations_linear_for_the_fused_kernel_quadratic_for_naive(
    kernel_device, tmp_path, additive_in_process
):
    # The naive path builds (b, h, i, j, a) features: 4x per doubling of the length; the fused
    # kernel keeps the features on chip and allocates O(length) through torch (under the
    # interpreter on the CPU too: its numpy arrays are not torch's and are not counted).
    payload = additive_in_process.main([
        "--device", kernel_device.type, "--impls", "naive_additive", "fused_additive",
        "--head-dim", "16", "--heads", "1", "--min-len", "128", "--max-len", "256",
        "--dtype", "float32", "--cpu-repeats", "1", "--out-dir", str(tmp_path), "--tag", "add",
    ])  # fmt: skip
    records = records_by_key(payload)

    def peak(impl, seq_len, pass_):
        return peak_bytes(records, impl, seq_len, pass_)

    for pass_ in ("forward", "forward_backward"):
        fused = peak("fused_additive", 256, pass_) / peak("fused_additive", 128, pass_)
        naive = peak("naive_additive", 256, pass_) / peak("naive_additive", 128, pass_)
        assert 1.5 <= fused <= 2.5, (pass_, fused)
        assert naive >= 3.0, (pass_, naive)
        assert peak("fused_additive", 256, pass_) * 8 <= peak("naive_additive", 256, pass_)
    assert "torch allocated" in payload["conventions"]["memory"]
    assert "Peak torch allocations above the inputs" in (tmp_path / "add.md").read_text()
