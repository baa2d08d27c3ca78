"""Capturing launches: each case's own launchers run forward and backward on ``meta`` tensors as
if on a GPU of one architecture, a :class:`kernels.common.runtime.Hook` recording each launch,
which is then specialised as Triton's JIT would (its binder, for that target's backend)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from kernels.compile_gate.builds import Build
from kernels.compile_gate.cases import GATE_DROPOUT, GATE_SOFTCAP, GATE_WINDOW, Case


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
    checks.check_inputs(q, k, v, mask, scale, enable_gqa=case.kv_heads != case.heads)
    options = _flash_options(case)
    packed = _flash_packed(case) if "varlen" in case.masking else None
    if packed is not None:  # the same tensors packed: (batch * len, heads, d)
        q, k, v = (t.transpose(1, 2).reshape(-1, *t.shape[1::2]) for t in (q, k, v))
    out, lse = fa.launch_forward(q, k, v, mask, causal, scale, dropout, options, packed)
    mask_grad = mask is not None and mask.is_floating_point()
    fa.launch_backward(
        q, k, v, mask, causal, scale, out, lse, torch.empty_like(out), None, mask_grad, dropout,
        options, packed,
    )  # fmt: skip
    if dropout.p > 0:  # the same call's keep-mask, as a test reads it (dropout_keep_mask)
        keep_mask = importlib.import_module("kernels.flash_attention.dropout").dropout_keep_mask
        keep_mask(dropout.seed, dropout.offset, case.batch, case.heads, case.len_q, case.len_k,
                  dropout.p, "meta")  # fmt: skip


def _flash_packed(case: Case):
    """Packed sequences' description (varlen.Packed) for a "varlen" case: batch sequences
    whose longest are len_q and len_k (the cumulative lengths on meta: never read here)."""
    import torch

    packed = importlib.import_module("kernels.flash_attention.varlen").Packed
    cu = torch.empty(case.batch + 1, device="meta", dtype=torch.int32)
    return packed(cu, cu, case.len_q, case.len_k)


def _flash_options(case: Case):
    """The score options a masking names (kernels.flash_attention.options): "window" (64 keys
    left, 16 right; right 0 with "causal"), "bottom_right", "softcap", "alibi" (per-head
    slopes), "sinks" (float32 logits per head)."""
    import torch

    from kernels.flash_attention.options import ScoreOptions

    def per_head():
        return torch.empty(case.heads, device="meta", dtype=torch.float32)

    slopes = per_head().expand(case.batch, case.heads) if "alibi" in case.masking else None
    return ScoreOptions(
        bottom_right="bottom_right" in case.masking,
        window=GATE_WINDOW if "window" in case.masking else (-1, -1),
        softcap=GATE_SOFTCAP if "softcap" in case.masking else 0.0,
        alibi_slopes=slopes,
        sinks=per_head() if "sinks" in case.masking else None,
    )


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
    block_a, block_e = checks.check_inputs(qf, kf, w, v, mask)
    out, lse = aa.launch_forward(qf, kf, w, v, mask, causal, block_a, block_e)
    aa.launch_backward(
        qf, kf, w, v, mask, causal, block_a, block_e, out, lse, torch.empty_like(out), None
    )


WORKLOADS: dict[str, Callable[[Case], None]] = {
    "flash_attention": _flash_workload,
    "additive_attention": _additive_workload,
}


@contextmanager
def _recording(arch: int, all_configs: bool) -> Iterator[list]:
    """Kernel launches are recorded, not run, as if on a GPU of compute capability ``arch``:
    every configuration the launchers may choose (``all_configs``), or their first choice."""
    from kernels.common import runtime, warm

    if runtime.INTERPRETED:
        raise RuntimeError(
            "the compile gate needs compiled Triton kernels: run it without TRITON_INTERPRET"
        )
    with warm.recording("every" if all_configs else "first", arch=arch) as launches:
        yield launches


def _specialise(kernel, args, meta, arch: int) -> Build:
    """The (signature, constexprs, attrs, options) Triton's JIT would compile this launch with;
    the build names the module that defines the kernel."""
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
        module=kernel.__module__,
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
            for kernel, _grid, args, meta in launches:
                build = builds.setdefault(*_keyed(_specialise(kernel, args, meta, arch)))
                if case.label() not in build.cases:
                    build.cases.append(case.label())
                serves = f"{case.label()}|{kernel.__name__}"
                if serves not in build.ranks:
                    build.ranks[serves] = rank.setdefault(kernel.__name__, 0)
                    rank[kernel.__name__] += 1
    return list(builds.values())


def _keyed(build: Build) -> tuple[str, Build]:
    return build.key(), build
