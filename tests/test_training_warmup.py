"""train.py's kernel warm-up and tune cache on the CPU (transformer/translation/training/warmup.py).

On a GPU with ``--attention triton`` a run compiles, before the budget's clock starts, every
kernel specialisation it will launch. Here, under Triton's interpreter, the same recording runs
(the model's own steps with every launch recorded, not run), and is checked against what a real
short run launches and what random batch shapes launch: the warm list must cover every launch.
The compile itself is a stand-in here (tests/test_kernel_warm.py drives the worker pool;
tests/test_warm_cache.py compiles for real for an sm_90 target).
"""

import contextlib
import dataclasses
import functools
import io
import json
import os
import pickle
import uuid
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from training_helpers import TINY_MODEL, FakeClock, logged, tiny_config

from kernels.common import runtime, tuning, warm
from transformer.decoding import greedy_decode
from transformer.model import Transformer
from transformer.translation.tokenizer import BOS_ID
from transformer.translation.training import loop, train, warmup
from transformer.translation.training.setup import Process

pytestmark = pytest.mark.usefixtures("fast_machine")

MODEL = dataclasses.replace(TINY_MODEL, encoder_layers=1, decoder_layers=1, backend="triton")
LOSS = functools.partial(loop.label_smoothed_loss, smoothing=0.1)


def tiny_triton_model(device) -> Transformer:
    torch.manual_seed(0)
    return Transformer(dataclasses.replace(MODEL, src_vocab_size=50, tgt_vocab_size=50)).to(device)


def jobs_of(launches) -> set[warm.CompileJob]:
    return set(warm.compile_jobs(launches))


COMPILED_DIR = "WARMUP_TEST_COMPILED_DIR"


def pickling_compile(job: warm.CompileJob) -> None:
    """A stand-in compile (run in warm_kernels' worker processes): keeps the job in a file."""
    (Path(os.environ[COMPILED_DIR]) / f"{uuid.uuid4().hex}.pkl").write_bytes(pickle.dumps(job))


@dataclasses.dataclass
class Warmed:
    compiled: list[warm.CompileJob]  # what the workers were given, one entry a compile
    done: warmup.KernelWarmup
    printed: str
    model: Transformer
    weights: dict
    rng_before: torch.Tensor
    rng_after: torch.Tensor


@pytest.fixture(scope="module")
def warmed(kernel_device, tmp_path_factory) -> Warmed:
    """warm_kernels on the tiny triton model, compiling with a stand-in in its worker
    processes; and the model's state before."""
    directory = tmp_path_factory.mktemp("compiled")
    model = tiny_triton_model(kernel_device).train()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    os.environ[COMPILED_DIR] = str(directory)  # the workers inherit it
    try:
        with contextlib.redirect_stderr(io.StringIO()) as printed:
            process = Process(torch.device(kernel_device))
            done = warmup.warm_kernels(model, process, LOSS, False, compile=pickling_compile)
    finally:
        del os.environ[COMPILED_DIR]
    compiled = [pickle.loads(path.read_bytes()) for path in directory.iterdir()]
    return Warmed(compiled, done, printed.getvalue(), model, weights, rng, torch.get_rng_state())


@pytest.fixture(scope="module")
def warm_list(warmed) -> set[warm.CompileJob]:
    return set(warmed.compiled)


def test_warm_kernels_compiles_each_recorded_specialisation_once_and_says_so(warmed):
    done = warmed.done
    assert len(warmed.compiled) == len(set(warmed.compiled)) == done.builds
    assert done.launches > done.builds > 0 and done.failed == 0
    assert (
        f"kernel warm-up: {done.builds} kernel builds ({done.launches} launches" in warmed.printed
    )
    assert "before the time budget" in warmed.printed


def test_the_warm_list_holds_every_pass_of_every_attention(warm_list):
    # Causality is a window bounded on the right (right = 0): WINDOW_RIGHT.
    kinds = {
        (job.name, dict(job.meta)["WINDOW_RIGHT"])
        for job in warm_list
        if "WINDOW_RIGHT" in dict(job.meta)
    }
    passes = ("_attn_fwd", "_attn_bwd_dkdv", "_attn_bwd_dq")
    assert kinds == {(name, causal) for name in passes for causal in (False, True)}
    assert any(job.name == "attn_bwd_delta" for job in warm_list)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.integers(1, 5), src_len=st.integers(1, 70), tgt_len=st.integers(1, 70))
def test_the_warm_list_covers_a_training_step_at_any_batch_shape(
    warm_list, kernel_device, batch, src_len, tgt_len
):
    model = tiny_triton_model(kernel_device)
    src = torch.randint(1, 50, (batch, src_len), device=kernel_device)
    tgt = torch.randint(1, 50, (batch, tgt_len), device=kernel_device)
    src[0, -1] = 0  # padding in the first row
    with warm.recording("every") as launches:
        LOSS(model(src, tgt), tgt).backward()
    assert launches and jobs_of(launches) <= warm_list


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.integers(1, 5), src_len=st.integers(1, 40), steps=st.integers(1, 40))
def test_the_warm_list_covers_decoding_any_source_to_any_length(
    warm_list, kernel_device, batch, src_len, steps
):
    """Greedy decoding (validation's) for ``steps`` tokens: no end-of-sentence id stops it."""
    model = tiny_triton_model(kernel_device)
    src = torch.randint(3, 50, (batch, src_len), device=kernel_device)
    with warm.recording("every") as launches:
        greedy_decode(model, src, BOS_ID, eos_id=model.config.pad_id, max_len=steps)  # never made
    assert launches and jobs_of(launches) <= warm_list


@pytest.mark.slow  # a short run with the kernels under the interpreter: ~1 min on 2 busy cores
def test_the_warm_list_covers_every_launch_of_a_real_run(corpus, tmp_path, kernel_device):
    """Two training steps, a validation (loss and greedy decoding) and the test split's beam
    search, every kernel launch recorded as it runs; then the warm list of the run's model."""
    seen = []

    def record_and_run(launch):
        seen.append(launch)
        return launch.run()

    config = tiny_config(
        corpus, tmp_path / "run", model=MODEL, max_steps=2, device=str(kernel_device),
        val_limit=2, eval_at_epoch_end=False, val_beam_size=1, final_test=False,
        kernel_warmup=False,
    )  # fmt: skip
    with runtime.hooked(runtime.Hook(record_and_run)):
        result = train(config)
        # a model this young ends its sentences at once: decode 20 tokens of one more sentence
        src = torch.randint(3, 50, (1, 7), device=kernel_device)
        greedy_decode(result.model, src, BOS_ID, eos_id=result.model.config.pad_id, max_len=20)
    process = Process(torch.device(kernel_device))
    warm_jobs = jobs_of(warmup.record_launches(result.model, process, LOSS))
    assert seen and not jobs_of(seen) - warm_jobs
    assert len(jobs_of(seen)) < len(warm_jobs)  # the warm list holds more classes


def test_recording_leaves_the_model_as_it_was(warmed):
    """In training mode (recording switches to evaluation for decoding), with its weights, no
    gradients, and the random number generator's state (dropout drew from it)."""
    model = warmed.model
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in warmed.weights.items())
    assert torch.equal(warmed.rng_after, warmed.rng_before)


# --- in the run: outside the budget, recorded, and the tune cache ---------------------------------


def stand_in_warm_kernels(calls):
    """A warm-up that takes 100 s of the run's clock and records when it ran."""

    def warm_kernels(model, process, loss, progress):
        calls.append(("warm-up", model.training, os.environ.get(tuning.TUNE_CACHE_ENV)))
        for _ in range(100):
            loop.clock()
        return warmup.KernelWarmup(launches=10, builds=4, failed=0, seconds=100.0, processes=2)

    return warm_kernels


def test_the_budget_clock_starts_after_the_kernel_warmup(corpus, tmp_path, monkeypatch):
    """Under the fake clock a step takes 1 s: a 15 s budget trains as many steps with a 100 s
    warm-up before it as without one; the warm-up's time is in metrics.jsonl and results.json."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(tuning.TUNE_CACHE_ENV, raising=False)
    calls, steps = [], {}
    monkeypatch.setattr(warmup, "uses_kernels", lambda config, process: True)
    monkeypatch.setattr(warmup, "warm_kernels", stand_in_warm_kernels(calls))
    changes = dict(time_budget=0.25, eval_at_epoch_end=False)
    for warm_up in (False, True):
        monkeypatch.setattr(loop, "clock", FakeClock())
        run_dir = tmp_path / f"warm-{warm_up}"
        steps[warm_up] = train(tiny_config(corpus, run_dir, kernel_warmup=warm_up, **changes)).step
    assert calls == [("warm-up", True, None)]  # before the tune cache is set: outside the run
    assert 8 <= steps[True] == steps[False]
    run_dir = tmp_path / "warm-True"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    warm_rows = [r for r in records if r["split"] == "kernel_warmup"]
    assert [(r["step"], r["kernel_warmup_seconds"]) for r in warm_rows] == [(0, 100.0)]
    assert records.index(warm_rows[0]) < min(
        i for i, r in enumerate(records) if r["split"] == "train"
    )
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["kernel_warmup_seconds"], results["kernel_warmup_builds"]) == (100.0, 4)
    assert logged(run_dir, "loss")
    assert "kernel_warmup_seconds" not in json.loads(
        (tmp_path / "warm-False" / "results.json").read_text()
    )


def test_the_tune_cache_is_the_users_cache_dir_unless_the_environment_names_one(
    tmp_path, monkeypatch
):
    monkeypatch.delenv(tuning.TUNE_CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    expected = tmp_path / "xdg" / "flash-transformer" / "launch_choices.json"
    assert warmup.default_tune_cache() == expected
    with warmup.tune_cache(True) as path:
        assert path == expected and os.environ[tuning.TUNE_CACHE_ENV] == str(expected)
    assert tuning.TUNE_CACHE_ENV not in os.environ  # as before the run
    with warmup.tune_cache(False) as path:
        assert path is None and tuning.TUNE_CACHE_ENV not in os.environ
    monkeypatch.setenv(tuning.TUNE_CACHE_ENV, str(tmp_path / "mine.json"))
    with warmup.tune_cache(True) as path:
        assert path == tmp_path / "mine.json"
    assert os.environ[tuning.TUNE_CACHE_ENV] == str(tmp_path / "mine.json")


CONFIGS = [tuning.LaunchConfig(64, 64, 4, 1), tuning.LaunchConfig(32, 64, 4, 2)]


def test_a_choice_is_saved_once_and_reused_by_the_next_run(tmp_path, monkeypatch):
    """The first run's choice (the first candidate fails to run, so the second is chosen) is
    written to the cache file, atomically; the next run (a fresh process: no choices in memory)
    reads it and launches it, not the first candidate it would choose itself."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(tuning.TUNE_CACHE_ENV, raising=False)
    monkeypatch.setenv("FLASH_ATTENTION_AUTOTUNE", "0")
    key = ("fwd", "cpu", "torch.bfloat16", (), (), 32, 32)
    runs = []

    def first_fails(config):
        runs.append(config)
        if config == CONFIGS[0]:
            raise RuntimeError("out of resources")

    def any_runs(config):
        runs.append(config)

    for _ in range(2):  # two runs, each a fresh process
        monkeypatch.setattr(tuning, "_CHOICES", {})
        monkeypatch.setattr(tuning, "_loaded_from", set())
        with warmup.tune_cache(True) as path:
            chosen = tuning.pick(key, CONFIGS, first_fails if not runs else any_runs)
        assert chosen == CONFIGS[1]
    assert runs == [CONFIGS[0], CONFIGS[1], CONFIGS[1]]  # the second run tried nothing else
    saved = json.loads(path.read_text())
    assert [entry["config"] for entry in saved["choices"]] == [vars(CONFIGS[1])]
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left


@pytest.mark.slow  # records the base model's shape (one layer each): ~1 min on 2 busy cores
def test_the_gpu_plan_counts_the_base_models_specialisations(kernel_device):
    """benchmarks/gpu_plan.py estimates the training step's warm-up from these counts."""
    from collections import Counter

    from benchmarks import gpu_plan
    from transformer.config import ModelConfig
    from transformer.translation.training.config import PRESETS

    shape = {**PRESETS["base"].model, "encoder_layers": 1, "decoder_layers": 1, "d_ff": 64}
    model = Transformer(ModelConfig(50, 50, **shape, backend="triton")).to(kernel_device)
    launches = warmup.record_launches(model, Process(torch.device(kernel_device)), LOSS)
    counts = Counter(job.name for job in jobs_of(launches))
    assert counts == gpu_plan.TRAIN_WARM_SPECIALISATIONS
