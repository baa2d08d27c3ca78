"""``--config auto``: the preset follows the measured compute, is saved, survives resume, and
explicit options win. The probe itself is replaced by a fixed rate except where it is timed."""

from __future__ import annotations

import gzip
import json
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for train.py

import train as train_cli  # noqa: E402
from transformer.translation.data import DEFAULT_DATA_DIR  # noqa: E402
from transformer.translation.training import TrainConfig, sizing  # noqa: E402

SLOW, FAST = sizing.FAST_GFLOPS / 2, sizing.FAST_GFLOPS * 2


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def probe(monkeypatch):
    """Replace the timed matmul by a rate the test sets; records each call's dtype and threads."""

    class FakeProbe:
        rate = SLOW
        calls: list[tuple[torch.dtype, int]] = []

        def __call__(self, dtype: torch.dtype) -> float:
            self.calls.append((dtype, torch.get_num_threads()))
            return self.rate

    fake = FakeProbe()
    monkeypatch.setattr(sizing, "measure_gflops", fake)
    return fake


@pytest.fixture
def no_probe(monkeypatch):
    def refuse(dtype):
        raise AssertionError("the compute probe ran")

    monkeypatch.setattr(sizing, "measure_gflops", refuse)


def auto_config(*argv: str):
    args = train_cli.build_parser().parse_args(["--data", str(DEFAULT_DATA_DIR), *argv])
    return train_cli.config_from_args(args)


def test_rates_below_the_threshold_get_the_small_preset_and_at_or_above_it_the_default():
    assert sizing.preset_for(sizing.FAST_GFLOPS) == "cpu"
    assert sizing.preset_for(sizing.FAST_GFLOPS * 10) == "cpu"
    assert sizing.preset_for(sizing.FAST_GFLOPS * 0.99) == "cpu-small"
    assert sizing.preset_for(1.0) == "cpu-small"
    with pytest.raises(ValueError, match="positive"):
        sizing.preset_for(0.0)


def test_probe_times_the_matmul_for_the_given_seconds_and_reports_a_positive_rate():
    for dtype in (torch.float32, torch.bfloat16):
        start = time.perf_counter()
        rate = sizing.measure_gflops(dtype, seconds=0.05)
        took = time.perf_counter() - start
        assert rate > 0 and 0.05 <= took < 5, (dtype, rate, took)


def test_probe_reports_the_best_window_not_the_mean(monkeypatch):
    """A slow first window (a clock ramping up, another process's moment) does not decide."""

    class Clock:  # each reading advances the clock; in the first `slow` readings 10x as much
        def __init__(self, slow):
            self.now, self.readings, self.slow = 0.0, 0, slow

        def __call__(self):
            self.readings += 1
            self.now += 0.1 if self.readings <= self.slow else 0.01
            return self.now

    def rate(slow_readings):
        monkeypatch.setattr(sizing.time, "perf_counter", Clock(slow_readings))
        return sizing.measure_gflops(torch.float32, seconds=0.5, windows=5)

    steady, slow_first_window = rate(0), rate(3)
    assert slow_first_window == pytest.approx(steady, rel=0.05)  # one product more or less
    assert rate(10**6) < steady / 5  # slow in every window: reads slow


def test_probe_runs_in_the_dtype_and_thread_count_the_run_will_use(probe):
    choice = sizing.choose("cpu", bf16=True, threads=1)
    assert probe.calls == [(torch.bfloat16, 1)]
    assert (choice.preset, choice.gflops, choice.dtype, choice.threads) == (
        "cpu-small",
        SLOW,
        "bfloat16",
        1,
    )
    probe.rate = FAST
    assert sizing.choose("auto", bf16=False, threads=None).preset == "cpu"
    assert probe.calls[-1][0] == torch.float32


def test_no_probe_on_a_gpu_or_in_a_torchrun_run(no_probe, monkeypatch):
    assert sizing.choose("cuda:0", bf16=True, threads=None).preset == "cpu"
    monkeypatch.setenv("WORLD_SIZE", "2")
    choice = sizing.choose("cpu", bf16=False, threads=None)
    assert (choice.preset, choice.gflops) == ("cpu", None)


def test_auto_takes_the_chosen_presets_values_and_explicit_options_win(probe):
    small = auto_config("--threads", "1", "--amp", "off")
    assert small.sizing.preset == "cpu-small" and small.sizing.gflops == SLOW
    assert (small.model.d_model, small.model.d_ff, small.model.backend) == (192, 384, "sdpa")
    assert (small.vocab_size, small.model.src_vocab_size, small.eval_at_epoch_end) == (
        4000,
        4000,
        False,
    )
    given = auto_config("--d-model", "128", "--attention", "naive", "--vocab-size", "3000")
    assert (given.model.d_model, given.model.backend, given.vocab_size) == (128, "naive", 3000)
    assert given.model.d_ff == 384  # not given: the chosen preset's

    probe.rate = FAST
    fast = auto_config()
    named = train_cli.preset_config(train_cli.build_parser().parse_args([]), "cpu")
    assert fast.sizing.preset == "cpu"
    assert fast == train_cli.dataclasses.replace(named, sizing=fast.sizing)  # today's defaults
    assert auto_config("--d-model", "128").model.d_model == 128


def test_no_probe_when_the_preset_is_named_or_explicit_options_fix_every_difference(no_probe):
    assert auto_config("--config", "cpu").sizing is None
    assert auto_config("--config", "cpu-small").model.d_model == 192
    fixed = auto_config(
        *("--d-model", "192", "--d-ff", "384", "--attention", "sdpa", "--vocab-size", "4000"),
        "--no-epoch-eval",
    )
    assert fixed.sizing is None and fixed.model.d_model == 192


def test_bad_options_are_refused_before_the_probe(no_probe, capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--heads", "5"])
    assert "divisible" in capsys.readouterr().err


@pytest.fixture
def corpus(tmp_path) -> Path:
    """A few sentences of each Multi30K split as a corpus directory."""
    for split in ("train", "val", "test_2016_flickr"):
        for lang in ("de", "en"):
            with gzip.open(DEFAULT_DATA_DIR / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
                lines = [next(f) for _ in range(32 if split == "train" else 4)]
            (tmp_path / f"{split}.{lang}").write_text("".join(lines), encoding="utf-8")
    return tmp_path


def test_config_json_records_the_choice_and_resume_reuses_it_without_probing(
    corpus, tmp_path, probe, monkeypatch, capsys
):
    run_dir = tmp_path / "run"
    argv = [
        "--run-dir", str(run_dir), "--data", str(corpus), "--d-model", "32", "--heads", "2",
        "--encoder-layers", "1", "--decoder-layers", "1", "--vocab-size", "200",
        "--max-tokens", "256", "--max-steps", "2", "--threads", "1", "--no-progress",
        "--amp", "off", "--no-final-test", "--warmup-steps", "1",
    ]  # fmt: skip
    assert train_cli.main(argv) == 0
    assert "size: cpu-small (float32 matmul" in capsys.readouterr().err
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["sizing"]["preset"] == "cpu-small" and saved["sizing"]["gflops"] == SLOW
    assert saved["sizing"]["dtype"] == "float32" and saved["sizing"]["threads"] == 1
    assert (saved["model"]["d_model"], saved["model"]["d_ff"]) == (32, 384)  # explicit, preset
    assert saved["model"]["backend"] == "sdpa"
    assert TrainConfig.from_dict(saved).sizing == sizing.Sizing(**saved["sizing"])

    def refuse(dtype):
        raise AssertionError("a resumed run probed again")

    monkeypatch.setattr(sizing, "measure_gflops", refuse)
    probe.rate = FAST  # would choose the other preset, were it asked
    assert train_cli.main(["--resume", str(run_dir), "--max-steps", "3"]) == 0
    resumed = json.loads((run_dir / "config.json").read_text())
    assert resumed["sizing"] == saved["sizing"] and resumed["model"] == saved["model"]
    last = json.loads((run_dir / "last.json").read_text())
    assert last["step"] == 3
