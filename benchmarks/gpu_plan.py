"""The plan of a GPU session: which steps :mod:`benchmarks.gpu_report` runs, at which sizes, and
how long each may take, fitted to a wall-clock budget (a lent GPU machine gives about ten
minutes of commands).

Every step gets an estimate and a hard limit (its process is stopped there and recorded as
``timed_out``), so the report keeps its budget even where an estimate is wrong. Where the
estimates come from:

* ``warm`` (compile every kernel the steps launch, :mod:`benchmarks.warm_cache`): the number of
  kernel builds, counted here by the compile gate's plan (no compiling), times
  :data:`SECONDS_PER_BUILD` (CPU seconds per build measured here, doubled as a margin),
  divided by the cores (16 on the GPU machine), plus a worker's start-up.
* the GPU steps: nothing has ever been measured on a GPU here. Their estimates are counts of
  what they run times the time each unit takes *by construction*: ``do_bench`` warms up for
  25 ms and repeats for 100 ms, whatever the kernel's speed; autotuning times each candidate
  with ``do_bench(warmup=5, rep=20)``; training runs for the minutes it is given. Per-test and
  per-step costs that no design bounds are stated as assumptions (:data:`ASSUMED`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

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

# Fixed by design (triton.testing.do_bench's defaults, and kernels.common.tuning.pick's arguments).
DO_BENCH_S = 0.025 + 0.100 + 0.010  # warm-up, repeats, its first estimate of the kernel's time
TUNE_S = 4 * (0.005 + 0.020 + 0.005)  # up to 4 candidates, do_bench(warmup=5, rep=20)

# Not measured (no GPU has run this project); stated so that a reader can replace them.
ASSUMED = {
    "process_start_s": 20.0,  # python, torch and CUDA start in a fresh process
    "cuda_test_s": 1.0,  # one `pytest -m cuda` test once its kernels are compiled
    "train_setup_s": 45.0,  # tokenizer, data, model, then the final validation with beams
}

ATTENTION_IMPLS = ("naive", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "triton")
MEMORY_IMPLS = ("naive", "sdpa_flash", "triton")
MODEL_BACKENDS = 3  # naive, sdpa, triton


def doubling(start: int, stop: int) -> list[int]:
    lengths = [start]
    while lengths[-1] * 2 <= stop:
        lengths.append(lengths[-1] * 2)
    return lengths


@dataclass(frozen=True)
class Sizes:
    """What the steps measure; the planner shrinks these to fit the budget."""

    speed_max_len: int = 16384
    memory_max_len: int = 131072
    model_max_len: int = 8192
    train_minutes: float = 3.0
    parity_tests: int = 66  # `pytest -m cuda --collect-only` counted 66 (this branch)


SHRINK_ORDER = (  # what gives way first when the plan is over budget
    ("train_minutes", (3.0, 2.0, 1.5, 1.0)),
    ("speed_max_len", (16384, 8192, 4096, 2048)),
    ("model_max_len", (8192, 4096, 2048, 1024)),
    ("memory_max_len", (131072, 65536, 32768, 16384)),
)


# --- what each step launches (for warm) ---------------------------------------------------------


def speed_cases(sizes: Sizes) -> list[Case]:
    """FlashAttention's setting: 16k tokens, hidden 2048; every length is a multiple of 16, so
    one length per (head dim, causality) gives every specialisation the sweep launches."""
    return [
        Case("flash_attention", "bfloat16", d, masking, 512, 512, 16384 // 512, 2048 // d)
        for d in (64, 128)
        for masking in ("none", "causal")
    ]


def memory_cases(sizes: Sizes) -> list[Case]:
    return [Case("flash_attention", "bfloat16", 128, "causal", 1024, 1024, 1, 16)]


def model_cases(sizes: Sizes) -> list[Case]:
    """The model benchmark's model (d_model 256, 4 heads of 64, batch 8, bf16 autocast):
    encoder self-attention and cross-attention take a key mask, decoder self-attention is causal
    with one."""
    return [
        Case("flash_attention", "bfloat16", 64, masking, 256, 256, 8, 4)
        for masking in ("key_mask", "causal+key_mask")
    ]


def training_cases(sizes: Sizes) -> list[Case]:
    """train.py --config base (8 heads of 64, bf16 autocast): batches of any length, so lengths
    of both divisibility classes (32: a multiple of 16; 33: not), and one-token decoding
    (len_q = 1) in validation's greedy and beam search."""
    cases = []
    for len_q in (32, 33, 1):
        for len_k in (32, 33):
            for masking in ("key_mask", "causal+key_mask"):
                cases.append(Case("flash_attention", "bfloat16", 64, masking, len_q, len_k, 8, 8))
    return cases


def parity_cases(sizes: Sizes) -> list[Case]:
    """The compile gate's CI cases (every dtype, several head dims, both kernels): the CUDA
    parity tests cover that range with the launcher's first choice (autotuning off)."""
    from kernels.compile_gate import ci_cases

    every, first = ci_cases()
    return every + first


CASES = {
    "parity": parity_cases,
    "speed": speed_cases,
    "memory": memory_cases,
    "model": model_cases,
    "training": training_cases,
}


# --- estimates ------------------------------------------------------------------------------------


def estimate_parity(sizes: Sizes) -> float:
    return ASSUMED["process_start_s"] + sizes.parity_tests * ASSUMED["cuda_test_s"]


def estimate_speed(sizes: Sizes) -> float:
    """Per point: 3 timed passes (do_bench each) and 2 memory passes (two calls each, cheap);
    plus one autotuning per kernel, head dim, causality and length bucket."""
    lengths = doubling(512, sizes.speed_max_len)
    points = len(lengths) * 2 * 2 * len(ATTENTION_IMPLS)
    tunes = len(lengths) * 2 * 2 * 3  # forward, dK/dV and dQ kernels
    return ASSUMED["process_start_s"] + points * (3 * DO_BENCH_S + 0.05) + tunes * TUNE_S


def estimate_memory(sizes: Sizes) -> float:
    lengths = doubling(1024, sizes.memory_max_len)
    points = len(lengths) * len(MEMORY_IMPLS)
    return ASSUMED["process_start_s"] + points * (3 * DO_BENCH_S + 0.1) + len(lengths) * TUNE_S


def estimate_model(sizes: Sizes) -> float:
    lengths = doubling(256, sizes.model_max_len)
    points = len(lengths) * MODEL_BACKENDS
    return ASSUMED["process_start_s"] + points * (DO_BENCH_S + 0.5) + len(lengths) * 3 * TUNE_S


def estimate_training(sizes: Sizes) -> float:
    """Two runs (triton, then sdpa), each its minutes plus set-up and the final validation."""
    return 2 * (ASSUMED["process_start_s"] + ASSUMED["train_setup_s"] + 60 * sizes.train_minutes)


ESTIMATES = {
    "parity": estimate_parity,
    "speed": estimate_speed,
    "memory": estimate_memory,
    "model": estimate_model,
    "training": estimate_training,
}
STEPS = ("warm", "parity", "speed", "memory", "model", "training")


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

    @property
    def total_s(self) -> float:
        return sum(self.estimates.values())

    def limit_s(self, step: str) -> float:
        """How long the step may run: its estimate and a share of what the plan leaves over."""
        slack = max(0.0, self.budget_s - self.total_s)
        return self.estimates[step] + slack / max(1, len(self.steps))


def warm_cases(steps: list[str], sizes: Sizes) -> tuple[list[Case], list[Case]]:
    """(cases warmed with every configuration autotuning may time, cases warmed with the
    launcher's first choice only: the parity tests run with autotuning off)."""
    every = [c for s in steps if s in CASES and s != "parity" for c in CASES[s](sizes)]
    first = CASES["parity"](sizes) if "parity" in steps else []
    return every, first


def estimate_warm(builds: int, cores: int) -> float:
    return WARM_START_S + SECONDS_PER_BUILD * builds / max(1, cores)


def make_plan(
    budget_s: float, cores: int, steps: list[str], count_builds, sizes: Sizes | None = None
) -> Plan:
    """Fit ``steps`` to ``budget_s``: shrink sizes in :data:`SHRINK_ORDER`, then drop steps from
    the end, until the estimates add up to at most the budget. ``count_builds(every, first)``
    gives the number of kernel builds the warm step compiles."""
    sizes = sizes or Sizes()
    steps = [s for s in STEPS if s in steps]

    def estimate(sizes, steps):
        builds = count_builds(*warm_cases(steps, sizes)) if "warm" in steps else 0
        times = {s: ESTIMATES[s](sizes) for s in steps if s != "warm"}
        if "warm" in steps:
            times = {"warm": estimate_warm(builds, cores), **times}
        return builds, times

    builds, times = estimate(sizes, steps)
    for name, choices in SHRINK_ORDER:
        for value in choices:
            if sum(times.values()) <= budget_s:
                break
            sizes = replace(sizes, **{name: value})
            builds, times = estimate(sizes, steps)
    dropped = []
    while sum(times.values()) > budget_s and len(steps) > 1:
        dropped.append(steps.pop())
        builds, times = estimate(sizes, steps)
    return Plan(budget_s, cores, sizes, steps, builds, times, dropped)


def describe(plan: Plan) -> str:
    """The plan as --dry-run prints it."""
    lines = [
        f"plan for a {plan.budget_s / 60:.1f}-minute budget, {plan.cores} CPU cores for "
        f"compiling: {plan.total_s:.0f} s estimated",
    ]
    for step in plan.steps:
        detail = ""
        if step == "warm":
            detail = (
                f"{plan.builds} kernel builds x {SECONDS_PER_BUILD:.1f} s ({MARGIN:g} x the "
                f"{MEASURED_CPU_S_PER_BUILD:.2f} CPU s per build measured here) / {plan.cores} "
                f"cores + {WARM_START_S:.0f} s start-up"
            )
        elif step == "speed":
            detail = f"lengths 512 to {plan.sizes.speed_max_len}, head dims 64 and 128"
        elif step == "memory":
            detail = f"lengths 1024 to {plan.sizes.memory_max_len}"
        elif step == "model":
            detail = f"lengths 256 to {plan.sizes.model_max_len}"
        elif step == "training":
            detail = f"{plan.sizes.train_minutes:g} min each, triton then sdpa"
        elif step == "parity":
            detail = f"{plan.sizes.parity_tests} CUDA tests, autotuning off"
        lines.append(
            f"  {step:<9} {plan.estimates[step]:6.0f} s  (limit {plan.limit_s(step):4.0f} s)  "
            f"{detail}"
        )
    for step in plan.dropped:
        lines.append(f"  {step:<9}   left out: does not fit the budget")
    lines.append(
        "GPU-step estimates count what the steps run times do_bench's fixed 135 ms per timing "
        f"and these assumptions (not measured on a GPU): {ASSUMED}"
    )
    return "\n".join(lines)
