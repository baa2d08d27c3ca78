"""train.py when things go wrong: a SIGTERM or SIGINT mid-run (a checkpoint, the command that
resumes it, bit-identical weights after resuming; a second signal exits at once; under torchrun
every rank stops at the same step), bad data (refused before training, one line naming the file
and line), and a disk that fills while a checkpoint is written (the previous one stays valid)."""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for train.py

from training_helpers import tiny_config  # noqa: E402

import train as train_cli  # noqa: E402
from transformer.config import ModelConfig  # noqa: E402
from transformer.model import Transformer  # noqa: E402
from transformer.translation import checkpoint  # noqa: E402
from transformer.translation.checkpoint import (  # noqa: E402
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from transformer.translation.training import StopRequest, loop, train  # noqa: E402

pytestmark = pytest.mark.usefixtures("fast_machine")
REPO = Path(__file__).resolve().parent.parent
MAX_STEPS = 20  # room for the signal to land mid-run: each tiny step takes milliseconds


def tiny_args(corpus: Path, run_dir: Path, max_steps: int = MAX_STEPS) -> list[str]:
    """train.py options for tests/training_helpers.py's tiny_config (explicit --config: no probe)."""
    return [
        "--config", "cpu", "--d-model", "64", "--heads", "2", "--encoder-layers", "2",
        "--decoder-layers", "2", "--d-ff", "128", "--dropout", "0.1", "--data", str(corpus),
        "--run-dir", str(run_dir), "--vocab-size", "400", "--max-tokens", "256", "--lr", "3e-3",
        "--warmup-steps", "20", "--no-time-budget", "--threads", "1", "--no-progress",
        "--log-every", "1", "--checkpoint-every", "0", "--no-final-test", "--amp", "off",
        "--beam-size", "2", "--device", "cpu", "--max-steps", str(max_steps), "--no-epoch-eval",
        "--val-limit", "4",
    ]  # fmt: skip


def start(command: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group: killed whole if it outlives the test
    )  # fmt: skip


def finish(process: subprocess.Popen, timeout: float = 60) -> str:
    """Its stderr once it exits; killed with its children (torchrun's ranks) after ``timeout``."""
    try:
        return process.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise


def wait_for_step(
    run_dir: Path, step: int, process: subprocess.Popen, timeout: float = 120
) -> None:
    """Wait until the run has logged training step ``step`` (it is training now)."""
    deadline = time.monotonic() + timeout
    metrics = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        assert process.poll() is None, finish(process)
        if metrics.is_file():
            lines = [json.loads(line) for line in metrics.read_text().splitlines() if line]
            if any(r["split"] == "train" and r["step"] >= step for r in lines):
                return
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    pytest.fail(f"step {step} not reached in {timeout} s")


def stop_with(process: subprocess.Popen, *signums: int) -> tuple[int, str, float]:
    """Send ``signums`` one after the other; (exit status, stderr, seconds until it exited)."""
    sent = time.monotonic()
    for signum in signums:
        process.send_signal(signum)
    err = finish(process)
    return process.returncode, err, time.monotonic() - sent


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    last = load_checkpoint(run_dir, "last")
    return load_file(last.directory / checkpoint.MODEL_FILE)


def test_sigterm_checkpoints_prints_the_resume_command_and_resumes_bit_identically(
    corpus, tmp_path
):
    run_dir = tmp_path / "part"
    process = start([sys.executable, "train.py", *tiny_args(corpus, run_dir)])
    wait_for_step(run_dir, 3, process)
    status, err, seconds = stop_with(process, signal.SIGTERM)
    assert status == 143, err
    assert seconds < 15, seconds  # the current step and a checkpoint: quick on any machine
    stopped_at = load_checkpoint(run_dir).meta["step"]
    assert 3 <= stopped_at < MAX_STEPS, stopped_at
    assert f"stopped at step {stopped_at}, checkpoint written; resume with:" in err
    command = shlex.split(err.strip().splitlines()[-1])
    assert command == ["python", "train.py", "--resume", str(run_dir)]
    assert "Traceback" not in err

    assert train_cli.main(command[2:]) == 0  # the printed command, in this process
    whole = train(train_cli.config_from_args(train_cli.build_parser().parse_args(
        tiny_args(corpus, tmp_path / "whole"))))  # fmt: skip
    assert whole.step == load_checkpoint(run_dir).meta["step"] == MAX_STEPS
    resumed, uninterrupted = weights(run_dir), weights(tmp_path / "whole")
    assert resumed.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        assert torch.equal(resumed[name], tensor), name  # bit-identical


def test_a_second_signal_exits_at_once_leaving_the_last_checkpoint_valid(corpus, tmp_path):
    run_dir = tmp_path / "run"
    args = tiny_args(corpus, run_dir, max_steps=400)
    args[args.index("--checkpoint-every") + 1] = "2"
    process = start([sys.executable, "train.py", *args])
    wait_for_step(run_dir, 3, process)
    status, err, seconds = stop_with(process, signal.SIGTERM, signal.SIGINT)
    # Python runs the pending handlers in signal-number order: whichever came second exits.
    second = re.search(r"(SIGINT|SIGTERM) again: exiting now", err)
    assert second, err
    assert status == 128 + signal.Signals[second[1]], err
    assert "resume with" not in err  # the graceful stop was cut short
    assert seconds < 15, seconds
    load_checkpoint(run_dir)  # whatever step it holds, it is whole


def wait_until_importing_torch(process: subprocess.Popen, timeout: float = 60) -> None:
    """Wait until the process has mapped torch's library: it is importing torch (Linux /proc)."""
    deadline = time.monotonic() + timeout
    maps = Path(f"/proc/{process.pid}/maps")
    while "libtorch" not in maps.read_text():
        assert process.poll() is None, finish(process)
        assert time.monotonic() < deadline, "train.py never started importing torch"
        time.sleep(0.005)


def test_ctrl_c_while_train_py_imports_torch_exits_130_without_a_traceback(corpus, tmp_path):
    run_dir = tmp_path / "run"
    process = start([sys.executable, "train.py", *tiny_args(corpus, run_dir)])
    wait_until_importing_torch(process)
    status, err, _ = stop_with(process, signal.SIGINT)
    assert status == 130, err
    assert "Traceback" not in err and "interrupted before training started" in err, err
    assert not run_dir.exists()


def test_the_stop_handler_asks_once_then_exits(monkeypatch):
    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    stop = StopRequest()
    stop.handle(signal.SIGINT)
    assert stop.signum == signal.SIGINT and exits == []
    stop.handle(signal.SIGTERM)  # another signal: at once
    assert exits == [143]
    previous = signal.getsignal(signal.SIGTERM)
    with stop.on_signals():
        assert signal.getsignal(signal.SIGTERM) == stop.handle
    assert signal.getsignal(signal.SIGTERM) == previous


def test_a_signal_after_training_exits_at_once_saying_a_resume_redoes_the_scoring(
    corpus, tmp_path, monkeypatch, capfd
):
    """Averaging and scoring the test split come after the last checkpoint: a signal then (a
    preemption's SIGTERM, Ctrl-C) exits at once with its status, not after the scoring with 0
    as if no stop had been asked for."""
    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    stop, run_dir = StopRequest(), tmp_path / "run"
    finish_run = loop.finish_run

    def signalled_while_finishing(*args, **kwargs):
        stop.handle(signal.SIGTERM)
        assert exits == [143]  # os._exit would have ended the process here
        return finish_run(*args, **kwargs)

    monkeypatch.setattr(loop, "finish_run", signalled_while_finishing)
    train(tiny_config(corpus, run_dir, max_steps=2, val_limit=2), stop=stop)
    assert f"exiting now, before the run's final scoring: train.py --resume {run_dir}" in (
        capfd.readouterr().err
    )


def test_a_signal_as_the_training_loop_ends_stops_the_run_before_its_scoring(
    corpus, tmp_path, monkeypatch
):
    train_loop = loop.train_loop

    def signalled_as_it_ends(*args, **kwargs):
        result = train_loop(*args, **kwargs)
        stop.request(signal.SIGTERM)  # e.g. during the last validation, after the last check
        return result

    monkeypatch.setattr(loop, "train_loop", signalled_as_it_ends)
    stop = StopRequest()
    result = train(tiny_config(corpus, tmp_path / "run", max_steps=2, val_limit=2), stop=stop)
    assert result.stopped and not result.metrics
    assert not (tmp_path / "run" / "results.json").exists()


def test_the_same_signal_forwarded_by_a_launcher_is_one_request(monkeypatch):
    # torchrun forwards the SIGTERM (or Ctrl-C's SIGINT) its workers already got: not a second.
    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    stop = StopRequest()
    stop.handle(signal.SIGTERM)
    stop.handle(signal.SIGTERM)
    assert exits == [] and stop.requested
    stop.at -= StopRequest.REPEAT_SECONDS  # later, the same signal is a second one
    stop.handle(signal.SIGTERM)
    assert exits == [143]


def test_a_second_train_py_into_a_running_run_is_refused_and_the_run_goes_on(
    corpus, tmp_path, capsys
):
    """A scheduler that requeues a job while the old one is still in its grace period: the
    second process used to train into the same directory, and both runs broke (one removed the
    other's checkpoint files, metrics.jsonl held every step twice)."""
    run_dir = tmp_path / "run"
    args = tiny_args(corpus, run_dir, max_steps=400)
    args[args.index("--checkpoint-every") + 1] = "2"
    process = start([sys.executable, "train.py", *args])
    wait_for_step(run_dir, 3, process)
    assert train_cli.main(["--resume", str(run_dir), "--max-steps", "6"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert f"{run_dir} is in use by another training process (pid {process.pid})" in last, err
    status, err, _ = stop_with(process, signal.SIGTERM)
    assert status == 143 and "Traceback" not in err, err
    stopped_at = load_checkpoint(run_dir).meta["step"]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open()]
    assert steps[1:] == list(range(1, stopped_at + 1))  # after the setup line: each step once


def test_averaging_a_run_that_is_training_is_refused_and_the_run_goes_on(corpus, tmp_path, capsys):
    """The average tool removes the checkpoint folders no pointer names: run beside the
    training, it could remove the one being saved, and the run ended on a checkpoint error."""
    from transformer.translation import average

    run_dir = tmp_path / "run"
    args = tiny_args(corpus, run_dir, max_steps=400)
    args[args.index("--checkpoint-every") + 1] = "1"
    process = start([sys.executable, "train.py", *args, "--average-last", "3"])
    wait_for_step(run_dir, 4, process)
    assert average.main(["--checkpoint", str(run_dir), "--last", "2"]) == 2
    err = capsys.readouterr().err
    assert f"{run_dir} is in use by another training process (pid {process.pid})" in err, err
    assert not (run_dir / "average.json").exists()
    status, err, _ = stop_with(process, signal.SIGTERM)
    assert status == 143 and "Traceback" not in err, err


def worker_pids(launcher: int) -> dict[int, int]:
    """rank -> pid of the processes torchrun started (Linux /proc)."""
    pids = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    ranks = {}
    for pid in map(int, pids):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        env = dict(item.split(b"=", 1) for item in environ if b"=" in item)
        if b"RANK" in env:
            ranks[int(env[b"RANK"])] = pid
    return ranks


def test_a_full_disk_while_logging_metrics_is_one_line_naming_the_file_and_the_run_resumes(
    corpus, tmp_path, capsys, monkeypatch
):
    """The metrics log's append fails as a write on a full disk fails, naming no file."""
    from transformer.translation.training import metrics

    run_dir = tmp_path / "run"
    args = tiny_args(corpus, run_dir, max_steps=4)
    args[args.index("--checkpoint-every") + 1] = "2"
    appends = []

    def full_at_the_fourth_step(path, mode="r", *rest, **kwargs):
        if mode == "a":
            appends.append(path)
            if len(appends) == 4:  # --log-every 1: step 4's line
                no_space()
        return open(path, mode, *rest, **kwargs)

    monkeypatch.setattr(metrics, "open", full_at_the_fourth_step, raising=False)
    assert train_cli.main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert f"{run_dir / 'metrics.jsonl'}: not written (No space left on device)" in last
    assert "last.json still names the checkpoint of step 2, which is intact" in last
    monkeypatch.undo()
    assert train_cli.main(["--resume", str(run_dir)]) == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert [r["step"] for r in records if r.get("split") == "train"] == [1, 2, 3, 4]


@pytest.mark.slow  # two ranks, each importing torch: ~30 s on 2 shared cores
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the ranks in /proc")
def test_under_torchrun_a_signal_to_one_rank_stops_every_rank_at_one_step(corpus, tmp_path):
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "train.py", *tiny_args(corpus, run_dir, max_steps=400),
    ]  # fmt: skip
    process = start(command)
    wait_for_step(run_dir, 3, process)
    ranks = worker_pids(process.pid)
    assert sorted(ranks) == [0, 1], ranks
    os.kill(ranks[1], signal.SIGTERM)  # rank 0 hears of it only through the all-reduce
    err = finish(process)
    assert "torchrun --nproc_per_node=2 train.py --resume" in err, err
    assert err.count("checkpoint written; resume with:") == 1
    # Both ranks stopped at one step (else one would wait forever on a gradient all-reduce the
    # other never joins, and communicate() would time out), and rank 0 wrote its checkpoint.
    stopped_at = load_checkpoint(run_dir).meta["step"]
    assert 3 <= stopped_at < 400
    assert f"stopped at step {stopped_at}," in err


@pytest.mark.slow  # two ranks, each importing torch: ~30 s on 2 shared cores
def test_a_run_of_two_ranks_resumed_by_one_process_is_refused_naming_the_command(
    corpus, tmp_path, capsys
):
    """Each rank's place in the epoch is an index into its own half of the batches: one process
    used to go on from that index into all of them, training again what the ranks had trained."""
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "train.py", *tiny_args(corpus, run_dir, max_steps=3),
    ]  # fmt: skip
    process = start(command)
    finish(process, timeout=300)
    assert process.returncode == 0 and load_checkpoint(run_dir).meta["step"] == 3
    before = (run_dir / "last.json").read_bytes()
    assert train_cli.main(["--resume", str(run_dir), "--max-steps", "6"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "written by 2 data-parallel processes, this run has 1" in last, err
    assert f"torchrun --nproc_per_node=2 train.py --resume {run_dir}" in last
    assert (run_dir / "last.json").read_bytes() == before


def copy_corpus(corpus: Path, to: Path) -> Path:
    to.mkdir()
    for path in corpus.iterdir():
        (to / path.name).write_bytes(path.read_bytes())
    return to


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "val.en").unlink(), r"no file for split 'val', language 'en'"),
        (lambda d: (d / "train.en").write_text(""), r"train\.en: empty file"),
        (
            lambda d: (d / "val.de").write_text("Ein Hund.\n" * 15),
            r"line-count mismatch: .*val\.de has 15 lines, .*val\.en has 16; .*val\.de ends "
            r"before line 16",
        ),
        (
            lambda d: (d / "train.de").write_bytes(b"Ein Hund.\n" * 4 + b"kaputt \xff\xfe\n"),
            r"train\.de:5: not valid UTF-8",
        ),
    ],
    ids=["missing", "empty", "misaligned", "not-utf8"],
)
def test_bad_data_is_one_line_naming_file_and_line_before_training(
    corpus, tmp_path, capsys, damage, message
):
    bad = copy_corpus(corpus, tmp_path / "bad")
    damage(bad)
    args = tiny_args(bad, tmp_path / "run")
    assert train_cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ": error: " in err and "Traceback" not in err, err
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists()  # nothing started


def test_a_corpus_with_no_pair_within_max_length_is_refused_instead_of_spinning(corpus, tmp_path):
    """Every pair longer than --max-length: before, the loop ran epochs of no batch forever,
    never reading its budget or a stop request (a subprocess, so that a regression fails on the
    timeout instead of hanging the run)."""
    args = tiny_args(corpus, tmp_path / "run") + ["--max-length", "1"]
    done = subprocess.run(
        [sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    error = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert len(error) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "none of the 64 training pairs" in error[0] and "--max-length 1" in error[0], error
    assert not (tmp_path / "run" / "last.json").exists()  # no checkpoint: the name can be reused


def test_a_rank_without_a_batch_is_refused_instead_of_spinning(tmp_path):
    """More data-parallel processes than batches: every rank would get none."""
    from transformer.translation.data import Corpus, CorpusError
    from transformer.translation.training.loop import epoch_batches
    from transformer.translation.training.setup import Process

    one_pair = Corpus([[5, 6, 7]], [[1, 8, 9, 2]], ["a b"])
    config = tiny_config(tmp_path, tmp_path / "run")
    assert epoch_batches(one_pair, config, 0, Process(torch.device("cpu")))  # one rank: a batch
    with pytest.raises(CorpusError, match="1 training pairs make 1 batches .* 4 processes"):
        epoch_batches(one_pair, config, 0, Process(torch.device("cpu"), rank=1, world_size=4))


def small_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(
        ModelConfig(400, 400, d_model=64, heads=2, encoder_layers=1, decoder_layers=1)
    )


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class HalfWritten:
    """A file opened for writing on a disk that fills halfway through the first write."""

    def __init__(self, file) -> None:
        self.file = file

    def __enter__(self) -> HalfWritten:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    def write(self, data: bytes) -> None:
        self.file.write(data[: len(data) // 2])
        no_space()


def open_on_a_full_disk(path, mode="r", *args, **kwargs):
    file = open(path, mode, *args, **kwargs)
    return HalfWritten(file) if mode == "wb" else file


@pytest.mark.parametrize("failing", ["save_model", "torch.save", "pointer"])
def test_a_full_disk_while_saving_keeps_the_previous_checkpoint_and_says_so(
    tmp_path, monkeypatch, failing
):
    model = small_model()
    save_checkpoint(tmp_path, model, {"x": 1}, {"step": 1})
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    if failing == "save_model":
        monkeypatch.setattr(checkpoint, "save_model", no_space)
    elif failing == "torch.save":
        monkeypatch.setattr(checkpoint.torch, "save", no_space)
    else:  # last.json's temporary file: half written, then the disk is full
        monkeypatch.setattr(checkpoint, "open", open_on_a_full_disk, raising=False)
    with pytest.raises(CheckpointError) as raised:
        save_checkpoint(tmp_path, model, {"x": 2}, {"step": 2})
    assert "checkpoint of step 2 was not written (No space left on device)" in str(raised.value)
    assert "last.json still names the checkpoint of step 1, which is intact" in str(raised.value)
    monkeypatch.undo()
    last = load_checkpoint(tmp_path, "last")
    assert last.meta["step"] == 1
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000001"]
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # no partial files left


def test_a_real_write_failure_keeps_the_previous_checkpoint(tmp_path):
    """Not a monkeypatch: the OS refuses the write (a file-size limit, EFBIG, as a full disk
    refuses it with ENOSPC), inside safetensors' own writer."""
    model = small_model()
    save_checkpoint(tmp_path, model, {}, {"step": 1})
    size = (load_checkpoint(tmp_path).directory / checkpoint.MODEL_FILE).stat().st_size
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, hard))
    try:
        with pytest.raises(CheckpointError, match="step 1, which is intact"):
            save_checkpoint(tmp_path, model, {}, {"step": 2})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert load_checkpoint(tmp_path).meta["step"] == 1
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000001"]


def test_train_py_reports_a_full_disk_in_one_line_and_the_run_resumes(
    corpus, tmp_path, capsys, monkeypatch
):
    run_dir = tmp_path / "run"
    args = tiny_args(corpus, run_dir, max_steps=4)
    args[args.index("--checkpoint-every") + 1] = "2"
    real_save = checkpoint.save_model

    def full_at_step_4(model, path):
        if "step-00000004" in str(Path(path).parent.name):
            no_space()
        real_save(model, path)

    monkeypatch.setattr(checkpoint, "save_model", full_at_step_4)
    assert train_cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "checkpoint of step 4 was not written (No space left on device)" in err
    assert "last.json still names the checkpoint of step 2, which is intact" in err
    monkeypatch.undo()
    assert train_cli.main(["--resume", str(run_dir)]) == 0
    assert load_checkpoint(run_dir).meta["step"] == 4


@pytest.mark.slow  # two ranks, each importing torch: ~30 s on 2 shared cores
def test_sigterm_to_torchrun_and_its_ranks_stops_them_with_one_checkpoint(corpus, tmp_path):
    # What SLURM (every process of the job) and Ctrl-C (the process group) do: each rank gets
    # SIGTERM, and torchrun forwards it to them once more; the repeat is not a second signal.
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "train.py", *tiny_args(corpus, run_dir, max_steps=400),
    ]  # fmt: skip
    process = start(command)
    wait_for_step(run_dir, 3, process)
    os.killpg(process.pid, signal.SIGTERM)  # start() made torchrun a process group leader
    err = finish(process)
    assert err.count("checkpoint written; resume with:") == 1, err
    assert "torchrun --nproc_per_node=2 train.py --resume" in err
    stopped_at = load_checkpoint(run_dir).meta["step"]
    assert 3 <= stopped_at < 400 and f"stopped at step {stopped_at}," in err


@pytest.fixture(scope="module")
def finished_run(corpus, tmp_path_factory) -> Path:
    """A tiny run of 2 steps, to damage copies of."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert train_cli.main(tiny_args(corpus, run_dir, max_steps=2)) == 0
    return run_dir


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(edit(data)))


RUN_DAMAGES = {
    "tokenizer-missing": (lambda d: (d / "tokenizer.json").unlink(), r"tokenizer\.json"),
    "tokenizer-garbled": (
        lambda d: (d / "tokenizer.json").write_text("{garbled"),
        r"tokenizer\.json: not a readable",
    ),
    "pointer-without-step": (
        lambda d: _edit_json(
            d / "last.json", lambda m: {k: v for k, v in m.items() if k != "step"}
        ),
        r"last\.json: corrupt checkpoint pointer",
    ),
    "pointer-step-not-a-number": (
        lambda d: _edit_json(d / "last.json", lambda m: {**m, "step": "x"}),
        r"last\.json: corrupt checkpoint pointer",
    ),
    "pointer-without-model-config": (
        lambda d: _edit_json(
            d / "last.json", lambda m: {k: v for k, v in m.items() if k != "model_config"}
        ),
        "records no model configuration",
    ),
    "pointer-without-epoch": (
        lambda d: _edit_json(
            d / "last.json", lambda m: {k: v for k, v in m.items() if k != "epoch"}
        ),
        r"last\.json: corrupt checkpoint pointer \(epoch",
    ),
    "config-model-not-an-object": (
        lambda d: _edit_json(d / "config.json", lambda c: {**c, "model": 5}),
        "model must be an object, got int",
    ),
    "config-a-list": (
        lambda d: (d / "config.json").write_text("[]"),
        "a TrainConfig is a JSON object, got list",
    ),
    "best-pointer-cut-short": (
        lambda d: (d / "best.json").write_text((d / "best.json").read_text()[:50]),
        r"best\.json: corrupt checkpoint pointer",
    ),
    "pointer-recent-not-a-list": (
        lambda d: _edit_json(d / "last.json", lambda m: {**m, "recent": 5}),
        r"last\.json: corrupt checkpoint pointer \(.*recent",
    ),
    "metrics-garbled-line": (
        lambda d: _edit_lines(d / "metrics.jsonl", 2, "{garbled"),
        r"metrics\.jsonl, line 2: not a metrics record \('\{garbled'\); remove the line",
    ),
    "metrics-line-not-an-object": (
        lambda d: _edit_lines(d / "metrics.jsonl", 3, "[1]"),
        r"metrics\.jsonl, line 3: not a metrics record",
    ),
}


def _edit_lines(path: Path, number: int, line: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[number - 1] = line + "\n"
    path.write_text("".join(lines))


@pytest.mark.parametrize("damage, message", RUN_DAMAGES.values(), ids=RUN_DAMAGES.keys())
def test_resuming_a_damaged_run_is_one_line_naming_what_is_wrong(
    finished_run, tmp_path, capsys, damage, message
):
    """Each used to end in a traceback (KeyError, AttributeError, ValueError), or, for a
    config.json holding a list, in a run of default settings."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    damage(run_dir)
    try:
        status = train_cli.main(["--resume", str(run_dir), "--max-steps", "3"])
    except SystemExit as exited:  # a usage error: argparse's exit
        status = exited.code
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err, err
    error = [line for line in err.splitlines() if "error" in line]
    assert len(error) == 1 and re.search(message, error[0]), err


def test_a_metrics_line_cut_short_by_a_kill_is_dropped_on_resume(finished_run, tmp_path):
    """A process killed (or out of disk) while appending a line leaves it cut short, after its
    last checkpoint: the resume used to end in a JSONDecodeError traceback."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"split": "train", "step": 3, "lo')
    assert train_cli.main(["--resume", str(run_dir), "--max-steps", "3"]) == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3]


def limited_to(size: int):
    """A preexec_fn: files of at most ``size`` bytes, SIGXFSZ ignored (writes fail with EFBIG)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(
            resource.RLIMIT_FSIZE, (size, resource.getrlimit(resource.RLIMIT_FSIZE)[1])
        )

    return limit


@pytest.mark.parametrize("written", ["tokenizer.json", "curves.png", "metrics.jsonl"])
def test_a_file_size_limit_on_a_run_file_is_one_line_leaving_no_partial_file(
    corpus, finished_run, tmp_path, written
):
    """tokenizer.json, written as a run starts, curves.png, drawn at each validation, and
    metrics.jsonl, rewritten when a run resumes, used to end a run on a full disk in a
    traceback, leaving a partial tokenizer.json or .metrics.jsonl.tmp behind."""
    run_dir = tmp_path / "run"
    if written != "metrics.jsonl":  # a new run: the tokenizer (~24 kB), then at the first
        limit = {"tokenizer.json": 10_000, "curves.png": 30_000}[written]  # validation curves.png
        args = tiny_args(corpus, run_dir, max_steps=2)  # (~50 kB)
        kept = "there is no earlier last checkpoint"
    else:  # a resume keeps the lines its checkpoint covers, in a rewritten file
        shutil.copytree(finished_run, run_dir)
        args, limit = ["--resume", str(run_dir), "--max-steps", "3"], 500
        kept = "last.json still names the checkpoint of step 2, which is intact"
    before = (run_dir / "metrics.jsonl").read_bytes() if run_dir.exists() else None
    done = subprocess.run(
        [sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, preexec_fn=limited_to(limit), timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert f"{run_dir / written}: not written (File too large); {kept}" in last, done.stderr
    assert not [p.name for p in run_dir.iterdir() if ".tmp" in p.name]
    assert written != "tokenizer.json" or not (run_dir / written).exists()
    if before is not None:
        assert (run_dir / "metrics.jsonl").read_bytes() == before


def test_translate_refuses_a_pointer_without_its_tokenizer_in_one_line(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    _edit_json(run_dir / "last.json", lambda m: {k: v for k, v in m.items() if k != "tokenizer"})
    done = subprocess.run(
        [sys.executable, "-m", "transformer.translation.translate", "--checkpoint", str(run_dir),
         "--which", "last"],
        cwd=REPO, input="Ein Hund.\n", capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert "corrupt checkpoint pointer last.json (tokenizer: None)" in done.stderr
