"""Ahead-of-time compile gate: every launch the kernels make, compiled for real GPUs without one.

The Triton interpreter runs kernels that no GPU could compile (a plain module global read
inside ``@triton.jit`` code is one example), so the CPU parity tests cannot tell whether the
kernels build. This gate can, on any Linux machine with the ``triton`` wheel (which ships the
compiler, ``ptxas`` and ``cuobjdump``)::

    python -m kernels.compile_gate                 # CI subset: every GPU we claim, a few shapes
    python -m kernels.compile_gate --full          # every dtype, head dim, masking and config
    python -m kernels.compile_gate --full --first-choice  # the same calls, the launcher's choice
    python -m kernels.compile_gate --arch 90 --only 'additive_attention'  # a few cases, one GPU
    python -m kernels.compile_gate --help

How: each kernel's launchers run forward and backward on ``meta`` tensors (shapes, no data)
under a :class:`kernels.common.runtime.Hook` that records every launch instead of running it,
answers the target architecture (which picks the launch tables), and makes the tuner launch
every configuration it may choose there (or its first choice). Each recorded launch is specialised
as Triton's own JIT would (its binder, for the target's backend) and compiled with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))``. A build passes when it
compiles, stays within the architecture's shared memory per block, and, on sm_90 with 16-bit
inputs, runs its matrix products as Hopper ``wgmma`` instructions. Register spills (local
memory: ``cuobjdump -res-usage`` of the cubin reports ``STACK``/``LOCAL`` above 0) are judged
per call: the launcher passes over a configuration whose compiled kernel spills, so the gate
fails when every configuration the launcher may pick for a 16-bit call spills (in the CI
subset, calls tried with the launcher's first choice only must not spill at all). float32
spills are reported as warnings: float32 on a GPU is a path for checking results.

It needs a compiled (not interpreted) Triton: run it without ``TRITON_INTERPRET``. It compiles
into a fresh ``TRITON_CACHE_DIR`` unless ``--cache-dir`` is given: Triton's on-disk cache would
report an earlier success without compiling.
"""

from kernels.compile_gate.builds import Build, compile_build
from kernels.compile_gate.capture import WORKLOADS, plan
from kernels.compile_gate.cases import (
    ADDITIVE_HEAD_DIMS,
    ADDITIVE_MASKINGS,
    ARCH_NAMES,
    DTYPES,
    GATE_DROPOUT,
    HEAD_DIMS,
    MASKINGS,
    SCORE_OPTION_MASKINGS,
    VALUE_HEAD_DIMS,
    Case,
    ci_cases,
    full_cases,
)
from kernels.compile_gate.cli import main
from kernels.compile_gate.sweep import run, spawn_context
from kernels.compile_gate.verdicts import WGMMA_KERNELS, failures, problems, summary, warnings

__all__ = [
    "ADDITIVE_HEAD_DIMS", "ADDITIVE_MASKINGS", "ARCH_NAMES", "DTYPES", "GATE_DROPOUT",
    "HEAD_DIMS", "MASKINGS", "SCORE_OPTION_MASKINGS", "VALUE_HEAD_DIMS", "WGMMA_KERNELS",
    "WORKLOADS",
    "Build", "Case", "ci_cases", "compile_build", "failures", "full_cases", "main", "plan",
    "problems", "run", "spawn_context", "summary", "warnings",
]  # fmt: skip
