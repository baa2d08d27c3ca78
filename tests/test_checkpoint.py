"""Checkpoint files (transformer.translation.checkpoint) without a training run: what is refused on load,
and what a save that crashes or repeats a step leaves behind."""

import json
import os

import pytest
import torch
from torch import nn

from transformer.translation import checkpoint as ckpt
from transformer.translation.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)


def small_model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def save_step(run_dir, step, seed=None, best=False, keep_last=1):
    model = small_model(step if seed is None else seed)
    state = {"optimizer": {"step": torch.tensor(float(step)), "moments": torch.randn(5)}}
    meta = {"step": step, "model_config": {}}
    save_checkpoint(run_dir, model, state, meta, best=best, keep_last=keep_last)
    return model


def weights_of(checkpoint, seed=99):
    model = small_model(seed)
    checkpoint.load_weights(model)
    return model.state_dict()


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_saved_checkpoint_loads_its_weights_state_and_step(tmp_path):
    model = save_step(tmp_path, 3)
    loaded = load_checkpoint(tmp_path)
    assert loaded.meta["step"] == 3 and loaded.meta["format"] == FORMAT_VERSION
    assert_same_weights(weights_of(loaded), model.state_dict())
    assert loaded.load_state()["optimizer"]["step"].item() == 3.0


def test_a_file_changed_at_the_same_size_is_refused_by_its_sha256(tmp_path):
    save_step(tmp_path, 3)
    weights = load_checkpoint(tmp_path).directory / ckpt.MODEL_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of the last weight: same size, other bytes
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256 differs from the one recorded"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("name", [ckpt.MODEL_FILE, ckpt.STATE_FILE])
def test_a_missing_checkpoint_file_is_refused_naming_it(tmp_path, name):
    save_step(tmp_path, 3)
    (load_checkpoint(tmp_path).directory / name).unlink()
    with pytest.raises(CheckpointError, match=rf"{name}: missing checkpoint file"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 0, None])
def test_a_pointer_of_another_format_version_is_refused(tmp_path, version):
    save_step(tmp_path, 3)
    pointer = json.loads((tmp_path / "last.json").read_text())
    if version is None:
        del pointer["format"]
    else:
        pointer["format"] = version
    (tmp_path / "last.json").write_text(json.dumps(pointer))
    with pytest.raises(CheckpointError, match=rf"checkpoint format {version!r}, this code reads"):
        load_checkpoint(tmp_path)


def rewrite_verified(run_dir, name, data):
    """Replace a checkpoint file and record its new digest, as if it had been saved so."""
    pointer = json.loads((run_dir / "last.json").read_text())
    path = run_dir / pointer["directory"] / name
    path.write_bytes(data)
    pointer["files"][name] = ckpt._digest(path)
    (run_dir / "last.json").write_text(json.dumps(pointer))


class NotAPlainTensor:
    pass


@pytest.mark.parametrize("content", ["garbage", "pickled-object"])
def test_an_unreadable_training_state_is_refused_with_a_checkpoint_error(tmp_path, content):
    save_step(tmp_path, 3)
    if content == "garbage":
        data = os.urandom(256)
    else:  # a pickle that weights_only loading refuses to run
        path = tmp_path / "object.pt"
        torch.save({"optimizer": NotAPlainTensor()}, path)
        data = path.read_bytes()
    rewrite_verified(tmp_path, ckpt.STATE_FILE, data)
    loaded = load_checkpoint(tmp_path)  # sizes and hashes match what is recorded
    with pytest.raises(CheckpointError, match=r"state\.pt: unreadable training state"):
        loaded.load_state()


@pytest.mark.parametrize("crash_in", ["torch.save", "fsync", "pointer"])
def test_a_save_that_crashes_leaves_the_previous_checkpoint_loadable(
    tmp_path, monkeypatch, crash_in
):
    first = save_step(tmp_path, 3, best=True)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    target = {
        "torch.save": (ckpt.torch, "save"),
        "fsync": (ckpt, "_fsync_file"),
        "pointer": (ckpt, "atomic_write_json"),
    }[crash_in]
    with monkeypatch.context() as patch:
        patch.setattr(*target, crash)
        with pytest.raises(CheckpointError, match=r"not written \(disk full\).* step 3, which"):
            save_step(tmp_path, 6)
    for which in ("last", "best"):
        loaded = load_checkpoint(tmp_path, which)
        assert loaded.meta["step"] == 3
        assert_same_weights(weights_of(loaded), first.state_dict())
    later = save_step(tmp_path, 9)  # the next save succeeds and clears what the crash left
    assert_same_weights(weights_of(load_checkpoint(tmp_path)), later.state_dict())
    left = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert left == ["step-00000003", "step-00000009"]  # best (3) and last (9); no .tmp


def test_resaving_a_step_replaces_it_in_last_and_in_the_recent_list(tmp_path):
    save_step(tmp_path, 3, keep_last=3)
    save_step(tmp_path, 6, seed=1, keep_last=3)
    second = save_step(tmp_path, 6, seed=2, keep_last=3)
    last = load_checkpoint(tmp_path)
    assert_same_weights(weights_of(last), second.state_dict())
    assert [r["step"] for r in last.meta["recent"]] == [3, 6]  # one entry per step
    recent = ckpt.load_recent(tmp_path, 3)
    assert [c.meta["step"] for c in recent] == [3, 6]
    assert_same_weights(weights_of(recent[-1]), second.state_dict())


def test_resaving_the_best_step_leaves_best_json_verifiable_with_its_weights(tmp_path):
    first = save_step(tmp_path, 6, seed=1, best=True)
    second = save_step(tmp_path, 6, seed=2, best=False)  # e.g. a resumed run saving at its end
    assert_same_weights(weights_of(load_checkpoint(tmp_path, "last")), second.state_dict())
    assert_same_weights(weights_of(load_checkpoint(tmp_path, "best")), first.state_dict())


def test_a_resave_that_crashes_before_its_pointer_leaves_the_step_loadable(tmp_path, monkeypatch):
    first = save_step(tmp_path, 6, seed=1)
    with monkeypatch.context() as patch:
        patch.setattr(ckpt, "atomic_write_json", lambda *a, **kw: (_ for _ in ()).throw(OSError))
        with pytest.raises(CheckpointError, match=r"step 6 was not written \(OSError\)"):
            save_step(tmp_path, 6, seed=2)
    assert_same_weights(weights_of(load_checkpoint(tmp_path)), first.state_dict())
