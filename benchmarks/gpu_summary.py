"""What :mod:`benchmarks.gpu_report` writes: one JSON file per step, the moment the step ends,
and a summary (markdown table and plot) from whichever step files exist."""

from __future__ import annotations

import json
import math
import sys
import traceback
from pathlib import Path

from benchmarks.common.records import markdown_table, write_text_atomic
from benchmarks.gpu_plan import STEPS


def json_text(payload) -> str:
    """JSON with NaN and infinities written as the strings "NaN", "Infinity", "-Infinity" (a
    diverged training run's loss must not stop the report from being written)."""

    def finite(x):
        if isinstance(x, float) and not math.isfinite(x):
            return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
        if isinstance(x, dict):
            return {k: finite(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [finite(v) for v in x]
        return x

    return json.dumps(finite(payload), indent=1, allow_nan=False, default=str) + "\n"


def step_path(out_dir: Path, step: str) -> Path:
    return out_dir / f"gpu_{step}.json"


def write_step(out_dir: Path, step: str, payload: dict) -> None:
    """The step's record, written whole or not at all (atomically)."""
    write_text_atomic(step_path(out_dir, step), json_text(payload))


def read_step(out_dir: Path, step: str) -> dict | None:
    """One step's record; None if it is missing or unreadable."""
    try:
        return json.loads(step_path(out_dir, step).read_text())
    except (OSError, ValueError):
        return None


def read_steps(out_dir: Path) -> dict:
    """Every step result that exists in out_dir (a missing or unreadable one is left out)."""
    results = {step: read_step(out_dir, step) for step in STEPS}
    return {step: result for step, result in results.items() if result is not None}


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
    window = results.get("window", {}).get("ratios", [])
    for r in [r for r in window if r["pass"] == "forward_backward"][-1:]:
        rows.append([f"window {r['window']} / full, causal, fwd+bwd, len {r['seq_len']}",
                     f"{r['ratio']:.3f} (pairs {r['pairs_ratio']:.3f})"])  # fmt: skip
    training = results.get("training", {})
    for backend, run in training.get("runs", {}).items():
        rows.append([f"base training tokens/s, {backend}", _number(run["tokens_per_s"], ",.0f")])
    if training.get("max_relative_loss_difference") is not None:
        rows.append(["loss curves triton vs sdpa (max rel. diff)",
                     _number(training["max_relative_loss_difference"], ".3%")])  # fmt: skip
    warm = results.get("warm", {})
    if "launches_warmed" in warm:
        rows.append(["kernels compiled before timing (launches, seconds)",
                     f"{warm['launches_warmed']}, {warm['seconds']:.0f} s"])  # fmt: skip
    for step, result in results.items():
        rows += _step_rows(step, result)
    return rows


def _step_rows(step: str, result: dict) -> list[list[str]]:
    """How a step ended, where that is news: failed, skipped, cut short with partial results,
    kernels compiled after the warm step, processes it left running."""
    rows = []
    if "error" in result:
        rows.append([f"{step}: FAILED", result["error"].splitlines()[-1][:80]])
    elif isinstance(result.get("skipped"), str):  # the parity step's "skipped" is a count
        rows.append([f"{step}: skipped", result["skipped"]])
    if result.get("partial"):
        rows.append([f"{step}: stopped early, kept", _kept(step, result)])
    compiled = result.get("compiled_kernels")
    if step != "warm" and compiled:
        names = ", ".join(f"{k} x{n}" for k, n in compiled.items())
        rows.append([f"{step}: kernels compiled after warm ({sum(compiled.values())})",
                     names[:120]])  # fmt: skip
    if result.get("left_running"):
        rows.append([f"{step}: processes left running", str(result["left_running"])])
    return rows


def _kept(step: str, result: dict) -> str:
    """What a step stopped early had finished."""
    if step == "parity":
        return _parity_line(result)
    if "points" in result:
        return f"{result['points']} points"
    if result.get("runs"):
        return "training runs: " + ", ".join(result["runs"])
    return "nothing"


def _number(value, spec: str) -> str:
    """A number formatted, or what stands in its place: "NaN" from a diverged run, "n/a"."""
    if value is None:
        return "n/a"
    return value if isinstance(value, str) else format(value, spec)


def _parity_line(parity: dict) -> str:
    if "error" in parity and not parity.get("partial"):
        return "did not run"
    line = ", ".join(f"{parity.get(k, 0)} {k}" for k in ("passed", "failed", "skipped"))
    for key, name in (("errors", "errors"), ("collection_errors", "test files not collected")):
        if parity.get(key):  # pytest's errors, test files that could not be imported
            line += f", {parity[key]} {name}"
    return line


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


def write_summary(out_dir: Path) -> int:
    """gpu_report.md and .png from whatever step files exist; each written even if the other
    fails."""
    results = read_steps(out_dir)
    env = next((r["environment"] for r in results.values() if "environment" in r), {})
    env = {"device_name": "?", "torch": "?", "date": "?", **env}
    rows = summary_rows(results)
    table = markdown_table(["measure", "value"], rows)
    times = ", ".join(f"{k} {v.get('seconds', '?')} s" for k, v in results.items())
    try:
        (out_dir / "gpu_report.md").write_text(
            f"# GPU report: {env['device_name']}\n\n{env['date']}; torch {env['torch']}, "
            f"triton {env.get('triton')}; steps took {times}.\n\n{table}\n"
        )
    except OSError as err:
        print(f"could not write gpu_report.md: {err}", file=sys.stderr)
    try:
        plot(results, env, out_dir / "gpu_report.png")
    except Exception:  # noqa: BLE001 - the table matters more than the figure
        print(traceback.format_exc(), file=sys.stderr)
    print(f"\nwrote {out_dir}/gpu_report.md and .png ({times})\n")
    print(table)
    return 0 if all("error" not in r for r in results.values()) else 1
