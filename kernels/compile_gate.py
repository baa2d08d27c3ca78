"""Ahead-of-time compile gate: every launch the kernels make, compiled for real GPUs without one.

The Triton interpreter runs kernels that no GPU could compile (a plain module global read
inside ``@triton.jit`` code is one example), so the CPU parity tests cannot tell whether the
kernels build. This gate can, on any Linux machine with the ``triton`` wheel (which ships the
compiler, ``ptxas`` and ``cuobjdump``)::

    python -m kernels.compile_gate                 # CI subset: every GPU we claim, a few shapes
    python -m kernels.compile_gate --full          # every dtype, head dim, masking and config
    python -m kernels.compile_gate --full --first-choice  # the same calls, the launcher's choice
    python -m kernels.compile_gate --help

How: each kernel's launchers run forward and backward on ``meta`` tensors (shapes, no data)
with each kernel module's ``_launch`` replaced by a recorder, :func:`kernels.launch.capability`
answering the target architecture, and (``--all-configs``) :func:`kernels.launch.pick` made to
try every configuration the launcher may choose there. Each recorded launch is specialised
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

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import operator
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from unittest import mock

ARCH_NAMES = {80: "A100", 86: "RTX 30xx / A10", 89: "RTX 40xx / L4", 90: "H100 / H200"}
DTYPES = ("float16", "bfloat16", "float32")
HEAD_DIMS = (16, 40, 64, 80, 96, 128, 160, 192, 256)
ADDITIVE_HEAD_DIMS = HEAD_DIMS[:6]  # the additive kernel takes feature sizes up to 128
# (head dim, value head dim) pairs where they differ: narrower and wider values, across widths
VALUE_HEAD_DIMS = ((64, 128), (128, 64), (40, 256), (256, 96))
MASKINGS = ("none", "key_mask", "causal", "causal+key_mask", "full_mask", "causal+bias",
            "causal+key_mask+dropout", "causal+bias+dropout")  # fmt: skip
ADDITIVE_MASKINGS = MASKINGS[:4]  # the additive kernel reads key masks only, has no dropout
# A masking with "dropout" runs flash attention with this dropout (any p > 0 compiles the same;
# seed and offset are not specialised on).
GATE_DROPOUT = (0.1, 12345, 678)

# Kernels whose matrix products are their work: on sm_90 their 16-bit products must be wgmma.
# (The fused additive kernels spend theirs on an elementwise tanh tile on CUDA cores.)
WGMMA_KERNELS = ("_attn_fwd", "_attn_bwd_dkdv", "_attn_bwd_dq")

# Kernel modules whose launches are captured; each routes every launch through `_launch`.
KERNEL_MODULES = (
    "kernels.flash_attention.launcher",
    "kernels.flash_attention.dropout",  # the keep-mask kernel that tests read the mask with
    "kernels.additive_attention.launcher",
)


@dataclass(frozen=True)
class Case:
    """One call of a public kernel function, forward and backward."""

    workload: str
    dtype: str
    head_dim: int
    masking: str
    len_q: int = 200
    len_k: int = 333
    batch: int = 2  # batch and heads matter to a build only through H's and the strides'
    heads: int = 3  # divisibility by 16 (Triton specialises integers on it)
    heads_kv: int | None = None  # of the query heads (None: as many); fewer: grouped-query
    value_head_dim: int | None = None  # v's (None: head_dim); flash attention only

    def label(self) -> str:
        gqa = "" if self.kv_heads == self.heads else f" gqa {self.heads}/{self.kv_heads}"
        if self.v_dim != self.head_dim:
            gqa += f" d_v={self.v_dim}"
        shape = f"{self.len_q}x{self.len_k}"
        if (self.batch, self.heads) != (2, 3):
            shape = f"{self.batch}x{self.heads}x{shape}"
        return f"{self.workload} {self.dtype} d={self.head_dim} {self.masking}{gqa} ({shape})"

    @property
    def v_dim(self) -> int:
        return self.head_dim if self.value_head_dim is None else self.value_head_dim

    @property
    def kv_heads(self) -> int:
        return self.heads if self.heads_kv is None else self.heads_kv


@dataclass
class Build:
    """One kernel specialisation for one architecture, and what its compile reported."""

    arch: int
    kernel: str
    module: str
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict
    cases: list = field(default_factory=list)
    ranks: dict = field(default_factory=dict)
    ok: bool = False
    error: str = ""
    shared_bytes: int = -1
    registers: int = -1
    local_bytes: int = -1
    wgmma: int = 0
    seconds: float = 0.0

    def key(self) -> str:
        return json.dumps(
            [self.arch, self.module, self.kernel, self.signature, self.constexprs,
             self.attrs, self.options],
            sort_keys=True, default=str,
        )  # fmt: skip

    def config(self) -> str:
        c, o = self.constexprs, self.options
        blocks = "x".join(str(c[n]) for n in ("BLOCK_M", "BLOCK_N") if n in c)
        return f"{blocks} w{o.get('num_warps')} s{o.get('num_stages')}"


# ------------------------------------------------------------------------------ capture


def _flash_workload(case: Case) -> None:
    """flash_attention's forward and backward launches, through its own launchers (the public
    function dispatches a PyTorch operator whose meta-tensor stand-in launches nothing), and
    with dropout the keep-mask kernel's launch for the same call."""
    import torch

    from kernels.flash_attention.dropout import NO_DROPOUT, Dropout

    fa = importlib.import_module("kernels.flash_attention.launcher")
    checks = importlib.import_module("kernels.flash_attention.checks")
    dtype = getattr(torch, case.dtype)

    def tensor(heads, n, d=case.head_dim):
        return torch.empty(case.batch, heads, n, d, device="meta", dtype=dtype)

    q = tensor(case.heads, case.len_q)
    k, v = tensor(case.kv_heads, case.len_k), tensor(case.kv_heads, case.len_k, case.v_dim)
    mask = _flash_mask(case, dtype)
    causal, scale = "causal" in case.masking, case.head_dim**-0.5
    dropout = Dropout(*GATE_DROPOUT) if "dropout" in case.masking else NO_DROPOUT
    checks._check_inputs(q, k, v, mask, scale, enable_gqa=case.kv_heads != case.heads)
    out, lse = fa._forward(q, k, v, mask, causal, scale, dropout)
    mask_grad = mask is not None and mask.is_floating_point()
    fa._backward(
        q, k, v, mask, causal, scale, out, lse, torch.empty_like(out), None, mask_grad, dropout
    )
    if dropout.p > 0:  # the same call's keep-mask, as a test reads it (dropout_keep_mask)
        keep_mask = importlib.import_module("kernels.flash_attention.dropout").dropout_keep_mask
        keep_mask(dropout.seed, dropout.offset, case.batch, case.heads, case.len_q, case.len_k,
                  dropout.p, "meta")  # fmt: skip


def _flash_mask(case: Case, dtype):
    """The attention mask a masking names: a boolean key mask (b, 1, 1, len_k), a boolean
    full mask (b, h, len_q, len_k), or a float bias shared by the batch (1, h, len_q, len_k)
    whose gradient is taken (every mask layout the kernels specialise on)."""
    import torch

    b, h, len_q, len_k = case.batch, case.heads, case.len_q, case.len_k
    if "key_mask" in case.masking:
        return torch.empty(b, 1, 1, len_k, device="meta", dtype=torch.bool)
    if "full_mask" in case.masking:
        return torch.empty(b, h, len_q, len_k, device="meta", dtype=torch.bool)
    if "bias" in case.masking:
        return torch.empty(1, h, len_q, len_k, device="meta", dtype=dtype)
    return None


def _additive_workload(case: Case) -> None:
    """additive_attention's forward and backward launches; ``head_dim`` is both the feature
    size a and the value head dim."""
    import torch

    aa = importlib.import_module("kernels.additive_attention.launcher")
    checks = importlib.import_module("kernels.additive_attention.checks")
    dtype = getattr(torch, case.dtype)

    def tensor(n):
        return torch.empty(case.batch, case.heads, n, case.head_dim, device="meta", dtype=dtype)

    qf, kf, v = tensor(case.len_q), tensor(case.len_k), tensor(case.len_k)
    w = torch.empty(case.heads, case.head_dim, device="meta", dtype=torch.float32)
    mask = None
    if "key_mask" in case.masking:
        mask = torch.empty(case.batch, 1, 1, case.len_k, device="meta", dtype=torch.bool)
    causal = "causal" in case.masking
    block_a, block_e = checks._check_inputs(qf, kf, w, v, mask)
    out, lse = aa._forward(qf, kf, w, v, mask, causal, block_a, block_e)
    aa._backward(
        qf, kf, w, v, mask, causal, block_a, block_e, out, lse, torch.empty_like(out), None
    )


WORKLOADS: dict[str, Callable[[Case], None]] = {
    "flash_attention": _flash_workload,
    "additive_attention": _additive_workload,
}


@contextmanager
def _recording(arch: int, all_configs: bool) -> Iterator[list]:
    """Kernel launches are recorded, not run, as if on a GPU of compute capability ``arch``."""
    from kernels import launch

    launches = []

    def record(module):
        def _launch(kernel, grid, *args, **meta):
            launches.append((module, kernel, args, meta))

        return _launch

    def try_every_config(key, configs, run):
        for config in configs:
            run(config)
        return configs[0]

    def first_choice(key, configs, run):
        return configs[0]

    patches = [
        mock.patch.object(launch, "capability", lambda device: arch),
        mock.patch.object(launch, "pick", try_every_config if all_configs else first_choice),
    ]
    for name in KERNEL_MODULES:
        module = importlib.import_module(name)
        if getattr(module, "_INTERPRETED", False):
            raise RuntimeError(
                "the compile gate needs compiled Triton kernels: run it without TRITON_INTERPRET"
            )
        patches.append(mock.patch.object(module, "_launch", record(name)))
    with ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        yield launches


def _specialise(module: str, kernel, args, meta, arch: int) -> Build:
    """The (signature, constexprs, attrs, options) Triton's JIT would compile this launch with."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **meta)
    options, signature, constexprs, attrs = kernel._pack_args(
        backend, meta, bound, specialization, options
    )
    return Build(
        arch=arch,
        kernel=kernel.__name__,
        module=module,
        signature=dict(signature),
        constexprs={_path_name(kernel, p): v for p, v in constexprs.items()},
        attrs={_path_name(kernel, p): v for p, v in attrs.items()},
        options={k: meta[k] for k in ("num_warps", "num_stages") if k in meta},
    )


def _path_name(kernel, path) -> str:
    return kernel.arg_names[path[0]] if len(path) == 1 else str(path)


def plan(cases: list[Case], archs: list[int], all_configs: bool) -> list[Build]:
    """Every distinct build the cases launch on these architectures (deduplicated). Each
    build's ``ranks`` holds, per (case, kernel) it serves, its place in the launcher's order of
    preference there (0 = first choice)."""
    builds: dict[str, Build] = {}
    for arch in archs:
        for case in cases:
            with _recording(arch, all_configs) as launches:
                WORKLOADS[case.workload](case)
            rank: dict[str, int] = {}
            for module, kernel, args, meta in launches:
                build = builds.setdefault(*_keyed(_specialise(module, kernel, args, meta, arch)))
                if case.label() not in build.cases:
                    build.cases.append(case.label())
                serves = f"{case.label()}|{kernel.__name__}"
                if serves not in build.ranks:
                    build.ranks[serves] = rank.setdefault(kernel.__name__, 0)
                    rank[kernel.__name__] += 1
    return list(builds.values())


def _keyed(build: Build) -> tuple[str, Build]:
    return build.key(), build


# ------------------------------------------------------------------------------ compile


def _cuobjdump() -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def _resources(cubin: bytes) -> dict[str, int]:
    """REG, STACK, SHARED, LOCAL as ``cuobjdump -res-usage`` reports them for the cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        report = subprocess.run(
            [_cuobjdump(), "-res-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    return {
        name: int(value) for name, value in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", report)
    }


def compile_build(build: Build) -> Build:
    """Compile one build and fill in what its cubin reports (or the error)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = getattr(importlib.import_module(build.module), build.kernel)
    start = time.perf_counter()
    try:
        constexprs = {(kernel.arg_names.index(n),): v for n, v in build.constexprs.items()}
        attrs = {(kernel.arg_names.index(n),): v for n, v in build.attrs.items()}
        compiled = triton.compile(
            ASTSource(kernel, build.signature, constexprs, attrs),
            target=GPUTarget("cuda", build.arch, 32),
            options=build.options,
        )
        res = _resources(compiled.asm["cubin"])
        build.registers = res.get("REG", -1)
        build.local_bytes = res.get("STACK", 0) + res.get("LOCAL", 0)
        build.shared_bytes = compiled.metadata.shared + res.get("SHARED", 0)
        build.wgmma = len(re.findall(r"wgmma\.mma_async", compiled.asm["ptx"]))
        build.ok = True
    except Exception as err:  # the gate reports every failure, it does not stop at the first
        build.error = f"{type(err).__name__}: {err}".strip()[:2000]
    build.seconds = time.perf_counter() - start
    return build


def problems(build: Build) -> list[str]:
    """Why a build fails the gate on its own (empty when it passes).

    Spills are judged per case instead (:func:`failures`): the launcher passes over a config
    whose compiled kernel spills, so one is a failure only when every config left spills.
    """
    from kernels.launch import shared_memory_limit

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


def failures(builds: list[Build]) -> list[str]:
    """Every reason the gate fails: builds that fail on their own, and (architecture, case,
    kernel) triples of 16-bit inputs for which every configuration the launcher may pick spills.
    """
    found = [
        f"sm_{b.arch} {b.kernel} {b.config()}: {'; '.join(p)}  [{b.cases[0]}]"
        for b in builds
        if (p := problems(b))
    ]
    for (arch, case, kernel), group in _spills_everywhere(builds).items():
        if not _float32(group[0]):
            spilled = ", ".join(f"{b.config()} ({b.local_bytes} B)" for b in group)
            found.append(f"sm_{arch} {kernel}: every config spills: {spilled}  [{case}]")
    return found


def warnings(builds: list[Build]) -> list[str]:
    """float32 calls whose every configuration spills: correct and slower, reported only
    (float32 on a GPU is a path for checking results; its tiles hold twice the bytes)."""
    return [
        f"sm_{arch} {kernel}: float32 spills in every config "
        f"(least {min(b.local_bytes for b in group)} B)  [{case}]"
        for (arch, case, kernel), group in _spills_everywhere(builds).items()
        if _float32(group[0])
    ]


# ------------------------------------------------------------------------------ sweeps


def ci_cases() -> tuple[list[Case], list[Case]]:
    """(cases tried with every config, cases tried with the launcher's first choice only).

    Every config is tried where it matters most: flash attention in bf16 (the models' dtype) at
    head dims 64 and 128, masked and causal at once (both masking code paths compiled). The
    other dtypes, head dims and maskings (a full boolean mask read with its own strides, a
    float bias with its gradient), grouped-query attention, the one-query decoding shape,
    dropout (with a key mask, with a float bias and its gradient, and grouped-query) and the
    additive kernels compile in the launcher's order until one config compiles without spills.
    """
    every = [Case("flash_attention", "bfloat16", d, "causal+key_mask") for d in (64, 128)]
    first = [
        Case("flash_attention", "float16", d, masking)
        for d, masking in ((16, "none"), (40, "causal"), (80, "full_mask"), (96, "causal+bias"))
    ]
    first.append(Case("flash_attention", "bfloat16", 64, "causal+key_mask", len_q=1, len_k=77))
    first.append(Case("flash_attention", "bfloat16", 128, "causal+key_mask", heads_kv=1))
    # head dims past 128 and a value head dim of its own: first choices only, a few builds
    first.append(Case("flash_attention", "bfloat16", 256, "causal+key_mask"))
    first.append(Case("flash_attention", "float16", 192, "causal+bias"))
    first.append(Case("flash_attention", "bfloat16", 64, "causal", value_head_dim=160))
    first += [
        Case("flash_attention", "bfloat16", 128, "causal+key_mask+dropout"),
        Case("flash_attention", "float16", 64, "causal+bias+dropout"),
        Case("flash_attention", "bfloat16", 64, "causal+key_mask+dropout", heads_kv=1),
    ]
    first += [Case("flash_attention", "float32", d, "causal+key_mask") for d in (64, 128)]
    first += [
        Case("additive_attention", dtype, d, masking)
        for dtype, d, masking in (
            ("bfloat16", 64, "causal+key_mask"),
            ("bfloat16", 128, "causal+key_mask"),
            ("float16", 16, "none"),
            ("float16", 40, "causal"),
            ("float16", 96, "key_mask"),
            ("float32", 64, "causal+key_mask"),
            ("float32", 128, "causal+key_mask"),
        )
    ]
    return every, first


def full_cases() -> list[Case]:
    flash = [
        Case("flash_attention", dtype, d, masking, value_head_dim=d_v)
        for dtype, (d, d_v), masking in itertools.product(
            DTYPES, [(d, None) for d in HEAD_DIMS] + list(VALUE_HEAD_DIMS), MASKINGS
        )
    ]
    additive = [
        Case("additive_attention", dtype, d, masking)
        for dtype, d, masking in itertools.product(DTYPES, ADDITIVE_HEAD_DIMS, ADDITIVE_MASKINGS)
    ]
    return flash + additive


def run(cases_every, cases_first, archs_every, archs_first, jobs, progress=True) -> list[Build]:
    """Compile what the cases launch: every config of cases_every on archs_every; everything
    else (cases_first anywhere, cases_every on the other archs_first) in the launcher's order
    until one config compiles without spills, as the launcher itself picks with autotuning off.
    Each distinct build is compiled once."""
    builds = plan(cases_every + cases_first, sorted(set(archs_every) | set(archs_first)), True)
    every = {c.label() for c in cases_every}
    eager = [b for b in builds if b.arch in archs_every and every & set(b.cases)]
    done: dict[str, Build] = {}
    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=_spawn()) as pool:
        for round_ in itertools.count():
            todo = eager if round_ == 0 else []
            todo = {b.key(): b for b in todo + _next_choices(builds, done, round_)}
            todo = [b for k, b in todo.items() if k not in done]
            if not todo:
                break
            if progress:
                print(f"round {round_}: compiling {len(todo)} builds", flush=True)
            for build in _progress(pool.map(compile_build, todo, chunksize=2), progress, len(todo)):
                done[build.key()] = build
    return list(done.values())


def _next_choices(builds: list[Build], done: dict[str, Build], round_: int) -> list[Build]:
    """The builds ranked ``round_`` for every (arch, case, kernel) with no spill-free build yet."""
    settled = set()
    for build in builds:
        compiled = done.get(build.key())
        if compiled is not None and compiled.ok and compiled.local_bytes == 0:
            settled.update((build.arch, serves) for serves in build.ranks)
    return [
        build
        for build in builds
        for serves, rank in build.ranks.items()
        if rank == round_ and (build.arch, serves) not in settled
    ]


def _spawn():
    import multiprocessing

    return multiprocessing.get_context("spawn")


def _progress(items, enabled, total=None):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, unit="build", file=sys.stderr)


def summary(builds: list[Build]) -> str:
    """A table per architecture and kernel: builds, worst shared memory, registers, failures."""
    lines = [f"{'arch':7s} {'kernel':18s} {'builds':>6s} {'max smem':>10s} {'limit':>8s} "
             f"{'max regs':>8s} {'spills':>6s} {'wgmma':>6s} {'failed':>6s}"]  # fmt: skip
    from kernels.launch import shared_memory_limit

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
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kernels.compile_gate",
        description=__doc__.split("\n\n")[0]
        + " Exit status 0 when every build compiles without spills within shared memory.",
    )
    parser.add_argument("--full", action="store_true",
                        help="every dtype x head dim x masking, each with every config the "
                        "launcher may pick (slow: about 3,000 builds per architecture, an hour "
                        "or more per architecture on 2 cores)")  # fmt: skip
    parser.add_argument("--first-choice", action="store_true",
                        help="with --full: each call in the launcher's order until one config "
                        "compiles without spills, the config it runs with autotuning off "
                        "(about 1,000 builds per architecture)")  # fmt: skip
    parser.add_argument("--arch", type=int, nargs="+", default=sorted(ARCH_NAMES),
                        help="compute capabilities to build for (default: %(default)s)")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="compiler processes (default: one per core)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write every build's report here")
    parser.add_argument("--cache-dir", type=Path,
                        help="TRITON_CACHE_DIR to compile into (default: a fresh temporary one; "
                        "an old cache reports earlier successes without compiling)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.first_choice and not args.full:
        parser.error("--first-choice goes with --full (the CI subset chooses per case)")

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("unset TRITON_INTERPRET: the gate compiles, it does not interpret")
    with tempfile.TemporaryDirectory(prefix="triton-gate-") as fresh:
        os.environ["TRITON_CACHE_DIR"] = str(args.cache_dir or fresh)
        os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when unset
        if args.full and args.first_choice:
            builds = run([], full_cases(), [], args.arch, args.jobs)
        elif args.full:
            builds = run(full_cases(), [], args.arch, [], args.jobs)
        else:  # sm_89 builds as sm_86 does (same limits, same instructions): first choices only
            every, first = ci_cases()
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


if __name__ == "__main__":
    sys.exit(main())
