"""The sliding-window benchmark: its count of the pairs a window keeps, and its run end to end
at tiny sizes, in this process, so the kernel launches happen inside the test on
``kernel_device`` (docs/testing.md). Nothing here looks at a timing's value."""

import csv

import pytest
import torch

from benchmarks import window_benchmark

pytestmark = pytest.mark.usefixtures("kernel_device")


@pytest.mark.parametrize(
    "seq_len, size, causal",
    [(7, (2, 0), True), (7, (2, 3), False), (9, None, True), (9, None, False),
     (5, (10, 10), False), (6, (0, 0), True), (8, (-1, 1), False), (8, (3, -1), False)],
)  # fmt: skip
def test_pairs_count_what_a_window_mask_lets_through(seq_len, size, causal):
    i, j = torch.arange(seq_len)[:, None], torch.arange(seq_len)[None, :]
    keep = torch.ones(seq_len, seq_len, dtype=torch.bool)
    if size is not None:
        left, right = size
        if left >= 0:
            keep &= j >= i - left
        if right >= 0:
            keep &= j <= i + right
    if causal:
        keep &= j <= i
    assert window_benchmark.pairs(seq_len, size, causal) == int(keep.sum())


def test_quick_run_times_full_and_window_and_writes_json_csv_png_markdown(
    kernel_device, tmp_path, restores_process_state
):
    payload = window_benchmark.main(
        ["--quick", "--device", kernel_device.type, "--out-dir", str(tmp_path), "--tag", "bench"]
    )
    for suffix in (".json", ".csv", ".png", ".md"):
        assert (tmp_path / f"bench{suffix}").stat().st_size > 0, suffix
    env = payload["environment"]
    assert env["device_type"] == kernel_device.type and env["torch"] and env["date"]
    records = payload["records"]
    keys = {(r["variant"], r["seq_len"], r["pass"]) for r in records}
    assert keys == {(v, n, p) for v in ("full", "window") for n in (64, 128)
                    for p in ("forward", "forward_backward")}  # fmt: skip
    assert {r["status"] for r in records if r["variant"] == "full"} == {"ok"}
    assert {r["status"] for r in records if r["variant"] == "window"} == {"ok"}
    assert len(payload["ratios"]) == 4
    for r in payload["ratios"]:
        assert r["ratio"] == pytest.approx(r["window_ms"] / r["full_ms"])
        ideal = window_benchmark.pairs(r["seq_len"], (16, 0), True)
        assert r["pairs_ratio"] == pytest.approx(ideal / (r["seq_len"] * (r["seq_len"] + 1) / 2))
    assert {tuple(r["window_size"]) for r in records if r["variant"] == "window"} == {(16, 0)}
    with open(tmp_path / "bench.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert {"seq_len", "pass", "full_ms", "window_ms", "ratio", "pairs_ratio"} <= set(rows[0])
    assert {"device_name", "torch", "triton", "date"} <= set(rows[0])
    text = (tmp_path / "bench.md").read_text()
    if kernel_device.type == "cpu":
        assert "interpreter time (ms), not speed" in text
