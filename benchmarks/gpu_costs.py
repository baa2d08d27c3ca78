"""What a GPU step costs, from what it does: each call's time from its FLOPs at a rate, and
``triton.testing.do_bench``'s own rule for how many calls it makes (at least 8, and as many as
fill its 25 ms of warm-up and 100 ms of repeats), plus autotuning's first calls (up to four
candidates per kernel, each timed with ``do_bench(warmup=5, rep=20)``). The rates are
:data:`ASSUMED_TFLOPS` until a report has run: then :func:`measured_tflops` reads what each
implementation measured. :mod:`benchmarks.gpu_plan` adds these up per step."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

# Fixed by design: triton.testing.do_bench's defaults, and launch.pick's arguments.
DO_BENCH_WARMUP_S, DO_BENCH_REP_S = 0.025, 0.100
TUNE_WARMUP_S, TUNE_REP_S = 0.005, 0.020
TUNE_CANDIDATES = 4  # launch.MAX_CANDIDATES: the most configurations pick times per kernel

# Not measured (no GPU has run this project); stated so that a reader can replace them.
ASSUMED = {
    "process_start_s": 20.0,  # python, torch and CUDA start in a fresh process
    "cuda_test_s": 1.0,  # one `pytest -m cuda` test once its kernels are compiled
    "train_setup_s": 45.0,  # tokenizer, data, model, then the final validation with beams
    "call_overhead_s": 50e-6,  # launches and Python around one attention call
    "model_point_setup_s": 2.0,  # build the model and optimizer, two warm-up steps
}
# bf16 TFLOP/s of one attention call (FlashAttention's FLOP convention, causal halved), guessed
# from published H100 figures and on the slow side; naive attention is memory-bound. A report
# that has run replaces them with what it measured (measured_tflops).
ASSUMED_TFLOPS = {
    "triton": 200.0,
    "sdpa_flash": 250.0,
    "sdpa_cudnn": 250.0,
    "sdpa_efficient": 150.0,
    "naive": 40.0,
}
MODEL_STEP_TFLOPS = 20.0  # the model benchmark's small model: launches, not FLOPs, dominate


def do_bench_s(call_s: float, warmup_s=DO_BENCH_WARMUP_S, rep_s=DO_BENCH_REP_S) -> float:
    """What ``triton.testing.do_bench`` takes for a call of ``call_s`` seconds: one call, five
    to estimate it, then as many as fill ``warmup_s`` and ``rep_s`` (at least one each)."""
    return 6 * call_s + max(call_s, warmup_s) + max(call_s, rep_s)


def tune_s(kernel_call_s: list[float]) -> float:
    """The first call at a new length bucket: every candidate of every kernel run once and
    timed with ``do_bench(warmup=5, rep=20)``."""
    return sum(
        TUNE_CANDIDATES * (t + do_bench_s(t, TUNE_WARMUP_S, TUNE_REP_S)) for t in kernel_call_s
    )


def attention_call_s(batch, heads, length, head_dim, causal, impl, rates) -> tuple[float, float]:
    """(forward, backward) seconds of one attention call at ``rates`` TFLOP/s."""
    forward = 4.0 * batch * heads * length * length * head_dim / (2 if causal else 1)
    rate = 1e12 * rates[impl]
    overhead = ASSUMED["call_overhead_s"]
    return forward / rate + overhead, 2.5 * forward / rate + overhead


def attention_point_s(batch, heads, length, head_dim, causal, impl, rates) -> float:
    """One point of the attention benchmark on CUDA (benchmarks.attention_measure): two memory
    phases (a warm-up call and a measured call each), then forward, backward and forward +
    backward each called once and timed with ``do_bench``; ours autotunes its forward and its
    two backward kernels on its first call at the length."""
    fwd, bwd = attention_call_s(batch, heads, length, head_dim, causal, impl, rates)
    both = fwd + bwd
    memory = 2 * fwd + 2 * both
    timing = (fwd + do_bench_s(fwd)) + (fwd + bwd + do_bench_s(bwd)) + (both + do_bench_s(both))
    tuning = tune_s([fwd, 0.6 * bwd, 0.4 * bwd]) if impl == "triton" else 0.0
    return memory + timing + tuning


def window_point_s(batch, heads, length, head_dim, window, rates) -> float:
    """One length of the window benchmark on CUDA (benchmarks.window_benchmark): full causal
    attention, then a causal window of ``window`` keys, each a forward and a forward + backward
    call timed by ``median_ms`` (one call, then ``do_bench``); the first call of each autotunes
    our three kernels at the length. The window's calls cost its (query, key) pairs:
    ``length * (window + 1)`` against the full causal ``length**2 / 2``."""
    full_fwd, full_bwd = attention_call_s(batch, heads, length, head_dim, True, "triton", rates)
    share = min(1.0, length * (window + 1) / (length * length / 2))
    overhead = ASSUMED["call_overhead_s"]
    total = 0.0
    for fraction in (1.0, share):
        fwd = overhead + (full_fwd - overhead) * fraction
        bwd = overhead + (full_bwd - overhead) * fraction
        both = fwd + bwd
        timing = (fwd + do_bench_s(fwd)) + (both + do_bench_s(both))
        total += timing + tune_s([fwd, 0.6 * bwd, 0.4 * bwd])
    return total


def model_step_s(length: int) -> float:
    """One training step of the model benchmark's model (batch 8, d_model 256, 3 + 3 layers,
    vocabulary 8000): 6 x parameters x tokens for the weights, plus attention's 4 b n^2 d per
    layer and pass, three times over for forward and backward."""
    tokens = 8 * length
    weights = 6 * 12e6 * tokens
    attention = 3 * 9 * 4 * 8 * length * length * 256
    return (weights + attention) / (1e12 * MODEL_STEP_TFLOPS) + 0.02


def measured_tflops(out_dir: Path | None) -> dict[str, float]:
    """ASSUMED_TFLOPS, each replaced by the median forward + backward TFLOP/s its
    implementation measured in an earlier report's attention results in ``out_dir`` (if any)."""
    rates = dict(ASSUMED_TFLOPS)
    if out_dir is None:
        return rates
    measured: dict[str, list[float]] = {}
    for path in sorted(Path(out_dir).glob("gpu_*_*.json")):
        try:
            records = json.loads(path.read_text()).get("records", [])
        except (OSError, ValueError, AttributeError):
            continue
        for r in records:
            if r.get("measure") == "time" and r.get("pass") == "forward_backward":
                if r.get("status") == "ok" and r.get("implementation") in rates:
                    measured.setdefault(r["implementation"], []).append(r["tflops"])
    rates.update({impl: statistics.median(v) for impl, v in measured.items()})
    return rates
