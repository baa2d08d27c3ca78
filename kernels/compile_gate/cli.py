"""The gate's command line: ``python -m kernels.compile_gate --help``."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

from kernels.common.warm import usable_cores
from kernels.compile_gate.cases import ARCH_NAMES, Case, ci_cases, full_cases
from kernels.compile_gate.sweep import run
from kernels.compile_gate.verdicts import failures, summary, warnings

_DESCRIPTION = (
    "Ahead-of-time compile gate: every launch the kernels make, compiled for real GPUs without one."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kernels.compile_gate",
        description=_DESCRIPTION
        + " Exit status 0 when every build compiles without spills within shared memory.",
    )
    parser.add_argument("--full", action="store_true",
                        help="every dtype x head dim x masking, and the score options in "
                        "fp16/bf16, each with every config the launcher may pick (slow: about "
                        "4,000 builds per architecture, hours on 2 cores)")  # fmt: skip
    parser.add_argument("--first-choice", action="store_true",
                        help="with --full: each call in the launcher's order until one config "
                        "compiles without spills, the config it runs with autotuning off "
                        "(about 1,500 builds per architecture, 1-1.5 h on 2 cores)")  # fmt: skip
    parser.add_argument("--arch", type=int, nargs="+", default=sorted(ARCH_NAMES),
                        help="compute capabilities to build for (default: %(default)s)")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=usable_cores(),
                        help="compiler processes (default: one per core this process may "
                        "use)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write every build's report here")
    parser.add_argument("--cache-dir", type=Path,
                        help="TRITON_CACHE_DIR to compile into (default: a fresh temporary one; "
                        "an old cache reports earlier successes without compiling)")  # fmt: skip
    parser.add_argument("--only", metavar="TEXT", action="append", default=[],
                        help="only the cases whose label contains TEXT (repeat for more), e.g. "
                        "--only 'additive_attention float16 d=16' for a quick check; labels "
                        "read 'flash_attention bfloat16 d=64 causal+key_mask (200x333)'")  # fmt: skip
    args = parser.parse_args(argv)
    unknown = sorted(set(args.arch) - set(ARCH_NAMES))
    if unknown:
        parser.error(f"--arch {unknown}: the gate builds for {sorted(ARCH_NAMES)} only")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.first_choice and not args.full:
        parser.error("--first-choice goes with --full (the CI subset chooses per case)")
    if args.only and not _chosen(ci_cases()[0] + ci_cases()[1] + full_cases(), args.only):
        parser.error(f"no case's label contains any of {args.only}")

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("unset TRITON_INTERPRET: the gate compiles, it does not interpret")
    with tempfile.TemporaryDirectory(prefix="triton-gate-") as fresh:
        os.environ["TRITON_CACHE_DIR"] = str(args.cache_dir or fresh)
        os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when unset
        if args.full and args.first_choice:
            builds = run([], _chosen(full_cases(), args.only), [], args.arch, args.jobs)
        elif args.full:
            builds = run(_chosen(full_cases(), args.only), [], args.arch, [], args.jobs)
        else:  # sm_89 builds as sm_86 does (same limits, same instructions): first choices only
            every, first = (_chosen(cases, args.only) for cases in ci_cases())
            archs_every = [a for a in args.arch if a != 89] or args.arch
            builds = run(every, first, archs_every, args.arch, args.jobs)

    print(summary(builds))
    found = failures(builds)
    for line in warnings(builds):
        print(f"warning {line}")
    for line in found:
        print(f"FAIL {line}")
    if args.json:
        args.json.write_text(json.dumps([asdict(b) for b in builds], indent=1, default=str))
    import triton

    spilled = sum(b.ok and b.local_bytes > 0 for b in builds)
    print(f"{len(builds)} builds ({spilled} spill and are passed over by the launcher), "
          f"{len(found)} failures (triton {triton.__version__})")  # fmt: skip
    return 1 if found else 0


def _chosen(cases: list[Case], only: list[str]) -> list[Case]:
    """The cases whose label contains one of ``only`` (all of them when it is empty)."""
    return [c for c in cases if not only or any(text in c.label() for text in only)]
