"""The learning-rate schedules (linear decay over the time budget, inverse square root) and the
time budget ending a run: exact values on a config, then whole tiny runs under a fake clock
(a killed run resumed follows the same learning rates and losses).
"""

from __future__ import annotations

import json

import pytest
from training_helpers import (
    FakeClock,
    Killed,
    logged,
    tiny_config,
)

from transformer.translation.checkpoint import load_checkpoint
from transformer.translation.training import TrainConfig, train
from transformer.translation.training.loop import budget_used, learning_rate
from transformer.translation.training.resume import TrainState

pytestmark = pytest.mark.usefixtures("fast_machine")


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


def test_linear_decay_on_a_time_budget_ends_near_zero_and_resumes_exactly(
    corpus, tmp_path, monkeypatch
):
    from transformer.translation.training import loop, resume

    # Under the fake clock a step takes 1 s and so does a validation: a 15 s budget.
    changes = dict(schedule="linear-decay", warmup_steps=2, time_budget=0.25, checkpoint_every=3)
    monkeypatch.setattr(loop, "clock", FakeClock())
    whole = train(tiny_config(corpus, tmp_path / "whole", **changes))
    lrs = logged(tmp_path / "whole", "lr")
    assert 8 <= whole.step <= 15
    train_time = load_checkpoint(tmp_path / "whole").meta["train_time"]
    assert train_time >= 15 and train_time - 15 <= 2, train_time  # stopped by the budget
    after_warmup = [lrs[s] for s in sorted(lrs) if s > 2]
    assert all(a > b for a, b in zip(after_warmup, after_warmup[1:], strict=False)), lrs
    assert 0 < lrs[whole.step] <= 3e-3 * 2 / 15, lrs  # the last step: within 2 s of the end

    # The same run killed just after its step-6 checkpoint, then resumed.
    save = resume.save_checkpoint

    def save_then_die(run_dir, model, state, meta, **kwargs):
        save(run_dir, model, state, meta, **kwargs)
        if meta["step"] == 6:
            raise Killed

    monkeypatch.setattr(loop, "clock", FakeClock())
    monkeypatch.setattr(resume, "save_checkpoint", save_then_die)
    config = tiny_config(corpus, tmp_path / "part", **changes)
    with pytest.raises(Killed):
        train(config)
    monkeypatch.setattr(resume, "save_checkpoint", save)
    resumed = train(config, resume=True)
    assert resumed.step == whole.step
    assert logged(tmp_path / "part", "lr") == lrs
    for step, loss in logged(tmp_path / "whole", "loss").items():
        assert logged(tmp_path / "part", "loss")[step] == pytest.approx(loss, rel=1e-6, abs=1e-6)


def test_a_validation_that_spends_the_time_budget_ends_the_run_at_that_step(
    corpus, tmp_path, monkeypatch
):
    from transformer.translation.training import loop

    # Fake clock: a step takes 1 s and so does a validation. The validation after step 4 takes
    # the loop to 5 s, over the 4.5 s budget: the run ends there, validated once, not a step later.
    monkeypatch.setattr(loop, "clock", FakeClock())
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
