"""Starting and resuming runs (transformer.translation.training): what restore_run() refuses, a
new run in a directory that holds one, a schedule without warm-up, and a resume after a kill
between checkpoints (the metrics the killed run logged after its last checkpoint are dropped)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from training_helpers import tiny_config

from transformer.config import ModelConfig
from transformer.model import Transformer
from transformer.translation.checkpoint import CheckpointError, save_checkpoint
from transformer.translation.training import TrainConfig, train
from transformer.translation.training.loop import learning_rate
from transformer.translation.training.resume import TrainState, restore_run
from transformer.translation.training.setup import make_optimizer

SMALL = ModelConfig(40, 40, d_model=16, heads=2, encoder_layers=1, decoder_layers=1, d_ff=32)
POSITION = dict(step=7, epoch=1, next_batch=3, train_time=12.5, best_bleu=4.25)


def saved_run(run_dir: Path, config: ModelConfig = SMALL, state=None, **meta) -> Transformer:
    """A run directory whose last checkpoint holds a model after one AdamW step."""
    torch.manual_seed(0)
    model = Transformer(config)
    optimizer = make_optimizer(model, TrainConfig())
    model(torch.randint(3, 40, (2, 5)), torch.randint(3, 40, (2, 4))).sum().backward()
    optimizer.step()
    state = {"optimizer": optimizer.state_dict()} if state is None else state
    meta = {**POSITION, "model_config": dataclasses.asdict(config), **meta}
    save_checkpoint(run_dir, model, state, meta)
    return model


def fresh(config: ModelConfig = SMALL):
    torch.manual_seed(1)
    model = Transformer(config)
    return model, make_optimizer(model, TrainConfig())


def test_restore_loads_weights_optimizer_state_and_position(tmp_path):
    saved = saved_run(tmp_path)
    model, optimizer = fresh()
    state = restore_run(tmp_path, model, optimizer)
    assert state == TrainState(**POSITION, schedule_time=POSITION["train_time"])
    for (name, a), b in zip(saved.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    moments = [s["exp_avg"] for s in optimizer.state.values()]
    assert len(moments) == len(list(model.parameters())) and any(m.abs().sum() > 0 for m in moments)


def test_restore_refuses_a_checkpoint_of_another_model_config(tmp_path):
    saved_run(tmp_path)
    other = dataclasses.replace(SMALL, d_ff=64)
    model, optimizer = fresh(other)
    with pytest.raises(CheckpointError, match="checkpoint model config .* does not match"):
        restore_run(tmp_path, model, optimizer)


@pytest.mark.parametrize(
    "written, resumed, command",
    [(2, 1, "torchrun --nproc_per_node=2 train.py --resume"), (1, 2, "python train.py --resume")],
)
def test_restore_refuses_another_number_of_processes_naming_the_command(
    tmp_path, written, resumed, command
):
    """The slow end-to-end case: test_train_failures.py (two torchrun ranks, then one process)."""
    saved_run(tmp_path, world_size=written)
    model, optimizer = fresh()
    message = f"written by {written} data-parallel processes, this run has {resumed}"
    with pytest.raises(CheckpointError, match=message) as refused:
        restore_run(tmp_path, model, optimizer, world_size=resumed)
    assert f"{command} {tmp_path}" in str(refused.value)
    restore_run(tmp_path, model, optimizer, world_size=written)  # as many: resumed


@pytest.mark.parametrize("state", ["no-optimizer", "other-groups", "other-sizes"])
def test_restore_refuses_optimizer_state_that_does_not_fit(tmp_path, state):
    torch.manual_seed(0)
    model = Transformer(SMALL)
    if state == "no-optimizer":
        saved = {"scheduler": {}}
    elif state == "other-groups":  # one parameter group where the run has two
        saved = {"optimizer": torch.optim.AdamW(model.parameters()).state_dict()}
    else:  # two groups of other sizes
        params = list(model.parameters())
        saved = {"optimizer": torch.optim.AdamW([{"params": params[:3]}, {"params": params[3:]}]).state_dict()}  # fmt: skip
    saved_run(tmp_path, state=saved)
    model, optimizer = fresh()
    with pytest.raises(CheckpointError, match="optimizer state does not fit"):
        restore_run(tmp_path, model, optimizer)


def test_a_new_run_refuses_a_directory_that_holds_a_run_and_touches_nothing(
    corpus,  # noqa: F811
    tmp_path,
):
    run_dir = tmp_path / "run"
    saved_run(run_dir)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match="already holds a run; resume it"):
        train(tiny_config(corpus, run_dir, max_steps=2))
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_resuming_a_directory_without_a_run_is_refused(
    corpus,  # noqa: F811
    tmp_path,
):
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match="not a run directory"):
        train(tiny_config(corpus, tmp_path / "run", max_steps=2), resume=True)


def test_resuming_a_run_killed_before_its_first_checkpoint_says_to_start_it_again(
    corpus,  # noqa: F811
    tmp_path,
):
    """It used to say only "no checkpoint (last.json not found)"."""
    config = tiny_config(corpus, tmp_path / "run", max_steps=2)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(config.to_dict()))  # killed here
    with pytest.raises(CheckpointError) as refused:
        train(config, resume=True)
    message = str(refused.value)
    assert "stopped before its first checkpoint: nothing to resume" in message, message
    assert f"start it again as a new run (--run-dir {tmp_path / 'run'}" in message
    assert train(config).step == 2  # which that directory takes


def test_without_warmup_the_first_step_takes_the_peak_learning_rate():
    config = TrainConfig(warmup_steps=0, lr=1e-3, max_steps=100, time_budget=None, epochs=100)
    linear = [learning_rate(config, TrainState(step=s), 50) for s in (1, 51, 101)]
    assert linear == pytest.approx([1e-3, 0.5e-3, 0.0])
    constant = dataclasses.replace(config, schedule="inverse-sqrt")  # no warm-up, no decay
    lrs = [learning_rate(constant, TrainState(step=s), 50) for s in (1, 2, 1000)]
    assert lrs == [1e-3] * 3


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


class Killed(Exception):
    pass


@pytest.mark.slow
def test_a_run_killed_between_checkpoints_resumes_without_its_later_metrics(
    corpus,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    from transformer.translation.training import loop

    log_training = loop.log_training

    def log_then_die(log, state, *args):
        log_training(log, state, *args)
        if state.step == 5:  # two steps after the step-3 checkpoint
            raise Killed

    config = tiny_config(corpus, tmp_path / "run", max_steps=7, checkpoint_every=3)
    with monkeypatch.context() as patch:
        patch.setattr(loop, "log_training", log_then_die)
        with pytest.raises(Killed):
            train(config)
    killed = [r for r in records(tmp_path / "run") if r["split"] == "train"]
    assert [r["step"] for r in killed] == [1, 2, 3, 4, 5]
    resumed = train(config, resume=True)
    assert resumed.step == 7
    lines = records(tmp_path / "run")
    train_lines = [r for r in lines if r["split"] == "train"]
    assert [r["step"] for r in train_lines] == list(range(1, 8))  # 4 and 5 once, redone
    assert train_lines[:3] == killed[:3]  # what the checkpoint covers is kept as it was
    assert all(r["time"] > killed[-1]["time"] for r in train_lines[3:])
    assert [r["split"] for r in lines].count("setup") == 1


def test_resuming_a_finished_run_logs_each_validation_and_test_once(corpus, tmp_path):  # noqa: F811
    """A requeued job resumes a run that had already finished: it used to validate the last step
    again (a second val line, a second checkpoint of that step) and log a second test line."""
    config = tiny_config(corpus, tmp_path / "run", max_steps=2, final_test=True, val_limit=4)
    train(config)
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    resumed = train(config, resume=True)
    assert resumed.step == 2 and "test_bleu" in resumed.metrics
    lines = [(r["split"], r["step"]) for r in records(tmp_path / "run")]
    assert sorted(lines) == sorted(set(lines)), lines
    assert ("test", 2) in lines and ("val", 2) in lines
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == checkpoints
