"""A command run with a time limit that stops the whole of it: the command starts a process
group of its own (``start_new_session``), and at the limit the group gets SIGTERM, then,
after a grace period, SIGKILL. ``subprocess.run(timeout=)`` would kill the command's own
process only: its children (pytest's, ``train.py``'s, a benchmark's worker processes) would
keep running, compiling and using the GPU beside whatever runs next."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

GRACE_S = 5.0  # between SIGTERM and SIGKILL: time for a clean exit (e.g. a file being written)
POLL_S = 0.2


@dataclass
class Outcome:
    """How a limited command ended. ``returncode`` is None when it was stopped;
    ``left_running`` counts the processes of its group still alive after the stop (0 unless
    one escaped even SIGKILL, e.g. stuck in the kernel)."""

    returncode: int | None
    seconds: float
    stopped: bool = False
    by_request: bool = False  # stopped because stop_when() said so, before its limit
    killed: bool = False  # SIGTERM was not enough
    left_running: int = 0


def group_members(pgid: int) -> list[int]:
    """The process ids whose process group is ``pgid`` (Linux: read from /proc), zombies
    excepted (a zombie has ended; it waits only for its parent to read its status)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # it ended while we looked
            continue
        # fields after the command name (in parentheses, which may itself hold spaces)
        fields = stat[stat.rindex(")") + 2 :].split()
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            members.append(int(entry))
    return members


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:  # nobody left in the group
        pass


def run_limited(
    command: list[str],
    limit_s: float,
    *,
    cwd=None,
    env: dict | None = None,
    grace_s: float = GRACE_S,
    stop_when: Callable[[], bool] | None = None,
) -> Outcome:
    """Run ``command`` in a new process group for at most ``limit_s`` seconds (or until
    ``stop_when()``, polled, says so: ``--rehearse`` cuts a step that way once it has finished
    a point); then SIGTERM to the group, ``grace_s`` seconds, SIGKILL to the group. Returns
    once the command has ended and its group is empty (or was killed)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, start_new_session=True)
    pgid = process.pid  # a new session's leader: its pid is the group's id
    while process.poll() is None:
        elapsed = time.perf_counter() - start
        if elapsed >= limit_s:
            return _stop(process, pgid, start, grace_s)
        if stop_when is not None and stop_when():
            outcome = _stop(process, pgid, start, grace_s)
            outcome.by_request = True
            return outcome
        time.sleep(min(POLL_S, max(0.0, limit_s - elapsed)))
    # The command ended; anything it started in its group and left behind goes with it.
    if group_members(pgid):
        left = _stop(process, pgid, start, grace_s).left_running
        return Outcome(process.returncode, time.perf_counter() - start, left_running=left)
    return Outcome(process.returncode, time.perf_counter() - start)


def _stop(process: subprocess.Popen, pgid: int, start: float, grace_s: float) -> Outcome:
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.perf_counter() + grace_s
    while time.perf_counter() < deadline:
        if process.poll() is not None and not group_members(pgid):
            break
        time.sleep(POLL_S)
    killed = bool(group_members(pgid)) or process.poll() is None
    if killed:
        _signal_group(pgid, signal.SIGKILL)
        if process.poll() is None:  # the leader, even if it had left its group
            process.kill()
        process.wait()
        deadline = time.perf_counter() + grace_s
        while group_members(pgid) and time.perf_counter() < deadline:
            time.sleep(POLL_S)
    process.poll()
    return Outcome(
        None,
        time.perf_counter() - start,
        stopped=True,
        killed=killed,
        left_running=len(group_members(pgid)),
    )
