"""The gate's verdicts on compiled builds: failures (compile errors, shared memory over the limit,
no wgmma on sm_90, spills in every config a call may take), warnings, and a summary table."""

from __future__ import annotations

import itertools
import operator

from kernels.compile_gate.builds import Build

# Kernels whose matrix products are their work: on sm_90 their 16-bit products must be wgmma.
# (The fused additive kernels spend theirs on an elementwise tanh tile on CUDA cores.)
WGMMA_KERNELS = ("_attn_fwd", "_attn_bwd_dkdv", "_attn_bwd_dq")


def problems(build: Build) -> list[str]:
    """Why a build fails the gate on its own (empty when it passes).

    Spills are judged per case instead (:func:`failures`): the launcher passes over a config
    whose compiled kernel spills, so one is a failure only when every config left spills.
    """
    from kernels.common.tuning import shared_memory_limit

    if not build.ok:
        lines = [line.strip() for line in build.error.splitlines() if line.strip()] or ["?"]
        cause = next((line for line in lines if "Error" in line and line != lines[0]), lines[-1])
        return [f"does not compile: {lines[0]} {cause}"[:300]]
    found = []
    limit = shared_memory_limit(build.arch)
    if build.shared_bytes > limit:
        found.append(f"shared memory {build.shared_bytes} B > sm_{build.arch} limit {limit} B")
    sixteen_bit = any(t in ("*fp16", "*bf16") for t in build.signature.values())
    if build.arch == 90 and build.kernel in WGMMA_KERNELS and sixteen_bit and build.wgmma == 0:
        found.append("16-bit products on sm_90 are not wgmma")
    return found


def _spills_everywhere(builds: list[Build]) -> dict[tuple, list[Build]]:
    """(arch, case, kernel) -> its builds, where every configuration the launcher may pick spills."""
    by_case: dict[tuple, list[Build]] = {}
    for build in builds:
        for case in build.cases:
            by_case.setdefault((build.arch, case, build.kernel), []).append(build)
    return {
        key: group
        for key, group in sorted(by_case.items())
        if all(b.ok and b.local_bytes > 0 for b in group)
    }


def _float32(build: Build) -> bool:
    """Whether the call's inputs (its first pointer argument) are float32."""
    return next(t for t in build.signature.values() if t.startswith("*")) == "*fp32"


def known_spill(build: Build) -> str:
    """Why every configuration of this kind of call is allowed to spill ("" when it is not):
    float32 (a path for checking results; its tiles hold twice the bytes), and the one 16-bit
    call the full sweep found no spill-free configuration for, measured and documented in
    docs/kernel.md. Such calls run correctly, slower; the gate warns."""
    if _float32(build):
        return "float32"
    c = build.constexprs
    if (
        build.arch == 90
        and build.kernel == "_attn_bwd_dq"
        and c.get("MASK_GRAD")
        and c.get("HAS_DROPOUT")
        and max(c.get("BLOCK_DQK", 0), c.get("BLOCK_DV", 0)) > 128
    ):
        return "known: the dQ pass of a float bias's gradient with dropout at head dims > 128"
    return ""


def failures(builds: list[Build]) -> list[str]:
    """Every reason the gate fails: builds that fail on their own, and (architecture, case,
    kernel) triples of 16-bit inputs for which every configuration the launcher may pick spills
    (but the known spill, :func:`known_spill`).
    """
    found = [
        f"sm_{b.arch} {b.kernel} {b.config()}: {'; '.join(p)}  [{b.cases[0]}]"
        for b in builds
        if (p := problems(b))
    ]
    for (arch, case, kernel), group in _spills_everywhere(builds).items():
        if not known_spill(group[0]):
            spilled = ", ".join(f"{b.config()} ({b.local_bytes} B)" for b in group)
            found.append(f"sm_{arch} {kernel}: every config spills: {spilled}  [{case}]")
    return found


def warnings(builds: list[Build]) -> list[str]:
    """Calls whose every configuration spills where that is allowed (:func:`known_spill`):
    correct and slower, reported only."""
    found = []
    for (arch, case, kernel), group in _spills_everywhere(builds).items():
        if reason := known_spill(group[0]):
            what = "float32 spills" if reason == "float32" else f"spills ({reason})"
            least = min(b.local_bytes for b in group)
            found.append(f"sm_{arch} {kernel}: {what} in every config (least {least} B)  [{case}]")
    return found


def summary(builds: list[Build]) -> str:
    """A table per architecture and kernel (builds, worst shared memory, registers, failures)
    with a legend of its columns."""
    lines = [f"{'arch':7s} {'kernel':18s} {'builds':>6s} {'max smem':>10s} {'limit':>8s} "
             f"{'max regs':>8s} {'spills':>6s} {'wgmma':>6s} {'failed':>6s}"]  # fmt: skip
    from kernels.common.tuning import shared_memory_limit

    key = operator.attrgetter("arch", "kernel")
    for (arch, kernel), group in itertools.groupby(sorted(builds, key=key), key=key):
        group = list(group)
        done = [b for b in group if b.ok]
        lines.append(
            f"sm_{arch:<4d} {kernel:18s} {len(group):6d} "
            f"{max((b.shared_bytes for b in done), default=0):10d} "
            f"{shared_memory_limit(arch):8d} {max((b.registers for b in done), default=0):8d} "
            f"{sum(b.local_bytes > 0 for b in done):6d} "
            f"{sum(b.wgmma > 0 for b in done):6d} {sum(bool(problems(b)) for b in group):6d}"
        )
    return "\n".join([*lines, *SUMMARY_LEGEND])


SUMMARY_LEGEND = (
    "max smem: the most shared memory one build of the kernel takes (bytes); limit: what one",
    "  block may take on that architecture; max regs: the most registers per thread; spills:",
    "  builds that spill registers to local memory (the launcher passes over such a config",
    "  when another compiles without); wgmma: builds whose products are Hopper wgmma",
    "  instructions (on sm_90 every 16-bit build must be); failed: builds the gate fails.",
)
