"""Atomic, self-describing checkpoints.

Layout of a run directory::

    run_dir/
      config.json                    the TrainConfig of the run
      tokenizer.json                 the shared subword vocabulary
      checkpoints/step-00001200/
        model.safetensors            weights
        state.pt                     optimizer and scheduler state (torch.save)
      checkpoints/average-00000800-00001200/
        model.safetensors            the mean of the last checkpoints' weights (transformer.translation.average)
      last.json                      points at the newest checkpoint (and lists the kept ones)
      best.json                      points at the one with the best validation BLEU
      average.json                   points at the averaged weights, if any
      .lock                          held by the process that writes the run (hold_run_dir)

A pointer file (``last.json``/``best.json``/``average.json``) names the checkpoint directory and
records the model config, the tokenizer path, the training position (step, epoch, next batch) and the size and
SHA-256 of every file. It is written last, through a temporary file, ``fsync`` and
``os.replace``, so it is the commit point: a run killed while saving leaves the previous pointer,
which still names complete files. A file that does not match its recorded size or hash (truncated,
overwritten) is refused with :class:`CheckpointError`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_file, save_model

FORMAT_VERSION = 1
MODEL_FILE, STATE_FILE = "model.safetensors", "state.pt"
POINTERS = ("last", "best", "average")
# How a failed write surfaces: OSError from Python's own writes, RuntimeError from torch.save,
# SafetensorError from safetensors (a full disk, a file-size limit, an I/O error).
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, or does not fit the model it is loaded into."""


LOCK_FILE = ".lock"  # in a run directory: the pid of the process that holds it


class RunDirInUse(FileExistsError):
    """Another process is writing into the run directory (training it)."""


@contextmanager
def hold_run_dir(run_dir: str | os.PathLike) -> Iterator[None]:
    """The run directory is this process's within the block: another process that asks for it
    (a second ``train.py``, the average tool) gets :class:`RunDirInUse`, naming the holder's pid,
    instead of writing the same checkpoints and pointers (and removing the folders the other
    one is writing). The lock is the kernel's (``flock``): it goes with the process, however
    that ends, SIGKILL included."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK_FILE
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise RunDirInUse(
                f"{run_dir} is in use by another training process (pid {holder}): let it "
                f"finish or stop it (kill -TERM {holder}: it writes a checkpoint), then try "
                "again; or choose another run directory"
            ) from None
        try:
            f.truncate(0)
            f.write(f"{os.getpid()}\n")
            f.flush()
        except OSError as err:  # e.g. a full disk
            raise naming_the_file(err, path) from err
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:  # e.g. a full disk: the old file stays, the partial one goes
        tmp.unlink(missing_ok=True)
        raise naming_the_file(err, path) from err
    fsync_dir(path.parent)


def naming_the_file(err: OSError, path: Path) -> OSError:
    """``err`` with ``path`` as its file name where it has none (a write or fsync that fails
    names no file), so a message can say which file was not written."""
    if err.filename is not None or err.errno is None:
        return err
    return type(err)(err.errno, err.strerror, str(path))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """:func:`atomic_write_bytes` of ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _digest(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint: where its files are and what its pointer says."""

    directory: Path
    meta: dict[str, Any]

    @property
    def model_config(self) -> dict[str, Any]:
        config = self.meta.get("model_config")
        if not isinstance(config, dict):
            raise CheckpointError(
                f"{self.directory}: its pointer records no model configuration "
                f"(model_config: {config!r})"
            )
        return config

    def load_weights(self, model: torch.nn.Module) -> None:
        """Load the weights into ``model`` (strict: every parameter, matching shapes)."""
        path = self.directory / MODEL_FILE
        try:
            missing, unexpected = load_model(model, path, strict=False)
        except (SafetensorError, RuntimeError) as err:
            raise CheckpointError(f"{path}: weights do not fit this model ({err})") from None
        if missing or unexpected:
            raise CheckpointError(
                f"{path}: weights do not fit this model "
                f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
            )

    def load_state(self) -> dict[str, Any]:
        """The optimizer/scheduler state saved with :func:`save_checkpoint`."""
        path = self.directory / STATE_FILE
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle/zip errors have many types
            raise CheckpointError(f"{path}: unreadable training state ({err})") from None


def save_checkpoint(
    run_dir: str | os.PathLike,
    model: torch.nn.Module,
    state: dict[str, Any],
    meta: dict[str, Any],
    best: bool = False,
    keep_last: int = 1,
) -> Path:
    """Save weights and training state as ``checkpoints/step-<step>/`` and point ``last.json`` at it.

    A re-save of a step goes to ``step-<step>-1/`` (the files a pointer names are never
    overwritten), and ``recent`` keeps one entry per step.

    Args:
        run_dir: the run directory.
        model: the bare model (not a DDP wrapper); tied weights are stored once.
        state: anything ``torch.save`` can write with plain tensors and containers
            (optimizer and scheduler ``state_dict``\\ s).
        meta: JSON-serializable; must hold ``step``. Stored in the pointer files.
        best: also point ``best.json`` at this checkpoint.
        keep_last: how many of the newest checkpoints to keep (for weight averaging); ``last.json``
            lists them, with their hashes, under ``recent``.

    Checkpoint directories named by no pointer are deleted afterwards.

    Raises:
        CheckpointError: the files could not be written (a full disk, say); the message says
            which checkpoint the pointers still name, intact.
    """
    run_dir = Path(run_dir)

    def write(tmp_dir: Path) -> None:
        save_model(model, str(tmp_dir / MODEL_FILE))
        torch.save(state, tmp_dir / STATE_FILE)

    try:
        directory = _write_directory(run_dir / "checkpoints" / f"step-{meta['step']:08d}", write)
        pointer = _pointer(run_dir, directory, meta)
        recent = [r for r in _recent(run_dir) if r["step"] < meta["step"]]  # a re-save replaces
        here = {"step": meta["step"], "directory": pointer["directory"], "files": pointer["files"]}
        pointer["recent"] = [*recent, here][-max(keep_last, 1) :]
        atomic_write_json(run_dir / "last.json", pointer)
        if best:
            atomic_write_json(run_dir / "best.json", pointer)
    except WRITE_ERRORS as err:
        _remove_unreferenced(run_dir)  # what the failed save wrote: space back on a full disk
        raise CheckpointError(_not_written(run_dir, f"step {meta['step']}", err)) from None
    _remove_unreferenced(run_dir)
    return directory


def _not_written(run_dir: Path, what: str, err: Exception, pointer: str = "last") -> str:
    """What a failed save says: why, and which checkpoint ``pointer`` still names, checked."""
    reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
    kept = kept_checkpoint(run_dir, pointer)
    return f"{run_dir}: the checkpoint of {what} was not written ({reason}); {kept}"


def kept_checkpoint(run_dir: str | os.PathLike, pointer: str = "last") -> str:
    """What a run that failed to write a file still has: the checkpoint ``pointer`` names,
    checked, or that there is none."""
    try:
        kept = load_checkpoint(run_dir, pointer)
    except CheckpointError:
        return f"there is no earlier {pointer} checkpoint"
    return (
        f"{pointer}.json still names the checkpoint of step {kept.meta['step']}, which is "
        "intact (checked): free space, then resume from it"
    )


def save_weights(
    run_dir: str | os.PathLike,
    name: str,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    pointers: tuple[str, ...],
    file_metadata: dict[str, str] | None = None,
) -> Path:
    """Save bare weights (no training state) as ``checkpoints/<name>/`` and point each of
    ``pointers`` (e.g. ``("average",)``) at it; written as atomically as :func:`save_checkpoint`."""
    run_dir = Path(run_dir)

    def write(tmp_dir: Path) -> None:
        save_file(tensors, str(tmp_dir / MODEL_FILE), metadata=file_metadata)
        torch.save({}, tmp_dir / STATE_FILE)

    try:
        directory = _write_directory(run_dir / "checkpoints" / name, write)
        pointer = _pointer(run_dir, directory, meta)
        for which in pointers:
            atomic_write_json(run_dir / f"{which}.json", pointer)
    except WRITE_ERRORS as err:
        _remove_unreferenced(run_dir)
        raise CheckpointError(_not_written(run_dir, name, err, pointers[0])) from None
    _remove_unreferenced(run_dir)
    return directory


def point(run_dir: str | os.PathLike, which: str, checkpoint: Checkpoint, **changes: Any) -> None:
    """Point ``<which>.json`` at ``checkpoint`` (its pointer, with ``changes`` to the metadata)."""
    atomic_write_json(Path(run_dir) / f"{which}.json", {**checkpoint.meta, **changes})


def _write_directory(directory: Path, write: Callable[[Path], None]) -> Path:
    """Have ``write`` fill a temporary directory, fsync its files, then rename it to ``directory``,
    or, if that exists (a re-save of the same step), to ``directory`` with a ``-1``, ``-2``...
    suffix: the files a pointer names are never overwritten, so a save that crashes before its
    pointer moves leaves them whole. The directory written."""
    tmp_dir = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    try:
        write(tmp_dir)
        for name in (MODEL_FILE, STATE_FILE):
            _fsync_file(tmp_dir / name)
    except WRITE_ERRORS:  # e.g. a full disk: nothing names the partial files, so they go
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    target, n = directory, 0
    while target.exists():
        n += 1
        target = directory.with_name(f"{directory.name}-{n}")
    os.replace(tmp_dir, target)
    fsync_dir(target.parent)
    return target


def _pointer(run_dir: Path, directory: Path, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "directory": str(directory.relative_to(run_dir)),
        "files": {name: _digest(directory / name) for name in (MODEL_FILE, STATE_FILE)},
        **meta,
    }


def _recent(run_dir: Path) -> list[dict[str, Any]]:
    """The ``recent`` list of ``last.json`` (empty for a new run or an older format)."""
    path = run_dir / "last.json"
    if not path.is_file():
        return []
    pointer = json.loads(path.read_text())
    return pointer.get("recent", [])


def _remove_unreferenced(run_dir: Path) -> None:
    keep = set()
    for name in POINTERS:
        path = run_dir / f"{name}.json"
        if path.is_file():
            pointer = json.loads(path.read_text())
            keep.add(pointer["directory"])
            if name == "last":  # best.json holds a stale copy of the list from when it was last
                keep.update(r["directory"] for r in pointer.get("recent", []))
    for directory in (run_dir / "checkpoints").iterdir():
        if str(directory.relative_to(run_dir)) not in keep:
            shutil.rmtree(directory, ignore_errors=True)


def load_checkpoint(run_dir: str | os.PathLike, which: str = "last") -> Checkpoint:
    """Find and verify the checkpoint ``which`` (``"last"`` or ``"best"``) of a run directory.

    Raises:
        CheckpointError: no such checkpoint, an unreadable pointer, a missing file, or a file
            whose size or SHA-256 differs from the one recorded when it was written.
    """
    run_dir = Path(run_dir)
    pointer_path = run_dir / f"{which}.json"
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such directory")
    if not pointer_path.is_file():
        message = f"{run_dir}: no checkpoint ({pointer_path.name} not found)"
        step_dir = run_dir if run_dir.parent.name == "checkpoints" else run_dir.resolve()
        if step_dir.name.startswith("step-") and step_dir.parent.name == "checkpoints":
            message += (
                "; this looks like one checkpoint's step folder: give the run directory, "
                f"{step_dir.parent.parent} (the parent of checkpoints/)"
            )
        raise CheckpointError(message)
    try:
        meta = json.loads(pointer_path.read_text())
        directory = run_dir / meta["directory"]
        files = meta["files"]
        step = meta["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise TypeError(f"step must be a whole number, got {step!r}")
        check_recent(meta.get("recent", []))
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{pointer_path}: corrupt checkpoint pointer ({err!r})") from None
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{pointer_path}: checkpoint format {meta.get('format')!r}, this code reads {FORMAT_VERSION}"
        )
    verify_files(directory, files)
    return Checkpoint(directory=directory, meta=meta)


def check_recent(recent: Any) -> None:
    """Raise ``TypeError`` unless ``recent`` (of ``last.json``) is a list of checkpoint entries."""
    entry_types = {"step": int, "directory": str, "files": dict}
    if not isinstance(recent, list) or not all(
        isinstance(entry, dict) and all(isinstance(entry.get(k), t) for k, t in entry_types.items())
        for entry in recent
    ):
        raise TypeError(f"recent must list steps, directories and files, got {recent!r:.80}")


def verify_files(directory: Path, files: dict[str, dict[str, Any]]) -> None:
    """Raise :class:`CheckpointError` unless every file has its recorded size and SHA-256."""
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing checkpoint file")
        actual = _digest(path)
        if actual["size"] != expected["size"]:
            raise CheckpointError(
                f"{path}: corrupt checkpoint file ({actual['size']} bytes, {expected['size']} were "
                "written; truncated?)"
            )
        if actual["sha256"] != expected["sha256"]:
            raise CheckpointError(
                f"{path}: corrupt checkpoint file (SHA-256 differs from the one recorded)"
            )


def load_recent(run_dir: str | os.PathLike, count: int) -> list[Checkpoint]:
    """The newest ``count`` checkpoints that ``last.json`` lists under ``recent``, oldest first,
    each verified; fewer if fewer were kept (``keep_last`` of :func:`save_checkpoint`)."""
    last = load_checkpoint(run_dir, "last")
    run_dir = Path(run_dir)
    recent = last.meta.get("recent") or [
        {
            "step": last.meta["step"],
            "directory": last.meta["directory"],
            "files": last.meta["files"],
        }
    ]
    checkpoints = []
    for entry in recent[-count:]:
        directory = run_dir / entry["directory"]
        verify_files(directory, entry["files"])
        meta = {**entry, "model_config": last.model_config, "tokenizer": last.meta.get("tokenizer")}
        checkpoints.append(Checkpoint(directory=directory, meta=meta))
    return checkpoints
