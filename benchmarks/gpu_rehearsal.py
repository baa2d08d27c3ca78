"""``python -m benchmarks.gpu_report --rehearse``: the GPU session's orchestration, rehearsed on
the CPU, so that what only a GPU session would otherwise find out is found out in CI.

The report runs for real (``gpu_report --toy``, a child process): every step in its own process
group, at toy sizes, the kernels under Triton's interpreter, with ``datasets`` hidden from every
process (:file:`benchmarks/hidden_packages/sitecustomize.py`, as on a GPU image without it), and
the parity step (on the CPU: its files' quick tests, minutes of interpreted kernels) stopped
once it has passed its first test, as a step past its limit is. Then the rehearsal checks what
a GPU session depends on:

* the stopped step left no process behind (none of the report's processes, found by a marker
  in their environment, outlives it; its process group was empty when it was stopped);
* its finished tests were kept (its log, written a line per test, and its record);
* the missing package skipped only the step that needs it (training), and the parity step
  collected and ran its tests without it;
* the summary reads the partial results;
* every other step finished.

It prints one line per check and exits 1 if any failed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import uuid
from pathlib import Path

from benchmarks.common.process_group import run_limited
from benchmarks.gpu_steps import TEST_LINE
from benchmarks.gpu_summary import read_steps

ROOT = Path(__file__).resolve().parents[1]
HIDDEN_PACKAGES_DIR = ROOT / "benchmarks" / "hidden_packages"
HIDDEN = ("datasets",)
# Stopped midway on purpose: the parity step, whose pytest (like train.py in the training step)
# would outlive a step process stopped alone (a benchmark's workers end with their parent).
CUT_STEP = "parity"
MARKER = "GPU_REPORT_REHEARSAL"


def rehearsal_env(out_dir: Path, marker: str) -> dict:
    """The report's environment: the interpreter, the hidden packages, a Triton cache of its
    own (so the compiles it counts are its own), and the marker its processes carry."""
    path = os.pathsep.join(
        p for p in (str(HIDDEN_PACKAGES_DIR), str(ROOT), os.environ.get("PYTHONPATH")) if p
    )
    return {
        **os.environ,
        "PYTHONPATH": path,
        "TRITON_INTERPRET": "1",
        "GPU_REPORT_HIDDEN_PACKAGES": ",".join(HIDDEN),
        "TRITON_CACHE_DIR": str(out_dir / "triton_cache"),
        MARKER: marker,
    }


def marked_processes(marker: str) -> list[int]:
    """Process ids whose environment carries ``MARKER=marker`` (every process the rehearsed
    report started, and theirs), zombies excepted; processes we cannot read are not ours."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ.split(b"\0") and state != "Z":
            found.append(int(entry))
    return found


def rehearse(budget_minutes: float, out_dir: Path | None = None) -> int:
    """Run the report at toy sizes on the CPU into a fresh folder and check it; 0 if every
    check passed."""
    out_dir = Path(tempfile.mkdtemp(prefix="gpu_rehearsal_")) if out_dir is None else out_dir
    marker = uuid.uuid4().hex
    command = [sys.executable, "-m", "benchmarks.gpu_report", "--toy", "--cut", CUT_STEP,
               "--budget-minutes", str(budget_minutes), "--out-dir", str(out_dir)]  # fmt: skip
    print(f"rehearsal: {' '.join(command[1:])}\n  (datasets hidden, TRITON_INTERPRET=1)")
    outcome = run_limited(
        command, 60 * budget_minutes + 120, cwd=ROOT, env=rehearsal_env(out_dir, marker)
    )
    results = checks(out_dir, marker, outcome.returncode)
    for pid in marked_processes(marker):  # a failed rehearsal leaves nothing running either
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    print(f"\nrehearsal checks ({out_dir}):")
    for name, ok, detail in results:
        print(f"  {'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")
    failed = [name for name, ok, _ in results if not ok]
    print(f"rehearsal: {'FAILED: ' + ', '.join(failed) if failed else 'every check passed'}")
    return 1 if failed else 0


def checks(out_dir: Path, marker: str, returncode: int | None) -> list[tuple[str, bool, str]]:
    """(what is checked, whether it holds, what was found) for a rehearsed report's folder."""
    steps = read_steps(out_dir)
    cut = steps.get(CUT_STEP, {})
    left = marked_processes(marker)
    log = out_dir / "gpu_parity_cpu.log"
    test_lines = TEST_LINE.findall(log.read_text()) if log.exists() else []
    training = steps.get("training", {})
    skipped = sorted(s for s, r in steps.items() if isinstance(r.get("skipped"), str))
    others = [s for s in ("warm", "speed", "memory", "window", "model") if s in steps]
    unfinished = [s for s in others if "error" in steps[s] or steps[s].get("partial")]
    summary = out_dir / "gpu_report.md"
    summary_text = summary.read_text() if summary.exists() else ""
    counts = {k: cut.get(k) for k in ("passed", "failed", "errors", "collection_errors")}
    return [
        ("the report ran to its end", returncode is not None and summary.exists(),
         f"exit code {returncode}"),
        (f"the {CUT_STEP} step was stopped midway", bool(cut.get("partial")),
         cut.get("error", "")),
        ("it left no process behind", not left and cut.get("left_running") == 0,
         f"{len(left)} of the report's processes still running {left}, "
         f"{cut.get('left_running')} in its group when it was stopped"),
        ("its finished tests were kept", cut.get("passed", 0) >= 1
         and len(test_lines) >= cut.get("passed", 0),
         f"{cut.get('passed', 0)} passed in its record, {len(test_lines)} lines in {log.name}"),
        ("the missing package skipped only its step", skipped == ["training"]
         and "datasets" in training.get("skipped", ""), f"skipped: {skipped}"),
        (f"the {CUT_STEP} step collected and ran its tests without it",
         cut.get("collection_errors") == 0 and not cut.get("failed") and not cut.get("errors")
         and cut.get("passed", 0) >= 1, f"{counts}"),
        ("the summary reads the partial results",
         f"{CUT_STEP}: stopped early, kept" in summary_text, ""),
        ("every other step finished", len(others) == 5 and not unfinished,
         f"ran {others}, unfinished {unfinished}"),
    ]  # fmt: skip
