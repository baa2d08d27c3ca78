"""Everything a GPU session should measure, in one command, within a wall-clock budget:

    python -m benchmarks.gpu_report --budget-minutes 9            # on the GPU machine
    python -m benchmarks.gpu_report --budget-minutes 9 --dry-run  # the plan, on any machine

Steps, in order (:mod:`benchmarks.gpu_plan` sizes them to the budget; a step that does not fit
is left out, and each runs in its own process, stopped at its time limit):

0. ``warm``: every kernel the later steps launch is compiled into Triton's cache in parallel
   on all CPU cores (:mod:`benchmarks.warm_cache`), so no step pays a compile and the triton
   training run starts as warm as the sdpa one.
1. ``parity``: the CUDA parity tests, ``pytest -m cuda``, with autotuning off
   (``FLASH_ATTENTION_AUTOTUNE=0``: the first configuration that compiles without spills).
2. ``speed``: the attention benchmark in FlashAttention's setting (16k tokens, hidden 2048,
   head dims 64 and 128, causal and not, bf16, autotuned): ours beside SDPA's backends.
3. ``memory``: peak memory against length, batch 1, 16 heads of 128, causal.
4. ``model``: the whole-model training benchmark (tokens/s and step memory per backend).
5. ``training``: ``train.py --config base`` for a few minutes with ``--attention triton``,
   then ``sdpa``: tokens/s and whether the loss curves agree.

Each step writes ``<out-dir>/gpu_<step>.json`` the moment it ends (a session cut short keeps
every finished step); ``gpu_report.md``/``.png`` summarise whatever step files exist. A step
whose Python dependency is missing (``datasets`` for training, on an image without it) is
skipped with one line. Without a CUDA device only ``--dry-run`` works.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python benchmarks/gpu_report.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks import gpu_plan
from benchmarks.common.environment import device_tag, environment
from benchmarks.gpu_summary import (  # noqa: F401 - the report's results, as tests read them
    plot,
    read_steps,
    summary_rows,
    write_step,
    write_summary,
)

ROOT = Path(__file__).resolve().parents[1]
STEPS = gpu_plan.STEPS
# Python packages a step needs beyond torch, triton and numpy (the GPU image lacks `datasets`).
NEEDS = {
    "parity": ("pytest", "hypothesis"),
    "training": ("datasets", "tokenizers", "sacrebleu", "einops"),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_report",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--budget-minutes", type=float, default=9.0, help="wall-clock budget (default 9)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    parser.add_argument("--skip", nargs="+", default=[], choices=STEPS, help="steps to leave out")
    parser.add_argument(
        "--cores", type=int, default=None, help="compiler processes for warm (default: all "
        f"cores; a dry run on a machine other than the GPU one assumes {gpu_plan.GPU_MACHINE_CORES})"
    )  # fmt: skip
    parser.add_argument(
        "--out-dir", type=Path, default=ROOT / "benchmarks" / "results" / "gpu",
        help="where each step's results go",
    )  # fmt: skip
    parser.add_argument("--run-step", choices=STEPS, help=argparse.SUPPRESS)  # one step, in-process
    parser.add_argument("--sizes", type=json.loads, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def missing_dependencies(step: str) -> list[str]:
    return [name for name in NEEDS.get(step, ()) if importlib.util.find_spec(name) is None]


# ---------------------------------------------------------------------------------- steps


def run_warm(args, sizes: gpu_plan.Sizes, steps: list[str]) -> dict:
    from benchmarks import warm_cache

    every, first = gpu_plan.warm_cases(steps, sizes)
    return warm_cache.warm(every, first, jobs=args.cores or os.cpu_count())


def run_parity(args, sizes: gpu_plan.Sizes, tag: str) -> dict:
    log = args.out_dir / f"gpu_parity_{tag}.log"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "FLASH_ATTENTION_AUTOTUNE": "0"},
    )  # fmt: skip
    log.write_text(done.stdout + done.stderr)
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", done.stdout)}
    return {"returncode": done.returncode, "log": log.name, **counts}


def run_speed(args, sizes: gpu_plan.Sizes, tag: str) -> dict:
    from benchmarks import attention_benchmark
    from kernels.common import tuning

    max_len = sizes.speed_max_len
    payload = attention_benchmark.main([
        "--tokens", "16384", "--hidden", "2048", "--head-dims", "64", "128",
        "--min-len", "512", "--max-len", str(max_len),
        "--impls", "naive", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "triton",
        "--out-dir", str(args.out_dir), "--tag", f"gpu_attention_{tag}",
    ])  # fmt: skip
    tuned = {repr(k): vars(v) for k, v in tuning.tuned_configs().items()}
    return {"files": f"gpu_attention_{tag}.*", "ratios": payload["ratios"], "tuned": tuned}


def run_memory(args, sizes: gpu_plan.Sizes, tag: str) -> dict:
    from benchmarks import attention_benchmark

    max_len = sizes.memory_max_len
    payload = attention_benchmark.main([
        "--batch", "1", "--heads", "16", "--head-dims", "128", "--causal", "yes",
        "--min-len", "1024", "--max-len", str(max_len),
        "--impls", "naive", "sdpa_flash", "triton",
        "--out-dir", str(args.out_dir), "--tag", f"gpu_memory_{tag}",
    ])  # fmt: skip
    memory = [r for r in payload["records"] if r["measure"] == "memory"]
    return {"files": f"gpu_memory_{tag}.*", "records": memory, "ratios": memory_ratios(memory)}


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


def run_model(args, sizes: gpu_plan.Sizes, tag: str) -> dict:
    from benchmarks import model_benchmark

    lengths = [str(n) for n in gpu_plan.doubling(256, sizes.model_max_len)]
    payload = model_benchmark.main(
        ["--lengths", *lengths, "--out-dir", str(args.out_dir), "--tag", f"gpu_model_{tag}"]
    )
    return {"files": f"gpu_model_{tag}.*", "records": payload["records"]}


def run_training(args, sizes: gpu_plan.Sizes, tag: str) -> dict:
    minutes = sizes.train_minutes
    runs = {}
    for backend in ("triton", "sdpa"):
        name = f"gpu_report_{tag}_{backend}_{int(time.time())}"
        done = subprocess.run(
            [sys.executable, "train.py", "--config", "base", "--attention", backend,
             "--time-budget", str(minutes), "--name", name, "--no-progress",
             "--no-final-test", "--seed", "0"],
            cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        metrics = ROOT / "runs" / name / "metrics.jsonl"
        rows = (
            [json.loads(line) for line in metrics.read_text().splitlines()]
            if metrics.exists()
            else []
        )
        train = [r for r in rows if "tokens_per_s" in r]
        runs[backend] = {
            "returncode": done.returncode,
            "tail": (done.stdout + done.stderr)[-2000:],
            "steps": [r["step"] for r in train],
            "loss": [r["loss"] for r in train],
            "tokens_per_s": _median([r["tokens_per_s"] for r in train[1:]]),
        }
    return {"runs": runs, **_loss_agreement(runs["triton"], runs["sdpa"])}


def _median(values: list[float]) -> float | None:
    values = sorted(values)
    return values[len(values) // 2] if values else None


def _loss_agreement(a: dict, b: dict) -> dict:
    """Largest relative difference of the two loss curves over the steps both logged."""
    common_steps = sorted(set(a["steps"]) & set(b["steps"]))
    la = dict(zip(a["steps"], a["loss"], strict=True))
    lb = dict(zip(b["steps"], b["loss"], strict=True))
    diffs = [abs(la[s] - lb[s]) / max(abs(lb[s]), 1e-9) for s in common_steps]
    # max() would pass over a NaN (NaN > x is False): a diverged curve is NaN, not agreement.
    worst = math.nan if any(math.isnan(d) for d in diffs) else max(diffs, default=None)
    return {"steps_compared": len(common_steps), "max_relative_loss_difference": worst}


RUNNERS = {
    "parity": run_parity,
    "speed": run_speed,
    "memory": run_memory,
    "model": run_model,
    "training": run_training,
}


def run_step(args) -> int:
    """One step, in this process (the report starts one process per step); writes its file."""
    sizes = gpu_plan.Sizes(**args.sizes) if args.sizes else gpu_plan.Sizes()
    device = torch.device("cuda")
    start = time.perf_counter()
    try:
        if args.run_step == "warm":
            steps = [s for s in STEPS if s not in args.skip]
            result = run_warm(args, sizes, steps)
        else:
            result = RUNNERS[args.run_step](args, sizes, device_tag(device))
    except Exception:  # recorded, and the next step still runs
        result = {"error": traceback.format_exc()}
        print(result["error"], file=sys.stderr)
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["environment"] = environment(device)
    write_step(args.out_dir, args.run_step, result)
    return 0 if "error" not in result else 1


def plan_for(args) -> gpu_plan.Plan:
    from benchmarks import warm_cache

    cores = args.cores or (
        os.cpu_count() if torch.cuda.is_available() else gpu_plan.GPU_MACHINE_CORES
    )
    arch = gpu_plan.H100_ARCH
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        arch = 10 * major + minor
    steps = [s for s in STEPS if s not in args.skip]
    return gpu_plan.make_plan(
        60 * args.budget_minutes, cores, steps,
        lambda every, first: warm_cache.count_builds(every, first, arch),
    )  # fmt: skip


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.run_step:
        return run_step(args)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_report needs a CUDA GPU, and this machine has none (torch.cuda.is_available() "
              "is False). --dry-run prints the plan anywhere; on a CPU, run the benchmarks "
              "themselves: python -m benchmarks.attention_benchmark.", file=sys.stderr)  # fmt: skip
        return 2
    started = time.perf_counter()
    plan = plan_for(args)
    print(gpu_plan.describe(plan), flush=True)
    if args.dry_run:
        return 0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    deadline = started + plan.budget_s
    for step in plan.steps:
        missing = missing_dependencies(step)
        if missing:
            print(f"{step}: skipped, missing Python packages {missing} (see docs/gpu.md)")
            write_step(args.out_dir, step, {"skipped": f"missing {missing}"})
            continue
        limit = min(plan.limit_s(step), deadline - time.perf_counter())
        if limit < 5:
            print(f"{step}: skipped, the budget is spent")
            continue
        print(f"\n=== gpu_report: {step} (limit {limit:.0f} s) ===", flush=True)
        command = [sys.executable, "-m", "benchmarks.gpu_report", "--run-step", step,
                   "--sizes", json.dumps(vars(plan.sizes)), "--out-dir", str(args.out_dir)]  # fmt: skip
        command += ["--skip", *args.skip] if args.skip else []
        command += ["--cores", str(args.cores)] if args.cores else []
        try:
            subprocess.run(command, cwd=ROOT, timeout=limit, check=False)
        except subprocess.TimeoutExpired:
            print(f"{step}: stopped at its limit of {limit:.0f} s")
            write_step(args.out_dir, step, {"error": f"timed out after {limit:.0f} s"})
    return write_summary(args.out_dir)


if __name__ == "__main__":
    sys.exit(main())
