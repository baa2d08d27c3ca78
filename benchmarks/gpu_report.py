"""Everything a GPU session should measure, in one command, within a wall-clock budget:

    python -m benchmarks.gpu_report --budget-minutes 9            # on the GPU machine
    python -m benchmarks.gpu_report --budget-minutes 9 --dry-run  # the plan, on any machine
    python -m benchmarks.gpu_report --rehearse --budget-minutes 3 # all of it rehearsed on a CPU

Steps, in order (:mod:`benchmarks.gpu_plan` sizes them to the budget; a step that does not fit
is left out, and each runs in a process group of its own, stopped, with every process it
started, at its time limit: :mod:`benchmarks.gpu_steps` holds them):

0. ``warm``: every kernel the later steps launch is compiled into Triton's cache in parallel
   on all CPU cores (:mod:`benchmarks.warm_cache`), so no step pays a compile and the triton
   training run starts as warm as the sdpa one. Each later step's record lists the kernels
   Triton compiled during it (the summary names them): after warm, none.
1. ``parity``: the CUDA parity tests, ``pytest -m cuda`` over the test files that hold them,
   with autotuning off (``FLASH_ATTENTION_AUTOTUNE=0``: the first configuration that compiles
   without spills).
2. ``speed``: the attention benchmark in FlashAttention's setting (16k tokens, hidden 2048,
   head dims 64 and 128, causal and not, bf16, autotuned): ours beside SDPA's backends.
3. ``memory``: peak memory against length, batch 1, 16 heads of 128, causal.
4. ``model``: the whole-model training benchmark (tokens/s and step memory per backend).
5. ``training``: ``train.py --config base`` for a few minutes with ``--attention triton``,
   then ``sdpa``: tokens/s and whether the loss curves agree.
6. ``window``: a causal sliding window of 64 keys against causal full attention, ours, at
   growing lengths (batch 1, 16 heads of 64, bf16): O(n·w) against O(n²). The first step
   left out when the plan does not fit.

Each step writes ``<out-dir>/gpu_<step>.json`` the moment it ends (a session cut short keeps
every finished step), and its scripts write their results as they go (a step stopped at its
limit keeps every finished point: its record is marked partial); ``gpu_report.md``/``.png``
summarise whatever step files exist. A step whose Python packages are missing (``NEEDS``:
``datasets`` for training, on an image without it) is skipped with one line, and only that
step. Without a CUDA device, ``--dry-run`` prints the plan and ``--rehearse`` runs the whole
orchestration at toy sizes on the CPU and checks it (docs/gpu.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python benchmarks/gpu_report.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks import gpu_costs, gpu_plan
from benchmarks.common import options, triton_cache
from benchmarks.common.environment import device_tag, environment
from benchmarks.common.process_group import run_limited
from benchmarks.gpu_steps import (  # noqa: F401 - the report's results, as tests read them
    RUNNERS,
    StepContext,
    loss_agreement,
    memory_ratios,
    partial_result,
)
from benchmarks.gpu_summary import (  # noqa: F401 - the report's results, as tests read them
    plot,
    read_step,
    read_steps,
    summary_rows,
    write_step,
    write_summary,
)
from transformer.translation.cli import positive_int

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT_DIR = ROOT / "benchmarks" / "results" / "gpu"
STEPS = gpu_plan.STEPS
# The Python packages each step needs beyond torch and triton: a step whose package is missing
# is skipped with one line, and only that step (a GPU image may lack `datasets`).
NEEDS = {
    "warm": (),
    "parity": ("pytest", "hypothesis"),
    "speed": ("einops", "tqdm", "matplotlib"),
    "memory": ("einops", "tqdm", "matplotlib"),
    "window": ("tqdm", "matplotlib"),
    "model": ("einops", "tqdm", "matplotlib"),
    "training": ("datasets", "tokenizers", "sacrebleu", "safetensors", "einops", "tqdm"),
}


def positive_minutes(text: str) -> float:
    """A budget in minutes: a finite number above 0."""
    try:
        minutes = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of minutes: {text!r}") from None
    if not 0 < minutes < float("inf"):
        raise argparse.ArgumentTypeError(f"must be above 0 minutes, got {text}")
    return minutes


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_report",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--budget-minutes", type=positive_minutes, default=9.0,
        help="wall-clock budget (default 9)",
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    parser.add_argument(
        "--rehearse", action="store_true",
        help="no GPU needed: run the whole orchestration on the CPU at toy sizes under Triton's "
        "interpreter, with `datasets` hidden and one step cut at its limit, and check that the "
        "cut leaves no process behind, finished points are kept, a missing package skips only "
        "its step and the summary reads partial results (exit 1 if not)",
    )  # fmt: skip
    parser.add_argument("--skip", nargs="+", default=[], choices=STEPS, help="steps to leave out")
    parser.add_argument(
        "--cores", type=positive_int, default=None, help="compiler processes for warm (default: all "
        f"cores; a dry run on a machine other than the GPU one assumes {gpu_plan.GPU_MACHINE_CORES})"
    )  # fmt: skip
    parser.add_argument(
        "--out-dir", type=options.directory, default=None,
        help=f"where each step's results go (default {DEFAULT_OUT_DIR.relative_to(ROOT)}; "
        "with --rehearse, a fresh temporary folder)",
    )  # fmt: skip
    # Internal: one step, in-process (the report starts one process per step), at these sizes.
    parser.add_argument("--run-step", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=gpu_plan.Sizes.from_json, help=argparse.SUPPRESS)
    parser.add_argument("--steps", nargs="+", default=None, help=argparse.SUPPRESS)
    # Internal (--rehearse): the toy sizes on the CPU, and the step cut after its first point.
    parser.add_argument("--toy", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cut", choices=STEPS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def missing_dependencies(step: str) -> list[str]:
    """The packages ``step`` needs that cannot be found here."""
    missing = []
    for name in NEEDS.get(step, ()):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a finder that refuses it, a broken install
            found = False
        if not found:
            missing.append(name)
    return missing


def step_context(args, sizes: gpu_plan.Sizes, steps) -> StepContext:
    tag = device_tag(torch.device(sizes.device))
    return StepContext(args.out_dir, sizes, tag, tuple(steps), args.cores)


def run_step(args) -> int:
    """One step, in this process (the report starts one process per step); writes its file."""
    sizes = args.sizes or gpu_plan.Sizes()
    device = torch.device(sizes.device)
    ctx = step_context(args, sizes, args.steps or [s for s in STEPS if s not in args.skip])
    start = time.perf_counter()
    try:
        result = RUNNERS[args.run_step](ctx)
    except Exception:  # recorded, and the next step still runs
        result = {"error": traceback.format_exc()}
        print(result["error"], file=sys.stderr)
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["environment"] = environment(device)
    write_step(args.out_dir, args.run_step, result)
    return 0 if "error" not in result else 1


def plan_for(args) -> gpu_plan.Plan:
    from benchmarks import warm_cache
    from kernels.common.warm import usable_cores

    cores = args.cores or (
        usable_cores() if torch.cuda.is_available() else gpu_plan.GPU_MACHINE_CORES
    )
    arch = gpu_plan.H100_ARCH
    if torch.cuda.is_available() and not args.toy:
        major, minor = torch.cuda.get_device_capability()
        arch = 10 * major + minor
    steps = [s for s in STEPS if s not in args.skip]
    if args.toy:  # the rehearsal's interpreter cannot plan builds; its warm step counts them
        return gpu_plan.make_plan(
            60 * args.budget_minutes, cores, steps, lambda every, first: 0, gpu_plan.REHEARSAL
        )
    return gpu_plan.make_plan(
        60 * args.budget_minutes, cores, steps,
        lambda every, first: warm_cache.count_builds(every, first, arch),
        rates=gpu_costs.measured_tflops(args.out_dir),
    )  # fmt: skip


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rehearse:
        from benchmarks import gpu_rehearsal

        return gpu_rehearsal.rehearse(args.budget_minutes, args.out_dir)
    args.out_dir = args.out_dir or DEFAULT_OUT_DIR
    if args.run_step:
        return run_step(args)
    if not (args.dry_run or args.toy or torch.cuda.is_available()):
        print("gpu_report needs a CUDA GPU, and this machine has none (torch.cuda.is_available() "
              "is False). --dry-run prints the plan anywhere and --rehearse runs the whole "
              "orchestration on the CPU at toy sizes; on a CPU, run the benchmarks themselves: "
              "python -m benchmarks.attention_benchmark.", file=sys.stderr)  # fmt: skip
        return 2
    started = time.perf_counter()
    plan = plan_for(args)
    print(gpu_plan.describe(plan), flush=True)
    if args.dry_run:
        return 0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    deadline = started + plan.budget_s
    missing = {step: missing_dependencies(step) for step in plan.steps}
    to_run = [step for step in plan.steps if not missing[step]]
    for step in plan.steps:
        if missing[step]:
            print(f"{step}: skipped, missing Python packages {missing[step]} (see docs/gpu.md)")
            write_step(args.out_dir, step, {"skipped": f"missing {missing[step]}"})
            continue
        # What is left of the budget, shared among the steps left in proportion to their
        # estimates: a step that ends early leaves its time to the ones after it.
        left = to_run[to_run.index(step) :]
        share = plan.estimates[step] / sum(plan.estimates[s] for s in left)
        limit = (deadline - time.perf_counter()) * share
        if limit < 5:
            print(f"{step}: skipped, the budget is spent")
            write_step(args.out_dir, step, {"skipped": "the budget was spent"})
            continue
        run_one(args, plan, step, limit)
    return write_summary(args.out_dir)


def run_one(args, plan: gpu_plan.Plan, step: str, limit: float) -> dict:
    """Run ``step`` in a process group of its own for at most ``limit`` seconds; its record,
    completed with what it compiled, how it ended and (stopped early) what it had finished."""
    print(f"\n=== gpu_report: {step} (limit {limit:.0f} s) ===", flush=True)
    command = [sys.executable, "-m", "benchmarks.gpu_report", "--run-step", step,
               "--sizes", plan.sizes.to_json(), "--out-dir", str(args.out_dir),
               "--steps", *plan.steps]  # fmt: skip
    command += ["--cores", str(args.cores)] if args.cores else []
    env = dict(os.environ)
    if step == "warm":  # it compiles (or, without a GPU, plans) for real GPUs: no interpreter
        env.pop("TRITON_INTERPRET", None)
    ctx = step_context(args, plan.sizes, plan.steps)
    stop_when = None
    if step == args.cut:  # --rehearse: stopped once it has finished something to keep

        def stop_when():
            finished = partial_result(step, ctx)
            return bool(finished.get("points") or finished.get("passed"))

    before = triton_cache.builds()
    write_step(args.out_dir, step, {"started": True})  # replaced by the step's own record
    outcome = run_limited(command, limit, cwd=ROOT, env=env, stop_when=stop_when)
    record = read_step(args.out_dir, step) or {}
    if outcome.stopped:
        why = f"timed out after {limit:.0f} s"
        if outcome.by_request:
            why = f"stopped after {outcome.seconds:.0f} s, with something done (--rehearse)"
        print(f"{step}: {why}")
        record = {**partial_result(step, ctx), "partial": True, "error": why,
                  "seconds": round(outcome.seconds, 1)}  # fmt: skip
    elif record.get("started") and len(record) == 1:
        record = {"error": f"the step's process exited with {outcome.returncode} "
                  "and wrote no record"}  # fmt: skip
    record.update(
        compiled_kernels=triton_cache.compiled_since(before),
        left_running=outcome.left_running,
        killed=outcome.killed,
    )
    write_step(args.out_dir, step, record)
    return record


if __name__ == "__main__":
    sys.exit(main())
