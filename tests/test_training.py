"""The training pipeline end to end on a tiny model and a slice of Multi30K.

What is checked: the loop can overfit (loss falls far, training sentences come back), a stopped
and resumed run equals an uninterrupted one, broken checkpoints are refused, two gloo ranks stay
identical, the attention backends give the same loss, and translate.py reads what train.py wrote.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for train.py

import train as train_cli  # noqa: E402
from transformer.config import ModelConfig  # noqa: E402
from transformer.model import Transformer  # noqa: E402
from transformer.translation import translate  # noqa: E402
from transformer.translation.batching import make_batch  # noqa: E402
from transformer.translation.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from transformer.translation.data import DEFAULT_DATA_DIR  # noqa: E402
from transformer.translation.evaluation import translate_ids  # noqa: E402
from transformer.translation.tokenizer import decode, encode, load_tokenizer  # noqa: E402
from transformer.translation.training import TrainConfig, sizing, train  # noqa: E402
from transformer.translation.training.corpus import encode_split  # noqa: E402
from transformer.translation.training.loop import label_smoothed_loss  # noqa: E402
from transformer.translation.training.schedules import budget_used, learning_rate  # noqa: E402
from transformer.translation.training.state import TrainState  # noqa: E402

TINY_MODEL = ModelConfig(
    1, 1, d_model=64, heads=2, encoder_layers=2, decoder_layers=2, d_ff=128, dropout=0.1
)


@pytest.fixture(autouse=True)
def fast_machine(monkeypatch):
    """Tests never time the machine: --config auto sees a rate that picks the cpu preset (the
    choice itself is tested in test_sizing.py)."""
    monkeypatch.setattr(sizing, "measure_gflops", lambda dtype: sizing.FAST_GFLOPS * 2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The first sentences of each Multi30K split, as a corpus directory of plain text files."""
    directory = tmp_path_factory.mktemp("corpus")
    for split, count in (("train", 64), ("val", 16), ("test_2016_flickr", 16)):
        for lang in ("de", "en"):
            with gzip.open(DEFAULT_DATA_DIR / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
                lines = [next(f) for _ in range(count)]
            (directory / f"{split}.{lang}").write_text("".join(lines), encoding="utf-8")
    return directory


def tiny_config(corpus: Path, run_dir: Path, **changes) -> TrainConfig:
    base = dict(
        model=TINY_MODEL, data=str(corpus), run_dir=str(run_dir), vocab_size=400, max_tokens=256,
        lr=3e-3, warmup_steps=20, time_budget=None, threads=1, progress=False, log_every=1,
        checkpoint_every=0, final_test=False, amp="off", beam_size=2,
        device="cpu",  # bit-exact resume comparisons and the gloo test are CPU tests by design
    )  # fmt: skip
    base.update(changes)
    return TrainConfig(**base)


def train_losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def test_overfits_a_small_slice_and_reproduces_its_sentences(corpus, tmp_path):
    config = tiny_config(
        corpus, tmp_path / "run", model=dataclasses.replace(TINY_MODEL, dropout=0.0),
        train_limit=24, max_steps=300, lr=5e-3, label_smoothing=0.0, eval_at_epoch_end=False,
    )  # fmt: skip
    result = train(config)
    start, end = sum(result.losses[:5]) / 5, sum(result.losses[-10:]) / 10
    assert end < 0.1 * start, (start, end)
    tokenizer = load_tokenizer(tmp_path / "run" / "tokenizer.json")
    sources = (corpus / "train.de").read_text().splitlines()[:24]
    targets = (corpus / "train.en").read_text().splitlines()[:24]
    hyps = decode(tokenizer, translate_ids(result.model, encode(tokenizer, sources), beam_size=1))
    exact = sum(h == t for h, t in zip(hyps, targets, strict=True))
    assert exact >= 20, list(zip(hyps, targets, strict=True))


@pytest.mark.slow  # the default run resumes a killed run: test_killed_and_resumed_default_run_...
def test_stopped_and_resumed_run_equals_uninterrupted_run(corpus, tmp_path):
    # Stopped by a smaller --max-steps and resumed with a larger one: only a schedule that does
    # not know the budget can give the same run (linear decay would have ended at zero at step 6;
    # its killed-and-resumed runs are tested below).
    whole = train(tiny_config(corpus, tmp_path / "whole", max_steps=14, schedule="inverse-sqrt"))
    # Stop after 6 steps (mid-epoch: an epoch of 64 pairs is ~9 batches), then resume to 14.
    part = tiny_config(corpus, tmp_path / "part", max_steps=6, schedule="inverse-sqrt")
    train(part)
    assert load_checkpoint(tmp_path / "part").meta["step"] == 6
    resumed = train(dataclasses.replace(part, max_steps=14), resume=True)
    assert resumed.step == whole.step == 14
    losses_whole, losses_resumed = train_losses(tmp_path / "whole"), train_losses(tmp_path / "part")
    assert sorted(losses_resumed) == list(range(1, 15))
    for step, loss in losses_whole.items():
        assert losses_resumed[step] == pytest.approx(loss, rel=1e-6, abs=1e-6), step
    for (name, a), b in zip(
        whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)


def test_truncated_or_mismatched_checkpoint_is_refused(corpus, tmp_path):
    config = tiny_config(corpus, tmp_path / "run", max_steps=3)
    train(config)
    checkpoint = load_checkpoint(tmp_path / "run")
    wrong = Transformer(
        dataclasses.replace(TINY_MODEL, d_model=32, src_vocab_size=400, tgt_vocab_size=400)
    )
    with pytest.raises(CheckpointError, match="do not fit this model"):
        checkpoint.load_weights(wrong)
    weights = checkpoint.directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors: corrupt checkpoint file .*truncated"
    ):
        load_checkpoint(tmp_path / "run")
    with pytest.raises(CheckpointError, match="truncated"):
        train(dataclasses.replace(config, max_steps=6), resume=True)
    (tmp_path / "run" / "last.json").write_text('{"format": 1, "direc')
    with pytest.raises(CheckpointError, match="corrupt checkpoint pointer"):
        load_checkpoint(tmp_path / "run")


def test_missing_run_dir_and_step_folder_get_their_own_messages(tmp_path):
    with pytest.raises(CheckpointError, match="nope: no such directory"):
        load_checkpoint(tmp_path / "nope")
    step_dir = tmp_path / "run" / "checkpoints" / "step-00000030"
    step_dir.mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"last\.json not found.*give the run directory"):
        load_checkpoint(step_dir)
    with pytest.raises(CheckpointError, match=r"last\.json not found\)$"):
        load_checkpoint(tmp_path / "run")  # an empty run directory: no hint


def test_bad_data_leaves_no_run_directory(corpus, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for path in corpus.iterdir():
        (bad / path.name).write_text(path.read_text())
    (bad / "train.de").write_text("Ein Hund.\n\nEine Katze.\n")
    assert train_cli.main(["--run-dir", str(tmp_path / "run"), "--data", str(bad)]) == 2
    assert "empty line" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_bad_test_split_is_refused_before_training(corpus, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for path in corpus.iterdir():
        (bad / path.name).write_text(path.read_text())
    test_files = [p for p in bad.iterdir() if p.name.startswith("test")]
    assert test_files, "the corpus fixture should have a test split"
    for path in test_files:
        path.unlink()
    assert train_cli.main(["--run-dir", str(tmp_path / "run"), "--data", str(bad)]) == 2
    assert "no file for split" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # the triton backend under the interpreter; its step: test_triton_backend.py
def test_backends_give_the_same_loss(corpus, tmp_path, kernel_device):
    config = tiny_config(corpus, tmp_path / "run", max_steps=1)
    train(config)  # for its tokenizer
    tokenizer = load_tokenizer(tmp_path / "run" / "tokenizer.json")
    from transformer.translation.data import load_split

    data = encode_split(tokenizer, load_split(corpus, "train"), config, 32, filter_long=False)
    batch = make_batch(data.src, data.tgt)
    vocab = tokenizer.get_vocab_size()
    base = dataclasses.replace(TINY_MODEL, dropout=0.0, src_vocab_size=vocab, tgt_vocab_size=vocab)
    backends = ["naive", "sdpa"]
    if importlib.util.find_spec("kernels.flash_attention"):
        backends.append("triton")
    torch.manual_seed(0)
    reference = Transformer(base)
    losses = {}
    for backend in backends:
        model = Transformer(dataclasses.replace(base, backend=backend))
        model.load_state_dict(reference.state_dict())
        model.to(kernel_device)
        src, tgt_in, tgt_out = (
            t.to(kernel_device) for t in (batch.src, batch.tgt_in, batch.tgt_out)
        )
        losses[backend] = label_smoothed_loss(model(src, tgt_in), tgt_out, 0.1).item()
    for loss in losses.values():
        assert loss == pytest.approx(losses["naive"], abs=1e-5), losses


@pytest.mark.slow  # compiling; one compiled step runs by default in tests/test_compile.py
def test_compiled_training_has_the_losses_of_eager_training(corpus, tmp_path, monkeypatch):
    """--compile: the same step losses as eager (float32, no dropout), and checkpoints that a
    plain model loads. Compiled with the aot_eager backend (the graphs Dynamo and AOTAutograd
    capture, without Inductor's slow code generation; tests/test_compile.py runs Inductor)."""
    compiled_models, real_compile = [], torch.compile

    def compile_with_aot_eager(model, **kwargs):
        compiled_models.append(model)
        return real_compile(model, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch, "compile", compile_with_aot_eager)
    model = dataclasses.replace(TINY_MODEL, dropout=0.0)
    losses = {}
    for compiled in (False, True):
        run_dir = tmp_path / f"compile-{compiled}"
        config = tiny_config(
            corpus, run_dir, model=model, max_steps=4, compile=compiled, eval_at_epoch_end=False
        )
        train(config)
        losses[compiled] = train_losses(run_dir)
    assert len(compiled_models) == 1  # the compiled run, once
    assert losses[True].keys() == losses[False].keys() == {1, 2, 3, 4}
    for step, loss in losses[False].items():
        assert losses[True][step] == pytest.approx(loss, abs=1e-5), step
    checkpoint = load_checkpoint(tmp_path / "compile-True", "last")
    checkpoint.load_weights(Transformer(ModelConfig(**checkpoint.model_config)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, config: TrainConfig, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
    )  # fmt: skip
    import torch.distributed as dist

    result = train(config)
    torch.save(result.model.state_dict(), Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes, each importing torch and training
def test_two_gloo_ranks_take_a_step_and_stay_identical(corpus, tmp_path):
    config = tiny_config(corpus, tmp_path / "run", max_steps=1, val_limit=4)
    mp.spawn(_ddp_worker, args=(2, _free_port(), config, str(tmp_path)), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    initial = Transformer(
        dataclasses.replace(TINY_MODEL, src_vocab_size=states[0]["src_embed.embedding.weight"].shape[0],
                            tgt_vocab_size=states[0]["src_embed.embedding.weight"].shape[0])
    )  # fmt: skip
    moved = False
    for name, value in states[0].items():
        torch.testing.assert_close(states[1][name], value, rtol=0, atol=0, msg=name)
        moved |= name in initial.state_dict() and not torch.equal(value, initial.state_dict()[name])
    assert moved, "the step changed no parameter"
    # Only rank 0 wrote the run: one checkpoint, at step 1.
    assert load_checkpoint(tmp_path / "run").meta["step"] == 1


def test_translate_reads_a_checkpoint_written_by_train_py(corpus, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    argv = [
        "--run-dir", str(run_dir), "--data", str(corpus), "--d-model", "64", "--heads", "2",
        "--encoder-layers", "1", "--decoder-layers", "1", "--d-ff", "128", "--vocab-size", "400",
        "--max-tokens", "256", "--max-steps", "30", "--threads", "1", "--no-progress",
        "--beam-size", "2", "--warmup-steps", "10", "--amp", "off",
    ]  # fmt: skip
    assert train_cli.main(argv) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert {"test_bleu", "test_bleu_lc", "val_bleu", "val_bleu_lc"} <= set(results)
    assert (run_dir / "curves.png").stat().st_size > 0
    assert capsys.readouterr().err.splitlines()[0] == f"run directory: {run_dir}"

    sentences = (corpus / "test_2016_flickr.de").read_text().splitlines()[:5]
    lines = [sentences[0], "", *sentences[1:]]
    (tmp_path / "in.de").write_text("\n".join(lines) + "\n")
    args = ["--checkpoint", str(run_dir), "--beam-size", "2"]
    assert (
        translate.main(
            [*args, "--input", str(tmp_path / "in.de"), "--output", str(tmp_path / "new/out.en")]
        )
        == 0
    )
    out = (tmp_path / "new" / "out.en").read_text().split("\n")  # its directory was made
    assert len(out) == len(lines) + 1 and out[-1] == "" and out[1] == ""

    # The same through stdin/stdout, and the same as translating in-process.
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("\n".join(lines) + "\n"))
    assert translate.main(args) == 0
    assert capsys.readouterr().out.split("\n") == out
    direct = translate.Translator(run_dir).translate(sentences, beam_size=2)
    assert [out[0], *out[2:-1]] == direct

    # The checkpoint is self-contained: weights load by name into a fresh model.
    weights = load_file(load_checkpoint(run_dir, "best").directory / "model.safetensors")
    assert any(name.startswith("encoder.") for name in weights)


def test_bad_options_are_refused_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv, message in (
        (["--device", "cuda", "--run-dir", str(tmp_path / "run")], "CUDA is not available"),
        (["--lr", "0"], "must be positive"),
        (["--attention", "flash"], "invalid choice"),
        (["--data", str(tmp_path / "nowhere")], "no such directory"),
        (["--resume", str(tmp_path)], "not a run directory"),
        (["--heads", "3"], "divisible"),
    ):
        with pytest.raises(SystemExit):
            train_cli.main(argv)
        assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_translate_refuses_an_unusable_device_before_loading(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        translate.main(["--checkpoint", str(tmp_path), "--device", "cuda"])
    assert exit_info.value.code == 2
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err


def test_translate_help_shows_each_default_once():
    text = " ".join(translate.build_parser().format_help().split())  # unwrapped
    assert "(default: None)" not in text
    assert "(default: stdin) (" not in text and "(default: stdout) (" not in text
    assert "(default: best)" in text and "(default: 4)" in text


# --- the learning-rate schedule ---------------------------------------------------------------


def schedule_config(**changes) -> TrainConfig:
    base = dict(schedule="linear-decay", lr=1e-3, warmup_steps=10, time_budget=None, epochs=100)
    base.update(changes)
    return TrainConfig(**base)


def test_linear_decay_warms_up_linearly_to_the_peak():
    config = schedule_config(max_steps=1000)
    lrs = [learning_rate(config, TrainState(step=s), 50) for s in range(1, 11)]
    for step, lr in enumerate(lrs, start=1):
        # Warm-up meets the decay line (at 1 - 9/1000) just below the peak at step 10.
        assert lr == pytest.approx(1e-3 * min(step / 10, 1 - (step - 1) / 1000)), step
    assert lrs[-1] == pytest.approx(1e-3 * (1 - 9 / 1000))


def test_linear_decay_reaches_zero_exactly_at_the_end_of_the_time_budget():
    config = schedule_config(time_budget=2.0)  # 120 s
    at = {
        t: learning_rate(config, TrainState(step=500, schedule_time=t), 50) for t in (30, 90, 120)
    }
    assert at[30] == pytest.approx(0.75e-3) and at[90] == pytest.approx(0.25e-3)
    assert at[120] == 0.0
    assert learning_rate(config, TrainState(step=500, schedule_time=500.0), 50) == 0.0


def test_linear_decay_follows_steps_or_epochs_when_those_end_first():
    by_steps = schedule_config(max_steps=200, time_budget=60.0)
    assert learning_rate(by_steps, TrainState(step=101), 50) == pytest.approx(0.5e-3)
    assert learning_rate(by_steps, TrainState(step=201), 50) == 0.0
    by_epochs = schedule_config(epochs=4)  # 200 steps of 50 batches
    state = TrainState(step=151, epoch=3, next_batch=0)  # 3 of 4 epochs done before this step
    assert learning_rate(by_epochs, state, 50) == pytest.approx(0.25e-3)
    assert budget_used(by_epochs, TrainState(epoch=1, next_batch=25), 50) == pytest.approx(1.5 / 4)


def test_inverse_sqrt_schedule_is_unchanged_by_the_budget():
    config = schedule_config(schedule="inverse-sqrt", warmup_steps=100, time_budget=1.0)
    late = TrainState(step=400, schedule_time=59.0)
    assert learning_rate(config, late, 50) == pytest.approx(1e-3 * 0.5)


class FakeClock:
    """A clock that moves one second every time it is read."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


class Killed(Exception):
    pass


def logged(run_dir: Path, key: str) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in records if r["split"] == "train"}


def test_linear_decay_on_a_time_budget_ends_near_zero_and_resumes_exactly(
    corpus, tmp_path, monkeypatch
):
    from transformer.translation.training import budget, checkpointing

    # Under the fake clock a step takes 1 s and so does a validation: a 15 s budget.
    changes = dict(schedule="linear-decay", warmup_steps=2, time_budget=0.25, checkpoint_every=3)
    monkeypatch.setattr(budget, "clock", FakeClock())
    whole = train(tiny_config(corpus, tmp_path / "whole", **changes))
    lrs = logged(tmp_path / "whole", "lr")
    assert 8 <= whole.step <= 15
    train_time = load_checkpoint(tmp_path / "whole").meta["train_time"]
    assert train_time >= 15 and train_time - 15 <= 2, train_time  # stopped by the budget
    after_warmup = [lrs[s] for s in sorted(lrs) if s > 2]
    assert all(a > b for a, b in zip(after_warmup, after_warmup[1:], strict=False)), lrs
    assert 0 < lrs[whole.step] <= 3e-3 * 2 / 15, lrs  # the last step: within 2 s of the end

    # The same run killed just after its step-6 checkpoint, then resumed.
    save = checkpointing.save_checkpoint

    def save_then_die(run_dir, model, state, meta, **kwargs):
        save(run_dir, model, state, meta, **kwargs)
        if meta["step"] == 6:
            raise Killed

    monkeypatch.setattr(budget, "clock", FakeClock())
    monkeypatch.setattr(checkpointing, "save_checkpoint", save_then_die)
    config = tiny_config(corpus, tmp_path / "part", **changes)
    with pytest.raises(Killed):
        train(config)
    monkeypatch.setattr(checkpointing, "save_checkpoint", save)
    resumed = train(config, resume=True)
    assert resumed.step == whole.step
    assert logged(tmp_path / "part", "lr") == lrs
    for step, loss in logged(tmp_path / "whole", "loss").items():
        assert logged(tmp_path / "part", "loss")[step] == pytest.approx(loss, rel=1e-6, abs=1e-6)


def test_a_validation_that_spends_the_time_budget_ends_the_run_at_that_step(
    corpus, tmp_path, monkeypatch
):
    from transformer.translation.training import budget

    # Fake clock: a step takes 1 s and so does a validation. The validation after step 4 takes
    # the loop to 5 s, over the 4.5 s budget: the run ends there, validated once, not a step later.
    monkeypatch.setattr(budget, "clock", FakeClock())
    config = tiny_config(
        corpus, tmp_path / "run", time_budget=4.5 / 60, eval_every=4, eval_at_epoch_end=False
    )
    result = train(config)
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert result.step == 4
    assert [r["step"] for r in records if r["split"] == "val"] == [4]
    assert load_checkpoint(tmp_path / "run").meta["train_time"] == 5.0  # the validation counted


def test_killed_and_resumed_default_run_equals_uninterrupted_run(corpus, tmp_path, monkeypatch):
    from transformer.translation.training import checkpointing

    # The default schedule (linear decay over a 14-step budget), killed just after its step-6
    # checkpoint (mid-epoch) and resumed: the same learning rates, losses and weights.
    assert TrainConfig().schedule == "linear-decay"
    whole = train(tiny_config(corpus, tmp_path / "whole", max_steps=14))
    save = checkpointing.save_checkpoint

    def save_then_die(run_dir, model, state, meta, **kwargs):
        save(run_dir, model, state, meta, **kwargs)
        if meta["step"] == 6:
            raise Killed

    monkeypatch.setattr(checkpointing, "save_checkpoint", save_then_die)
    config = tiny_config(corpus, tmp_path / "part", max_steps=14, checkpoint_every=3)
    with pytest.raises(Killed):
        train(config)
    monkeypatch.setattr(checkpointing, "save_checkpoint", save)
    resumed = train(config, resume=True)
    assert resumed.step == whole.step == 14
    assert logged(tmp_path / "part", "lr") == logged(tmp_path / "whole", "lr")
    assert sorted(logged(tmp_path / "part", "loss")) == list(range(1, 15))
    for step, loss in logged(tmp_path / "whole", "loss").items():
        assert logged(tmp_path / "part", "loss")[step] == pytest.approx(loss, rel=1e-6, abs=1e-6)
    for (name, a), b in zip(
        whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)
