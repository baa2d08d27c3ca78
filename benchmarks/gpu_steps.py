"""The steps of :mod:`benchmarks.gpu_report`, each run in a process of its own
(``python -m benchmarks.gpu_report --run-step STEP``), and what a step stopped at its limit
leaves behind: every step's scripts write their results as they go (a point, a test, a
training run at a time), and :func:`partial_result` reads them back into the step's record.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from benchmarks import gpu_plan
from benchmarks.gpu_summary import read_step, write_step

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class StepContext:
    """What every step is given: where results go, the plan's sizes, the device tag in file
    names, the plan's steps (the warm step prepares what they launch), compiler processes."""

    out_dir: Path
    sizes: gpu_plan.Sizes
    tag: str
    steps: tuple[str, ...]
    cores: int | None = None


def results_path(ctx: StepContext, step: str, suffix: str = "json") -> Path:
    """The file a step's script writes as it goes (its points, its tests' lines)."""
    name = {"speed": "attention", "memory": "memory", "window": "window", "model": "model",
            "parity": "parity"}[step]  # fmt: skip
    return ctx.out_dir / f"gpu_{name}_{ctx.tag}.{suffix}"


# ---------------------------------------------------------------------------------- warm


def run_warm(ctx: StepContext) -> dict:
    """Compile every kernel the plan's later steps launch (on a GPU machine), or, with no GPU
    (``--rehearse``), count the builds the compile gate's plan gives for them."""
    from benchmarks import warm_cache
    from kernels.common.warm import usable_cores

    every, first = gpu_plan.warm_cases(list(ctx.steps), ctx.sizes)
    if ctx.sizes.device != "cuda":
        builds = warm_cache.count_builds(every, first, gpu_plan.H100_ARCH)
        return {"cases": len(every) + len(first), "builds_planned": builds, "compiled": 0}
    return warm_cache.warm(every, first, jobs=ctx.cores or usable_cores())


# -------------------------------------------------------------------------------- parity


def parity_files() -> list[str]:
    """The test files that hold ``cuda``-marked tests: the parity step collects only these, so
    a test file that needs a package the GPU image lacks (tests/test_training.py needs
    ``datasets``) cannot stop it."""
    return sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").glob("test_*.py")
        if "pytest.mark.cuda" in path.read_text()
    )


TEST_LINE = re.compile(r"^\S+::\S+ (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b", re.M)
SUMMARY_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected)\b")


def parity_counts(log: str) -> dict[str, int]:
    """Tests passed, failed, skipped and errors in a ``pytest -v`` log: from its closing
    summary, or, from a log cut short, from its one line per test; and ``collection_errors``
    from its header (test files that could not be imported)."""
    counts = {}
    collected = re.search(r"collected \d+ items?( / (\d+) errors?)?", log)
    if collected:
        counts["collection_errors"] = int(collected.group(2) or 0)
    summary = [line for line in log.splitlines() if re.match(r"^=+ .* in [\d.]+s", line)]
    if summary:
        found = {k: int(n) for n, k in SUMMARY_COUNT.findall(summary[-1])}
    else:
        found = dict(Counter(status.lower() for status in TEST_LINE.findall(log)))
    if "error" in found or "errors" in found:  # the step's own "error" says why it failed
        found["errors"] = found.pop("error", 0) + found.pop("errors", 0)
    return {**counts, **found}


def run_parity(ctx: StepContext) -> dict:
    """``pytest -m cuda -v`` over the files with CUDA tests, autotuning off; its output goes
    straight to the log file, so a run stopped midway keeps every finished test's line. On the
    CPU (``--rehearse``), where the CUDA tests skip, the same files' quick tests run instead
    (the kernels under the interpreter, for minutes: a step to cut midway)."""
    log = results_path(ctx, "parity", "log")
    files = parity_files()
    marker = "cuda and not slow" if ctx.sizes.device == "cuda" else "not slow"
    with log.open("w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-m", marker, "-v", "-p", "no:cacheprovider",
             "--continue-on-collection-errors", *files],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "FLASH_ATTENTION_AUTOTUNE": "0"},
        )  # fmt: skip
    return {"returncode": done.returncode, "log": log.name, "files": files,
            **parity_counts(log.read_text())}  # fmt: skip


def parity_partial(ctx: StepContext) -> dict:
    log = results_path(ctx, "parity", "log")
    text = log.read_text() if log.exists() else ""
    return {"log": log.name, **parity_counts(text)}


# ------------------------------------------------------------------------- speed and memory


def run_speed(ctx: StepContext) -> dict:
    from benchmarks import attention_benchmark

    s = ctx.sizes
    payload = attention_benchmark.main([
        "--device", s.device, "--tokens", str(s.speed_tokens), "--hidden", str(s.speed_hidden),
        "--head-dims", *map(str, s.speed_head_dims),
        "--min-len", str(s.speed_min_len), "--max-len", str(s.speed_max_len),
        "--impls", *gpu_plan.ATTENTION_IMPLS,
        "--out-dir", str(ctx.out_dir), "--tag", results_path(ctx, "speed").stem, *s.speed_options,
    ])  # fmt: skip
    from kernels.common import tuning

    tuned = {repr(k): vars(v) for k, v in tuning.tuned_configs().items()}
    return {**speed_result(ctx, payload), "tuned": tuned}


def speed_result(ctx: StepContext, payload: dict) -> dict:
    return {"files": f"{results_path(ctx, 'speed').stem}.*", "ratios": payload["ratios"],
            "points": _points(payload)}  # fmt: skip


def run_memory(ctx: StepContext) -> dict:
    from benchmarks import attention_benchmark

    s = ctx.sizes
    payload = attention_benchmark.main([
        "--device", s.device, "--batch", "1", "--heads", str(s.memory_heads),
        "--head-dims", str(s.memory_head_dim), "--causal", "yes",
        "--min-len", str(s.memory_min_len), "--max-len", str(s.memory_max_len),
        "--impls", *gpu_plan.MEMORY_IMPLS,
        "--out-dir", str(ctx.out_dir), "--tag", results_path(ctx, "memory").stem,
        *s.memory_options,
    ])  # fmt: skip
    return memory_result(ctx, payload)


def memory_result(ctx: StepContext, payload: dict) -> dict:
    memory = [r for r in payload["records"] if r["measure"] == "memory"]
    return {"files": f"{results_path(ctx, 'memory').stem}.*", "records": memory,
            "ratios": memory_ratios(memory), "points": _points(payload)}  # fmt: skip


def memory_ratios(records: list[dict]) -> list[dict]:
    """Our peak memory over SDPA-flash's, and naive's, per pass and length (None: it failed)."""
    peak = {(r["pass"], r["seq_len"], r["implementation"]): r for r in records}
    out = []
    for (pass_, seq_len, impl), ours in sorted(peak.items()):
        if impl != "triton" or ours["status"] != "ok":
            continue
        row = {"pass": pass_, "seq_len": seq_len, "ours_bytes": ours["peak_bytes"]}
        for other in ("sdpa_flash", "naive"):
            theirs = peak.get((pass_, seq_len, other), {})
            ok = theirs.get("status") == "ok"
            row[f"over_{other}"] = ours["peak_bytes"] / theirs["peak_bytes"] if ok else None
            row[f"{other}_status"] = theirs.get("status")
        out.append(row)
    return out


def run_window(ctx: StepContext) -> dict:
    """The window benchmark: a causal sliding window against causal full attention, ours
    (:mod:`benchmarks.window_benchmark`), forward and forward + backward at growing lengths."""
    from benchmarks import window_benchmark

    s = ctx.sizes
    payload = window_benchmark.main([
        "--device", s.device, "--window", str(s.window), "--causal", "yes",
        "--heads", str(s.window_heads), "--head-dim", str(s.window_head_dim),
        "--min-len", str(s.window_min_len), "--max-len", str(s.window_max_len),
        "--out-dir", str(ctx.out_dir), "--tag", results_path(ctx, "window").stem,
        *s.window_options,
    ])  # fmt: skip
    return window_result(ctx, payload)


def window_result(ctx: StepContext, payload: dict) -> dict:
    return {"files": f"{results_path(ctx, 'window').stem}.*", "ratios": payload["ratios"],
            "points": _points(payload)}  # fmt: skip


def _points(payload: dict) -> int:
    """How many points the results hold (a point: one implementation at one length)."""
    keys = {
        (r.get("implementation") or r.get("backend") or r.get("variant"), r.get("compiled"),
         r.get("head_dim"), r.get("causal"), r["seq_len"])
        for r in payload["records"]
    }  # fmt: skip
    return len(keys)


# --------------------------------------------------------------------------------- model


def run_model(ctx: StepContext) -> dict:
    from benchmarks import model_benchmark

    s = ctx.sizes
    lengths = [str(n) for n in gpu_plan.doubling(s.model_min_len, s.model_max_len)]
    payload = model_benchmark.main([
        "--device", s.device, "--lengths", *lengths, "--out-dir", str(ctx.out_dir),
        "--tag", results_path(ctx, "model").stem, *s.model_options,
    ])  # fmt: skip
    return model_result(ctx, payload)


def model_result(ctx: StepContext, payload: dict) -> dict:
    return {"files": f"{results_path(ctx, 'model').stem}.*", "records": payload["records"],
            "points": _points(payload)}  # fmt: skip


# ------------------------------------------------------------------------------ training


def run_training(ctx: StepContext) -> dict:
    """``train.py --config base`` with each backend in turn; the step's record is rewritten
    after each run (a step stopped during the second keeps the first)."""
    minutes = ctx.sizes.train_minutes
    runs = {}
    for backend in ("triton", "sdpa"):
        name = f"gpu_report_{ctx.tag}_{backend}_{int(time.time())}"
        done = subprocess.run(
            [sys.executable, "train.py", "--config", "base", "--attention", backend,
             "--device", ctx.sizes.device, "--time-budget", str(minutes), "--name", name,
             "--no-progress", "--no-final-test", "--seed", "0"],
            cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        metrics = ROOT / "runs" / name / "metrics.jsonl"
        rows = (
            [json.loads(line) for line in metrics.read_text().splitlines()]
            if metrics.exists()
            else []
        )
        train = [r for r in rows if "tokens_per_s" in r]
        warmed = [r for r in rows if r.get("split") == "kernel_warmup"]  # before the budget
        runs[backend] = {
            "returncode": done.returncode,
            "tail": (done.stdout + done.stderr)[-2000:],
            "steps": [r["step"] for r in train],
            "loss": [r["loss"] for r in train],
            "tokens_per_s": _median([r["tokens_per_s"] for r in train[1:]]),
            "kernel_warmup_seconds": warmed[-1]["kernel_warmup_seconds"] if warmed else None,
        }
        write_step(ctx.out_dir, "training", {"runs": runs, "partial": True})
    return {"runs": runs, **loss_agreement(runs["triton"], runs["sdpa"])}


def _median(values: list[float]) -> float | None:
    values = sorted(values)
    return values[len(values) // 2] if values else None


def loss_agreement(a: dict, b: dict) -> dict:
    """Largest relative difference of the two loss curves over the steps both logged."""
    common_steps = sorted(set(a["steps"]) & set(b["steps"]))
    la = dict(zip(a["steps"], a["loss"], strict=True))
    lb = dict(zip(b["steps"], b["loss"], strict=True))
    diffs = [abs(la[s] - lb[s]) / max(abs(lb[s]), 1e-9) for s in common_steps]
    # max() would pass over a NaN (NaN > x is False): a diverged curve is NaN, not agreement.
    worst = math.nan if any(math.isnan(d) for d in diffs) else max(diffs, default=None)
    return {"steps_compared": len(common_steps), "max_relative_loss_difference": worst}


RUNNERS = {
    "warm": run_warm,
    "parity": run_parity,
    "speed": run_speed,
    "memory": run_memory,
    "window": run_window,
    "model": run_model,
    "training": run_training,
}
RESULTS = {
    "speed": speed_result,
    "memory": memory_result,
    "window": window_result,
    "model": model_result,
}


def partial_result(step: str, ctx: StepContext) -> dict:
    """What a step stopped before its end had finished, from the files its scripts wrote as
    they went: the benchmarks' points, the parity tests' lines, the training runs that ended
    (the step's own partial record). Empty when it had finished nothing."""
    if step == "parity":
        return parity_partial(ctx)
    if step in RESULTS:
        path = results_path(ctx, step)
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return RESULTS[step](ctx, payload) if payload.get("records") else {}
    return read_step(ctx.out_dir, step) or {}
