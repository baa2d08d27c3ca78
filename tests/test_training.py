"""The training pipeline end to end on a tiny model and a slice of Multi30K.

What is checked: the loop can overfit (loss falls far, training sentences come back), a stopped
or killed run resumed equals an uninterrupted one, broken checkpoints and bad data are refused,
two gloo ranks stay identical, the attention backends (and a compiled model) give the same loss.
The learning-rate schedule and the time budget: tests/test_lr_schedule.py; translate.py reading
what train.py wrote: tests/test_translate_cli.py.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for train.py

from training_helpers import (  # noqa: E402
    TINY_MODEL,
    Killed,
    logged,
    tiny_config,
)

import train as train_cli  # noqa: E402
from transformer.config import ModelConfig  # noqa: E402
from transformer.model import Transformer  # noqa: E402
from transformer.translation.batching import make_batch  # noqa: E402
from transformer.translation.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from transformer.translation.data import encode_split, load_split  # noqa: E402
from transformer.translation.evaluation import translate_ids  # noqa: E402
from transformer.translation.tokenizer import decode, encode, load_tokenizer  # noqa: E402
from transformer.translation.training import TrainConfig, train  # noqa: E402
from transformer.translation.training.loop import label_smoothed_loss  # noqa: E402

pytestmark = pytest.mark.usefixtures("fast_machine")


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
    losses_whole, losses_resumed = (
        logged(tmp_path / "whole", "loss"),
        logged(tmp_path / "part", "loss"),
    )
    assert sorted(losses_resumed) == list(range(1, 15))
    for step, loss in losses_whole.items():
        assert losses_resumed[step] == pytest.approx(loss, rel=1e-6, abs=1e-6), step
    for (name, a), b in zip(
        whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("asked", [5, 60000])
def test_config_json_records_the_vocabulary_the_run_uses(corpus, tmp_path, capsys, asked):
    """Before, config.json kept the placeholder sizes: a model built from it had the wrong
    shapes. BPE never goes below its alphabet (5) nor past what 64 pairs hold (60000)."""
    run_dir = tmp_path / "run"
    result = train(tiny_config(corpus, run_dir, vocab_size=asked, max_steps=1, val_limit=2))
    used = load_tokenizer(run_dir / "tokenizer.json").get_vocab_size()
    assert used != asked and result.model.config.src_vocab_size == used
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["model"]["src_vocab_size"] == saved["model"]["tgt_vocab_size"] == used
    assert saved["vocab_size"] == asked  # what was asked stays recorded
    assert f"vocabulary: {used} tokens (--vocab-size asked for {asked})" in capsys.readouterr().err
    results = json.loads((run_dir / "results.json").read_text())  # no test split scored:
    assert results["best_val_bleu"] >= 0  # still the best validation score


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
    data = encode_split(tokenizer, load_split(corpus, "train"), "de", "en", limit=32)
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
        losses[compiled] = logged(run_dir, "loss")
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


def test_killed_and_resumed_default_run_equals_uninterrupted_run(corpus, tmp_path, monkeypatch):
    from transformer.translation.training import resume

    # The default schedule (linear decay over a 14-step budget), killed just after its step-6
    # checkpoint (mid-epoch) and resumed: the same learning rates, losses and weights.
    assert TrainConfig().schedule == "linear-decay"
    whole = train(tiny_config(corpus, tmp_path / "whole", max_steps=14))
    save = resume.save_checkpoint

    def save_then_die(run_dir, model, state, meta, **kwargs):
        save(run_dir, model, state, meta, **kwargs)
        if meta["step"] == 6:
            raise Killed

    monkeypatch.setattr(resume, "save_checkpoint", save_then_die)
    config = tiny_config(corpus, tmp_path / "part", max_steps=14, checkpoint_every=3)
    with pytest.raises(Killed):
        train(config)
    monkeypatch.setattr(resume, "save_checkpoint", save)
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
