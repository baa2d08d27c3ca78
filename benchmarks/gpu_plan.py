"""The plan of a GPU session: which steps :mod:`benchmarks.gpu_report` runs, at which sizes, and
how long each may take, fitted to a wall-clock budget (a lent GPU machine gives about ten
minutes of commands).

Every step gets an estimate and a hard limit (its process group is stopped there and recorded
as timed out), so the report keeps its budget even where an estimate is wrong. Where the
estimates come from:

* ``warm`` (compile every kernel the steps launch, :mod:`benchmarks.warm_cache`): the number of
  kernel builds, counted here by the compile gate's plan (no compiling), times
  :data:`SECONDS_PER_BUILD` (CPU seconds per build measured here, doubled as a margin),
  divided by the cores (16 on the GPU machine), plus a worker's start-up.
* the GPU steps: the calls each point makes, at what each call costs and how many calls
  ``do_bench`` and autotuning make (:mod:`benchmarks.gpu_costs`); per-test and per-step costs
  that nothing bounds are stated as assumptions (``gpu_costs.ASSUMED``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

from benchmarks.gpu_costs import (
    ASSUMED,
    ASSUMED_TFLOPS,
    attention_point_s,
    do_bench_s,
    model_step_s,
    tune_s,
    window_point_s,
)
from kernels.compile_gate import Case

# Measured here (AMD EPYC, 2 cores shared with other sessions at load average ~14; triton 3.9),
# in CPU seconds (user + system, the compiler's ptxas children included), which is what a build
# costs a core of its own: warming one case through the JIT (benchmarks.warm_cache.warm_case,
# flash attention bf16 d=64 causal, every configuration; 12 sm_90 builds) took 19.4 CPU s in a
# fresh cache; the same case in a second fresh process, all 12 found in the cache (0 compiles),
# took 3.3 CPU s (imports and specialisation). So a build costs (19.4 - 3.3) / 12 = 1.34 CPU s.
# The plan doubles both: the GPU machine's cores are not this machine's.
MEASURED_CPU_S_PER_BUILD = (19.4 - 3.3) / 12
MEASURED_WORKER_START_CPU_S = 3.3
MARGIN = 2.0
SECONDS_PER_BUILD = MARGIN * MEASURED_CPU_S_PER_BUILD
WARM_START_S = MARGIN * MEASURED_WORKER_START_CPU_S
GPU_MACHINE_CORES = 16
H100_ARCH = 90


ATTENTION_IMPLS = ("naive", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "triton")
MEMORY_IMPLS = ("naive", "sdpa_flash", "triton")
MODEL_BACKENDS = ("naive", "sdpa", "triton")

# The CUDA parity tests' shapes (tests/test_flash_parity.py and tests/test_additive_parity.py,
# test_long_sequences_within_2x_naive_error_on_gpu; tests/test_gpu_report.py checks that these
# are theirs): the warm step compiles exactly these specialisations.
FLASH_PARITY_SHAPES = ((1024, 1024, 64), (4096, 4096, 128), (1000, 4096, 96), (4096, 1, 64))
FLASH_PARITY_BATCH_HEADS = (2, 2)
ADDITIVE_PARITY_SHAPES = ((1024, 1024, 64), (1000, 2048, 128), (2048, 1, 32))  # (len_q, len_k, a)
ADDITIVE_PARITY_VALUE_DIM = 64
ADDITIVE_PARITY_BATCH_HEADS = (1, 2)
PARITY_DTYPES = ("float32", "float16", "bfloat16")


def doubling(start: int, stop: int) -> list[int]:
    lengths = [start]
    while lengths[-1] * 2 <= stop:
        lengths.append(lengths[-1] * 2)
    return lengths


@dataclass(frozen=True)
class Sizes:
    """What the steps measure and where; the planner shrinks the lengths and minutes to fit the
    budget. ``device`` ``cpu`` with the toy sizes of :data:`REHEARSAL` is ``--rehearse``."""

    speed_min_len: int = 512
    speed_max_len: int = 16384
    speed_tokens: int = 16384  # FlashAttention's setting: batch = tokens // length
    speed_hidden: int = 2048  # heads = hidden // head dim
    speed_head_dims: tuple[int, ...] = (64, 128)
    memory_min_len: int = 1024
    memory_max_len: int = 131072
    memory_heads: int = 16
    memory_head_dim: int = 128
    # the window benchmark's CUDA defaults: a causal window of 64 keys against causal full
    # attention, batch 1, 16 heads of 64, bf16
    window_min_len: int = 1024
    window_max_len: int = 32768
    window_heads: int = 16
    window_head_dim: int = 64
    window: int = 64
    model_min_len: int = 256
    model_max_len: int = 8192
    train_minutes: float = 3.0
    device: str = "cuda"
    # further options of the steps' scripts (the rehearsal's toy model and CPU settings)
    speed_options: tuple[str, ...] = ()
    memory_options: tuple[str, ...] = ()
    window_options: tuple[str, ...] = ()
    model_options: tuple[str, ...] = ()

    @property
    def parity_tests(self) -> int:
        """The CUDA parity tests: one per shape, masking and dtype (the warm step's cases)."""
        return len(FLASH_PARITY_SHAPES) * 4 * 3 + len(ADDITIVE_PARITY_SHAPES) * 2 * 3

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Sizes:
        values = json.loads(text)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


# --rehearse: every step at toy sizes on the CPU (Triton's interpreter), a minute or so in all.
REHEARSAL = Sizes(
    speed_min_len=16, speed_max_len=16, speed_tokens=64, speed_hidden=32, speed_head_dims=(16,),
    memory_min_len=16, memory_max_len=16, memory_heads=2, memory_head_dim=16,
    window_min_len=32, window_max_len=32, window_heads=1, window_head_dim=16, window=8,
    model_min_len=16, model_max_len=16, train_minutes=0.2, device="cpu",
    speed_options=("--cpu-repeats", "1", "--causal", "yes", "--impls", "naive", "sdpa_flash",
                   "triton"),
    memory_options=("--cpu-repeats", "1"),
    window_options=("--cpu-repeats", "1"),
    model_options=("--batch", "2", "--vocab", "64", "--d-model", "32", "--heads", "2",
                   "--layers", "1", "--d-ff", "64", "--cpu-repeats", "1"),
)  # fmt: skip

# The rehearsal's toy steps on the CPU (measured here: 2 cores shared with other sessions), and
# with a margin: they are limits too, and only the step it cuts on purpose may reach its own.
REHEARSAL_ESTIMATES_S = {
    "warm": 25.0, "parity": 40.0, "speed": 30.0, "memory": 30.0, "window": 20.0, "model": 30.0,
    "training": 5.0,
}  # fmt: skip

# What gives way first when the plan is over budget: the training runs' minutes (tokens/s
# settles within a minute), the window sweep's longest lengths (4096 already shows O(n·w)
# against O(n²)), the longest memory lengths (a full do_bench of a second-long call), the
# model's lengths, and last the speed sweep's (its 16k is FlashAttention's headline).
SHRINK_ORDER = (
    ("train_minutes", (3.0, 2.0, 1.5, 1.0, 0.5)),
    ("window_max_len", (32768, 16384, 8192, 4096)),
    ("memory_max_len", (131072, 65536, 32768)),
    ("model_max_len", (8192, 4096, 2048, 1024)),
    ("speed_max_len", (16384, 8192, 4096, 2048)),
    ("memory_max_len", (16384,)),
)


# --- what each step launches (for warm) ---------------------------------------------------------


def speed_cases(sizes: Sizes) -> list[Case]:
    """FlashAttention's setting: fixed tokens and hidden size; every length is a multiple of 16,
    so one length per (head dim, causality) gives every specialisation the sweep launches."""
    n = sizes.speed_min_len
    return [
        Case("flash_attention", "bfloat16", d, masking, n, n,
             max(1, sizes.speed_tokens // n), max(1, sizes.speed_hidden // d))
        for d in sizes.speed_head_dims
        for masking in ("none", "causal")
    ]  # fmt: skip


def memory_cases(sizes: Sizes) -> list[Case]:
    n = sizes.memory_min_len
    return [
        Case("flash_attention", "bfloat16", sizes.memory_head_dim, "causal", n, n, 1,
             sizes.memory_heads)
    ]  # fmt: skip


def window_cases(sizes: Sizes) -> list[Case]:
    """The window benchmark's two calls (batch 1, every length a multiple of 16): causal full
    attention and a causal window, as the compile gate's "causal+window" (64 keys left: the
    same integer class as any window that is a multiple of 16)."""
    n = sizes.window_min_len
    return [
        Case("flash_attention", "bfloat16", sizes.window_head_dim, masking, n, n, 1,
             sizes.window_heads)
        for masking in ("causal", "causal+window")
    ]  # fmt: skip


def model_cases(sizes: Sizes) -> list[Case]:
    """The model benchmark's model (d_model 256, 4 heads of 64, batch 8, bf16 autocast):
    encoder self-attention and cross-attention take a key mask, decoder self-attention is causal
    with one. Its warm-up step (model_benchmark.WARMUP_LEN, 16) and every measured length are
    multiples of 16: one specialisation per masking."""
    n = sizes.model_min_len
    return [
        Case("flash_attention", "bfloat16", 64, masking, n, n, 8, 4)
        for masking in ("key_mask", "causal+key_mask")
    ]


def parity_cases(sizes: Sizes) -> list[Case]:
    """The CUDA parity tests' own calls (run with autotuning off: the launcher's first choice):
    flash attention at each of their shapes, with and without their key mask, causal and not, in
    every dtype; the additive kernel likewise, always with a key mask. (The additive tests use
    a value head dim of 64 and a score vector in the features' dtype; the compile gate's
    additive calls give v the feature size and w float32, so those builds differ from the
    tests' and the parity step reports what it compiled.)"""
    batch, heads = FLASH_PARITY_BATCH_HEADS
    flash = [
        Case("flash_attention", dtype, d, masking, len_q, len_k, batch, heads)
        for len_q, len_k, d in FLASH_PARITY_SHAPES
        for masking in ("none", "key_mask", "causal", "causal+key_mask")
        for dtype in PARITY_DTYPES
    ]
    batch, heads = ADDITIVE_PARITY_BATCH_HEADS
    additive = [
        Case("additive_attention", dtype, a, masking, len_q, len_k, batch, heads)
        for len_q, len_k, a in ADDITIVE_PARITY_SHAPES
        for masking in ("key_mask", "causal+key_mask")
        for dtype in PARITY_DTYPES
    ]
    return flash + additive


CASES = {
    "parity": parity_cases,
    "speed": speed_cases,
    "memory": memory_cases,
    "window": window_cases,
    "model": model_cases,
}  # training: train.py compiles what its model launches itself, before its budget (below)


# --- estimates ------------------------------------------------------------------------------------


def estimate_parity(sizes: Sizes, rates: dict) -> float:
    return ASSUMED["process_start_s"] + sizes.parity_tests * ASSUMED["cuda_test_s"]


def estimate_speed(sizes: Sizes, rates: dict) -> float:
    total = ASSUMED["process_start_s"]
    for n in doubling(sizes.speed_min_len, sizes.speed_max_len):
        for d in sizes.speed_head_dims:
            batch, heads = max(1, sizes.speed_tokens // n), max(1, sizes.speed_hidden // d)
            for causal in (False, True):
                for impl in ATTENTION_IMPLS:
                    total += attention_point_s(batch, heads, n, d, causal, impl, rates)
    return total


def estimate_memory(sizes: Sizes, rates: dict) -> float:
    total = ASSUMED["process_start_s"]
    for n in doubling(sizes.memory_min_len, sizes.memory_max_len):
        for impl in MEMORY_IMPLS:
            h, d = sizes.memory_heads, sizes.memory_head_dim
            total += attention_point_s(1, h, n, d, True, impl, rates)
    return total


def estimate_window(sizes: Sizes, rates: dict) -> float:
    total = ASSUMED["process_start_s"]
    for n in doubling(sizes.window_min_len, sizes.window_max_len):
        h, d = sizes.window_heads, sizes.window_head_dim
        total += window_point_s(1, h, n, d, sizes.window, rates)
    return total


def estimate_model(sizes: Sizes, rates: dict) -> float:
    """Per backend and length: the model built, two warm-up steps, two steps for memory, one
    then ``do_bench`` for time; ours tunes its kernels for three maskings at each length."""
    total = ASSUMED["process_start_s"]
    for n in doubling(sizes.model_min_len, sizes.model_max_len):
        step = model_step_s(n)
        for backend in MODEL_BACKENDS:
            total += ASSUMED["model_point_setup_s"] + 5 * step + do_bench_s(step)
            if backend == "triton":
                total += 3 * tune_s([step / 50] * 3)
    return total


# train.py --attention triton compiles, before its budget, every specialisation its model
# launches (transformer/translation/training/warmup.py): for --config base's shape (8 heads of 64,
# bf16) 61, recorded on the CPU under the interpreter (tests/test_training_warmup.py checks the
# count), each with every configuration autotuning may time on an H100 (the candidates the
# launchers record for a bf16 d=64 call with arch 90: 4 forward, 3 dK/dV, 4 dQ, 1 delta).
# Recording them (72 training steps and decoding, launches recorded, not run) is assumed to take
# 10 s on the GPU.
# Counted by tests/test_training_warmup.py (slow) on the base model: the anchor shift (a launch
# argument since the score options) adds Triton's integer classes (1, multiple of 16, other) to
# the causal calls; the launcher passes 0 where nothing reads it (cross-attention).
TRAIN_WARM_SPECIALISATIONS = {"_attn_fwd": 22, "_attn_bwd_dkdv": 18, "_attn_bwd_dq": 18,
                              "attn_bwd_delta": 3}  # fmt: skip
TRAIN_WARM_CANDIDATES = {
    "_attn_fwd": 4,
    "_attn_bwd_dkdv": 3,
    "_attn_bwd_dq": 4,
    "attn_bwd_delta": 1,
}
TRAIN_WARM_BUILDS = sum(n * TRAIN_WARM_CANDIDATES[k] for k, n in TRAIN_WARM_SPECIALISATIONS.items())
TRAIN_WARM_RECORD_S = 10.0


def estimate_train_warmup(cores: int = GPU_MACHINE_CORES) -> float:
    """The triton run's kernel warm-up, outside its time budget but inside the step's."""
    return TRAIN_WARM_RECORD_S + estimate_warm(TRAIN_WARM_BUILDS, cores)


def estimate_training(sizes: Sizes, rates: dict) -> float:
    """Two runs (triton, then sdpa), each its minutes plus set-up and the final validation; the
    triton run's kernel warm-up before its budget."""
    run = ASSUMED["process_start_s"] + ASSUMED["train_setup_s"] + 60 * sizes.train_minutes
    return 2 * run + estimate_train_warmup()


ESTIMATES = {
    "parity": estimate_parity,
    "speed": estimate_speed,
    "memory": estimate_memory,
    "window": estimate_window,
    "model": estimate_model,
    "training": estimate_training,
}
# In the order they run; a plan over budget leaves them out from the end: the window benchmark
# (the newest measure, on a kernel path the speed step's full attention shares) goes first.
STEPS = ("warm", "parity", "speed", "memory", "model", "training", "window")


# --- the plan -------------------------------------------------------------------------------------


@dataclass
class Plan:
    budget_s: float
    cores: int
    sizes: Sizes
    steps: list[str]
    builds: int
    estimates: dict[str, float] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    rates: dict[str, float] = field(default_factory=lambda: dict(ASSUMED_TFLOPS))

    @property
    def total_s(self) -> float:
        return sum(self.estimates.values())

    def limit_s(self, step: str) -> float:
        """How long the step may run if every step before it takes its estimate: its share of
        the budget, in proportion to its estimate (the report shares what is left of the budget
        the same way as it goes, so time a step leaves goes to the steps after it)."""
        return self.estimates[step] * max(1.0, self.budget_s / max(self.total_s, 1e-9))


def warm_cases(steps: list[str], sizes: Sizes) -> tuple[list[Case], list[Case]]:
    """(cases warmed with every configuration autotuning may time, cases warmed with the
    launcher's first choice only: the parity tests run with autotuning off)."""
    every = [c for s in steps if s in CASES and s != "parity" for c in CASES[s](sizes)]
    first = CASES["parity"](sizes) if "parity" in steps else []
    return every, first


def estimate_warm(builds: int, cores: int) -> float:
    return WARM_START_S + SECONDS_PER_BUILD * builds / max(1, cores)


def make_plan(
    budget_s: float,
    cores: int,
    steps: list[str],
    count_builds,
    sizes: Sizes | None = None,
    rates: dict[str, float] | None = None,
) -> Plan:
    """Fit ``steps`` to ``budget_s``: shrink sizes in :data:`SHRINK_ORDER`, then drop steps from
    the end, until the estimates add up to at most the budget. ``count_builds(every, first)``
    gives the number of kernel builds the warm step compiles; ``rates``: TFLOP/s per attention
    implementation (default :data:`ASSUMED_TFLOPS`; :func:`measured_tflops` after a report)."""
    sizes = sizes or Sizes()
    rates = rates or dict(ASSUMED_TFLOPS)
    steps = [s for s in STEPS if s in steps]

    def estimate(sizes, steps):
        builds = count_builds(*warm_cases(steps, sizes)) if "warm" in steps else 0
        if sizes.device != "cuda":  # the rehearsal's toy steps on the CPU
            return builds, {s: REHEARSAL_ESTIMATES_S[s] for s in steps}
        times = {s: ESTIMATES[s](sizes, rates) for s in steps if s != "warm"}
        if "warm" in steps:
            times = {"warm": estimate_warm(builds, cores), **times}
        return builds, times

    builds, times = estimate(sizes, steps)
    for name, choices in SHRINK_ORDER if sizes.device == "cuda" else ():
        for value in choices:
            if sum(times.values()) <= budget_s:
                break
            sizes = replace(sizes, **{name: value})
            builds, times = estimate(sizes, steps)
    dropped = []
    while sum(times.values()) > budget_s and len(steps) > 1:
        dropped.append(steps.pop())
        builds, times = estimate(sizes, steps)
    return Plan(budget_s, cores, sizes, steps, builds, times, dropped, rates)


def describe(plan: Plan) -> str:
    """The plan as --dry-run prints it."""
    lines = [
        f"plan for a {plan.budget_s / 60:.1f}-minute budget, {plan.cores} CPU cores for "
        f"compiling: {plan.total_s:.0f} s estimated",
    ]
    for step in plan.steps:
        detail = ""
        if step == "warm" and plan.sizes.device != "cuda":
            detail = "the warm cases' kernel builds counted (no GPU: nothing compiled)"
        elif step == "warm":
            detail = (
                f"{plan.builds} kernel builds x {SECONDS_PER_BUILD:.1f} s ({MARGIN:g} x the "
                f"{MEASURED_CPU_S_PER_BUILD:.2f} CPU s per build measured here) / {plan.cores} "
                f"cores + {WARM_START_S:.0f} s start-up"
            )
        elif step == "speed":
            sizes = plan.sizes
            detail = (
                f"lengths {sizes.speed_min_len} to {sizes.speed_max_len}, head dims "
                f"{' and '.join(map(str, sizes.speed_head_dims))}"
            )
        elif step == "memory":
            detail = f"lengths {plan.sizes.memory_min_len} to {plan.sizes.memory_max_len}"
        elif step == "window":
            detail = (
                f"a causal window of {plan.sizes.window} against causal full attention, lengths "
                f"{plan.sizes.window_min_len} to {plan.sizes.window_max_len}"
            )
        elif step == "model":
            detail = f"lengths {plan.sizes.model_min_len} to {plan.sizes.model_max_len}"
        elif step == "training":
            detail = (
                f"{plan.sizes.train_minutes:g} min each, triton then sdpa; the triton run's "
                f"kernel warm-up ({TRAIN_WARM_BUILDS} builds) {estimate_train_warmup():.0f} s"
            )
        elif step == "parity":
            detail = f"{plan.sizes.parity_tests} CUDA tests, autotuning off"
        lines.append(
            f"  {step:<9} {plan.estimates[step]:6.0f} s  (limit {plan.limit_s(step):4.0f} s)  "
            f"{detail}"
        )
    for step in plan.dropped:
        lines.append(f"  {step:<9}   left out: does not fit the budget")
    if plan.sizes.device != "cuda":
        lines.append("rehearsal: toy sizes on the CPU, Triton's interpreter; estimates measured "
                     "on a busy 2-core machine")  # fmt: skip
        return "\n".join(lines)
    measured = "measured here before" if plan.rates != ASSUMED_TFLOPS else "assumed"
    rates = ", ".join(f"{k} {v:g}" for k, v in plan.rates.items())
    lines.append(
        "GPU-step estimates: each point's calls (do_bench: at least 8, and enough to fill its "
        f"125 ms) at TFLOP/s {measured} ({rates}), autotuning's first calls, and these "
        f"assumptions (not measured on a GPU): {ASSUMED}"
    )
    return "\n".join(lines)
