"""Everything a GPU session should measure, in one command: python -m benchmarks.gpu_report

Steps, in order (each is timed; a step that fails is recorded and the next one still runs):

1. ``parity``: the CUDA parity tests, ``python -m pytest -m cuda`` (kernel vs float64
   reference at lengths up to 4096, every dtype, masks, causal).
2. ``speed``: the attention benchmark in FlashAttention's setting: batch x length = 16k tokens,
   hidden 2048 (heads = 2048 / head dim), head dims 64 and 128, causal and not, lengths 512 to
   16k, forward, backward and forward + backward, bf16: ours beside SDPA's flash, cuDNN and
   memory-efficient backends and naive attention; ours/SDPA-flash ratios from this one run.
3. ``memory``: peak memory against length, batch 1, 16 heads of 128, causal, up to 128k
   tokens: naive runs out of memory long before ours and SDPA's flash do.
4. ``model``: the whole-model training benchmark (tokens/s and step memory per backend).
5. ``training``: ``train.py --config base`` for a few minutes with ``--attention triton`` and
   with ``--attention sdpa``: tokens/s and whether the two loss curves agree.

It writes ``gpu_report_<device>.json``, ``.md`` and ``.png`` (plus each benchmark's own files)
to ``benchmarks/results/`` and prints one short table last. Without a CUDA device it stops at
once and says so. On one H100 the whole report takes about 15-20 minutes (``--quick``: about 5).

    python -m benchmarks.gpu_report
    python -m benchmarks.gpu_report --quick --skip training
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python benchmarks/gpu_report.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks import common

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("parity", "speed", "memory", "model", "training")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_report",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--skip", nargs="+", default=[], choices=STEPS, help="steps to leave out")
    parser.add_argument(
        "--quick", action="store_true", help="shorter sweeps (lengths to 4k, 64k memory, 1 min "
        "of training each) for a first look"
    )  # fmt: skip
    parser.add_argument(
        "--train-minutes", type=float, default=3.0, help="training budget per backend (default 3)"
    )
    parser.add_argument(
        "--out-dir", type=Path, default=ROOT / "benchmarks" / "results", help="where results go"
    )
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------- steps


def run_parity(args, tag: str) -> dict:
    log = args.out_dir / f"gpu_parity_{tag}.log"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    log.write_text(done.stdout + done.stderr)
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", done.stdout)}
    return {"returncode": done.returncode, "log": log.name, **counts}


def run_speed(args, tag: str) -> dict:
    from benchmarks import attention_benchmark
    from kernels import launch

    max_len = 4096 if args.quick else 16384
    payload = attention_benchmark.main([
        "--tokens", "16384", "--hidden", "2048", "--head-dims", "64", "128",
        "--min-len", "512", "--max-len", str(max_len),
        "--impls", "naive", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "triton",
        "--out-dir", str(args.out_dir), "--tag", f"gpu_attention_{tag}",
    ])  # fmt: skip
    tuned = {repr(k): vars(v) for k, v in launch.tuned_configs().items()}
    return {"files": f"gpu_attention_{tag}.*", "ratios": payload["ratios"], "tuned": tuned}


def run_memory(args, tag: str) -> dict:
    from benchmarks import attention_benchmark

    max_len = 65536 if args.quick else 131072
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


def run_model(args, tag: str) -> dict:
    from benchmarks import model_benchmark

    lengths = ["256", "1024"] if args.quick else ["256", "512", "1024", "2048", "4096", "8192"]
    payload = model_benchmark.main(
        ["--lengths", *lengths, "--out-dir", str(args.out_dir), "--tag", f"gpu_model_{tag}"]
    )
    return {"files": f"gpu_model_{tag}.*", "records": payload["records"]}


def run_training(args, tag: str) -> dict:
    minutes = 1.0 if args.quick else args.train_minutes
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
    return {
        "steps_compared": len(common_steps),
        "max_relative_loss_difference": max(diffs, default=None),
    }


RUNNERS = {
    "parity": run_parity,
    "speed": run_speed,
    "memory": run_memory,
    "model": run_model,
    "training": run_training,
}


# ------------------------------------------------------------------------------- summary


def summary_rows(results: dict) -> list[list[str]]:
    """One short table: the headline of each step."""
    rows = []
    parity = results.get("parity", {})
    if parity:
        rows.append(["CUDA parity tests", _parity_line(parity)])
    speed = results.get("speed", {})
    for ratio in speed.get("ratios", []):
        if ratio.get("sdpa_backend") == "sdpa_flash" and ratio.get("seq_len") in (
            1024,
            4096,
            16384,
        ):
            rows.append([
                f"ours/SDPA-flash {ratio['pass']} d={ratio['head_dim']} "
                f"{'causal' if ratio['causal'] else 'full'} len {ratio['seq_len']}",
                f"{ratio['ratio']:.2f}x",
            ])  # fmt: skip
    memory = results.get("memory", {}).get("ratios", [])
    longest = [r for r in memory if r["pass"] == "forward_backward"][-1:]
    for r in longest:
        flash = r["over_sdpa_flash"]
        rows.append([f"peak memory ours/SDPA-flash, fwd+bwd, len {r['seq_len']}",
                     f"{flash:.2f}x" if flash else f"SDPA-flash {r['sdpa_flash_status']}"])  # fmt: skip
    naive_fails = [
        r["seq_len"]
        for r in memory
        if r["pass"] == "forward_backward" and r["naive_status"] != "ok"
    ]
    if naive_fails:
        rows.append(["naive fwd+bwd first fails at length", str(min(naive_fails))])
    training = results.get("training", {})
    for backend, run in training.get("runs", {}).items():
        rows.append([f"base training tokens/s, {backend}", f"{run['tokens_per_s'] or 0:,.0f}"])
    if training.get("max_relative_loss_difference") is not None:
        rows.append(["loss curves triton vs sdpa (max rel. diff)",
                     f"{training['max_relative_loss_difference']:.3%}"])  # fmt: skip
    for step, result in results.items():
        if "error" in result:
            rows.append([f"{step}: FAILED", result["error"].splitlines()[-1][:80]])
    return rows


def _parity_line(parity: dict) -> str:
    if "error" in parity:
        return "did not run"
    return ", ".join(f"{parity.get(k, 0)} {k}" for k in ("passed", "failed", "skipped"))


def plot(results: dict, env: dict, path: Path) -> None:
    """ours/SDPA-flash against length, per pass, head dim and causality (the headline)."""
    from matplotlib.figure import Figure

    ratios = [
        r
        for r in results.get("speed", {}).get("ratios", [])
        if r.get("sdpa_backend") == "sdpa_flash"
    ]
    fig = Figure(figsize=(12, 4.5))
    passes = ("forward", "backward", "forward_backward")
    for ax, pass_ in zip(fig.subplots(1, 3, sharey=True), passes, strict=True):
        for d in (64, 128):
            for causal in (False, True):
                pts = sorted((r["seq_len"], r["ratio"]) for r in ratios
                             if r["pass"] == pass_ and r["head_dim"] == d and r["causal"] == causal)  # fmt: skip
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="o",
                            label=f"d={d} {'causal' if causal else 'full'}")  # fmt: skip
        ax.axhline(1.0, color="grey", linestyle=":")
        ax.set(xscale="log", xlabel="sequence length", title=pass_.replace("_", " + "))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.axes[0].set_ylabel("ours / SDPA flash (TFLOP/s ratio)")
    fig.suptitle(
        f"{env['device_name']} -- torch {env['torch']}, triton {env.get('triton')}, {env['date']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_report needs a CUDA GPU, and this machine has none (torch.cuda.is_available() "
              "is False). On a CPU, run the benchmarks themselves: python -m "
              "benchmarks.attention_benchmark, python -m benchmarks.model_benchmark.",
              file=sys.stderr)  # fmt: skip
        return 2
    device = torch.device("cuda")
    env = common.environment(device)
    tag = common.device_tag(device)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results, timings = {}, {}
    for step in STEPS:
        if step in args.skip:
            continue
        print(f"\n=== gpu_report: {step} ===", flush=True)
        start = time.perf_counter()
        try:
            results[step] = RUNNERS[step](args, tag)
        except Exception:  # one failed step must not lose the others' results
            results[step] = {"error": traceback.format_exc()}
            print(results[step]["error"], file=sys.stderr)
        timings[step] = round(time.perf_counter() - start, 1)
        torch.cuda.empty_cache()
        payload = {"environment": env, "seconds": timings, "results": results}
        common.write_json(args.out_dir / f"gpu_report_{tag}.json", payload)  # after every step

    rows = summary_rows(results)
    table = common.markdown_table(["measure", "value"], rows)
    times = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    (args.out_dir / f"gpu_report_{tag}.md").write_text(
        f"# GPU report: {env['device_name']}\n\n{env['date']}; torch {env['torch']}, "
        f"triton {env.get('triton')}; steps took {times}.\n\n{table}\n"
    )
    plot(results, env, args.out_dir / f"gpu_report_{tag}.png")
    print(f"\nwrote {args.out_dir}/gpu_report_{tag}.json, .md and .png ({times})\n")
    print(table)
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
