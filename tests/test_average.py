"""Checkpoint averaging: the mean of known tensors, refusal of checkpoints that do not match,
atomic writes, and averaging at the end of training (``--average-last``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import tiny_config

from transformer.translation import average, checkpoint, translate
from transformer.translation.average import average_weights
from transformer.translation.checkpoint import CheckpointError, load_checkpoint, load_recent
from transformer.translation.training import train

REPO = Path(__file__).resolve().parents[1]


def test_average_of_known_tensors_is_their_elementwise_mean_in_their_dtype():
    a = {
        "w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
        "b": torch.tensor([1.0], dtype=torch.bfloat16),
    }
    b = {
        "w": torch.tensor([[3.0, 2.0], [1.0, 0.0]]),
        "b": torch.tensor([2.0], dtype=torch.bfloat16),
    }
    c = {
        "w": torch.tensor([[2.0, 5.0], [2.0, 2.0]]),
        "b": torch.tensor([6.0], dtype=torch.bfloat16),
    }
    mean = average_weights([a, b, c], ["a", "b", "c"])
    torch.testing.assert_close(mean["w"], torch.tensor([[2.0, 3.0], [2.0, 2.0]]))
    assert mean["b"].dtype == torch.bfloat16 and mean["b"].item() == 3.0


def test_mismatched_checkpoints_are_refused_with_both_names():
    a = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
    with pytest.raises(
        CheckpointError, match=r"cannot average one and two: w is \(2, 3\).*\(3, 2\)"
    ):
        average_weights([a, {"w": torch.zeros(3, 2), "b": torch.zeros(3)}], ["one", "two"])
    with pytest.raises(
        CheckpointError, match=r"cannot average one and two: different tensors.*'b'"
    ):
        average_weights([a, {"w": torch.zeros(2, 3)}], ["one", "two"])
    with pytest.raises(CheckpointError, match="float32 in one and .*float16 in the other"):
        average_weights([a, {"w": torch.zeros(2, 3).half(), "b": torch.zeros(3)}], ["one", "two"])


@pytest.fixture(scope="module")
def averaged_run(corpus, tmp_path_factory) -> Path:  # noqa: F811
    """A tiny run that keeps its last 3 checkpoints (steps 8, 12, 16) and averages them."""
    run_dir = tmp_path_factory.mktemp("avg") / "run"
    config = tiny_config(
        corpus, run_dir, max_steps=16, checkpoint_every=4, eval_at_epoch_end=False,
        average_last=3, final_test=True,
    )  # fmt: skip
    train(config)
    return run_dir


def test_training_averages_its_last_checkpoints_and_keeps_the_better_as_best(averaged_run):
    kept = load_recent(averaged_run, 10)
    assert [c.meta["step"] for c in kept] == [8, 12, 16]
    best = load_checkpoint(averaged_run, "best")
    on_disk = {p.name for p in (averaged_run / "checkpoints").iterdir()}
    named = {c.directory.name for c in kept} | {best.directory.name}
    assert on_disk == named | {"average-00000008-00000016"}  # nothing older is left behind
    averaged = load_checkpoint(averaged_run, "average")
    assert averaged.meta["averaged_steps"] == [8, 12, 16]
    weights = [load_file(c.directory / "model.safetensors") for c in kept]
    mean = load_file(averaged.directory / "model.safetensors")
    for name, tensor in mean.items():
        expected = sum(w[name].double() for w in weights) / 3
        torch.testing.assert_close(tensor, expected.to(tensor.dtype), msg=name)
    results = json.loads((averaged_run / "results.json").read_text())
    assert {"average_val_bleu", "average_val_chrf", "test_chrf", "val_chrf"} <= set(results)
    assert isinstance(results["average_is_best"], bool)  # was written as 0.0 / 1.0
    assert results["best_val_bleu"] == max(results["val_bleu"], results["average_val_bleu"])
    if results["average_is_best"]:
        assert best.directory == averaged.directory
        assert results["val_bleu"] == results["average_val_bleu"]
    else:
        assert best.directory != averaged.directory
        assert results["val_bleu"] >= results["average_val_bleu"]
    records = [
        json.loads(line) for line in (averaged_run / "metrics.jsonl").read_text().splitlines()
    ]
    assert any(r["split"] == "val_average" for r in records)


def test_average_tool_writes_a_checkpoint_translate_can_use(averaged_run, capsys):
    assert average.main(["--checkpoint", str(averaged_run), "--last", "2"]) == 0
    assert "averaged steps 12, 16" in capsys.readouterr().out
    assert load_checkpoint(averaged_run, "average").meta["averaged_steps"] == [12, 16]
    out = translate.Translator(averaged_run, which="average").translate(["Ein Hund."], beam_size=1)
    assert len(out) == 1


def test_average_write_is_atomic_a_failed_save_leaves_the_previous_average(
    averaged_run, monkeypatch, capsys
):
    # The failing save goes to the very directory the current average.json names.
    assert average.main(["--checkpoint", str(averaged_run), "--last", "2"]) == 0
    before = (averaged_run / "average.json").read_text()

    def dies_half_way(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", dies_half_way)
    assert average.main(["--checkpoint", str(averaged_run), "--last", "2"]) == 2
    err = capsys.readouterr().err
    assert "not written (disk full); average.json still names the checkpoint of step" in err
    assert (averaged_run / "average.json").read_text() == before
    load_checkpoint(averaged_run, "average")  # still complete and verified


def test_average_tool_refuses_a_run_that_kept_one_checkpoint(corpus, tmp_path, capsys):  # noqa: F811
    train(tiny_config(corpus, tmp_path / "run", max_steps=4, checkpoint_every=2))
    with pytest.raises(SystemExit):
        average.main(["--checkpoint", str(tmp_path / "run")])
    assert "keeps only 1 recent checkpoint: train with --average-last" in capsys.readouterr().err
    assert average.main(["--checkpoint", str(tmp_path / "nothing")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_average_tool_help_runs_as_a_module():
    done = subprocess.run(
        [sys.executable, "-m", "transformer.translation.average", "--help"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0 and "--last" in done.stdout and "usage" in done.stdout


def test_only_the_last_n_checkpoints_and_the_best_are_kept(tmp_path):
    model = torch.nn.Linear(2, 2)
    for step in range(1, 6):
        meta = {"step": step, "model_config": {}}
        checkpoint.save_checkpoint(tmp_path, model, {}, meta, best=step == 2, keep_last=2)
    on_disk = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert on_disk == ["step-00000002", "step-00000004", "step-00000005"]
    assert [c.meta["step"] for c in load_recent(tmp_path, 5)] == [4, 5]
