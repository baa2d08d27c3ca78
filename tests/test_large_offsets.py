"""Offsets past int32: the kernels offset each (batch, head) slice's rows and
lanes in int32 unless a launch needs more (``needs_int64_offsets``), when they compile with
``LARGE_OFFSETS=True`` and compute every offset in int64.

On the CPU: the host decision at its boundary (meta tensors and strided views: nothing of 2^31
elements is allocated), that the launchers pass the flag every kernel of a call needs, that the
int64 specialisation computes exactly what the int32 one does (interpreter), and that in its
compiled form no offset is an int32 product of two run-time values (Triton IR, compiled for
sm_90 without a GPU), where the int32 specialisation has them. On a GPU (``cuda``): parity at
~47k tokens with a full 4-D mask, a float mask with its gradient and (b, n, h, d) views.
"""

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from flash_reference import max_err, naive_attention

from kernels import additive_attention, flash_attention
from kernels.common.jit import INT32_MAX, needs_int64_offsets, slice_extent

ROOT = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()
fa = importlib.import_module("kernels.flash_attention.launcher")
aa = importlib.import_module("kernels.additive_attention.launcher")
# 46,341^2 = 2^31 + 4,633: a (len_q, len_k) slice of that size is one past int32's reach.
PAST_INT32 = 46341


def meta(*shape, dtype=torch.bfloat16):
    return torch.empty(*shape, dtype=dtype, device="meta")


# ----------------------------------------------------------------------------- host decision


def test_the_largest_offset_in_int32_needs_no_int64_and_one_more_does():
    at_limit = torch.empty_strided((1, 1, 2, 2), (0, 0, INT32_MAX - 1, 1), device="meta")
    past = torch.empty_strided((1, 1, 2, 2), (0, 0, INT32_MAX, 1), device="meta")
    assert slice_extent(at_limit) == INT32_MAX and not needs_int64_offsets(at_limit)
    assert slice_extent(past) == INT32_MAX + 1 and needs_int64_offsets(past)
    assert needs_int64_offsets(None, at_limit, past) and not needs_int64_offsets(None)


def test_a_full_mask_needs_int64_offsets_from_46341_tokens_on():
    assert not needs_int64_offsets(meta(1, 1, PAST_INT32 - 1, PAST_INT32 - 1, dtype=torch.bool))
    assert needs_int64_offsets(meta(1, 1, PAST_INT32, PAST_INT32, dtype=torch.bool))
    # broadcast over queries (stride 0) or a key mask: one row per slice, never past int32
    broadcast = meta(1, 1, 1, PAST_INT32, dtype=torch.bool).expand(1, 1, PAST_INT32, PAST_INT32)
    assert not needs_int64_offsets(broadcast)


def test_batch_and_heads_do_not_count_as_the_kernels_offset_them_in_int64():
    huge = meta(4096, 64, 1024, 64)  # 2^34 elements, 2^16 per (batch, head) slice
    assert huge.numel() > INT32_MAX and not needs_int64_offsets(huge)


def test_a_bnhd_view_counts_its_row_stride_of_heads_times_head_dim():
    heads, head_dim = 32, 128  # a (b, n, h, d) tensor seen as (b, h, n, d): row stride h * d
    rows_in_int32 = (INT32_MAX - (head_dim - 1)) // (heads * head_dim) + 1
    fits = meta(1, rows_in_int32, heads, head_dim).transpose(1, 2)
    past = meta(1, rows_in_int32 + 1, heads, head_dim).transpose(1, 2)
    assert slice_extent(fits) <= INT32_MAX < slice_extent(past)
    assert not needs_int64_offsets(fits) and needs_int64_offsets(past)
    assert not needs_int64_offsets(meta(2, 0, heads, head_dim).transpose(1, 2))  # empty


# ----------------------------------------------------------------------------- the launchers


@pytest.fixture
def launches():
    """Every kernel launch as (kernel name, its LARGE_OFFSETS), recorded instead of run (the
    tensors are meta tensors: shapes and strides only), with sm_90's first choices."""
    from kernels.common import runtime

    recorded = []

    def record(launch):
        recorded.append((launch.kernel.__name__, launch.meta.get("LARGE_OFFSETS")))

    with runtime.hooked(runtime.Hook(record, arch=90, configs="first")):
        yield recorded


def flash_forward_and_backward(q, k, v, mask):
    causal, scale = False, q.shape[-1] ** -0.5
    out, lse = fa.launch_forward(q, k, v, mask, causal, scale)
    mask_grad = mask is not None and mask.is_floating_point()
    fa.launch_backward(
        q, k, v, mask, causal, scale, out, lse, torch.empty_like(out), None, mask_grad
    )


FLASH_KERNELS = {"_attn_fwd", "attn_bwd_delta", "_attn_bwd_dkdv", "_attn_bwd_dq"}


@pytest.mark.parametrize("n", [PAST_INT32 - 1, PAST_INT32])
def test_a_full_boolean_mask_past_int32_launches_every_kernel_with_int64_offsets(launches, n):
    q, k, v = meta(1, 2, n, 64), meta(1, 2, n, 64), meta(1, 2, n, 64)
    flash_forward_and_backward(q, k, v, meta(1, 2, n, n, dtype=torch.bool))
    assert {name for name, _ in launches} == FLASH_KERNELS
    assert all(large == (n == PAST_INT32) for _, large in launches), launches


def test_only_the_dq_pass_writing_a_float_masks_gradient_needs_int64_for_it(launches):
    """A (1, 1, 1, len_k) bias is small, but its gradient is computed per (query, key) pair,
    in a (len_q, len_k) buffer that the dQ pass writes."""
    n = PAST_INT32
    q, k, v = meta(1, 1, n, 16), meta(1, 1, n, 16), meta(1, 1, n, 16)
    flash_forward_and_backward(q, k, v, meta(1, 1, 1, n))
    assert dict(launches) == {
        "_attn_fwd": False,
        "attn_bwd_delta": False,
        "_attn_bwd_dkdv": False,
        "_attn_bwd_dq": True,
    }


def test_bnhd_views_past_int32_launch_both_kernels_with_int64_offsets(launches):
    heads, n = 4, 100_000  # (b, n, h, d) storage of 1,024 heads of 32: row stride 2^15
    q, k, v = (meta(1, n, 1024, 32)[:, :, :heads].transpose(1, 2) for _ in range(3))
    assert q.shape == (1, heads, n, 32) and needs_int64_offsets(q)
    flash_forward_and_backward(q, k, v, None)
    w = meta(heads, 32, dtype=torch.float32)
    out, lse = aa.launch_forward(q, k, w, v, None, True, 32, 32)
    aa.launch_backward(q, k, w, v, None, True, 32, 32, out, lse, torch.empty_like(out), None)
    additive = {"_additive_fwd", "_additive_bwd_dq", "_additive_bwd_dkdv"}
    assert {name for name, _ in launches} == FLASH_KERNELS | additive
    assert all(large for _, large in launches), launches


def test_small_calls_keep_int32_offsets(launches):
    q, k, v = meta(2, 3, 200, 64), meta(2, 3, 333, 64), meta(2, 3, 333, 64)
    flash_forward_and_backward(q, k, v, meta(1, 3, 200, 333))
    assert launches and not any(large for _, large in launches), launches


# ----------------------------------------------------------------------------- interpreter


@pytest.fixture
def forced_int64_offsets():
    """Every launch of a kernel that has LARGE_OFFSETS compiles (here: interprets) it True;
    the kernels launched so are counted."""
    from kernels.common import runtime

    forced = []

    def run_int64(launch):
        if "LARGE_OFFSETS" in launch.kernel.arg_names:
            launch.meta["LARGE_OFFSETS"] = True
            forced.append(launch.kernel.__name__)
        return launch.run()

    with runtime.hooked(runtime.Hook(run_int64)):
        yield forced


def flash_results(kernel_device, dtype):
    """out, lse and every gradient of a call with a float bias (its gradient too), GQA,
    causal masking and dropout, at lengths that run both loop stages of every pass."""
    gen = torch.Generator().manual_seed(0)
    q, k, v, dout = (
        torch.randn(shape, generator=gen).to(kernel_device, dtype)
        for shape in ((2, 4, 70, 40), (2, 2, 130, 40), (2, 2, 130, 24), (2, 4, 70, 24))
    )
    bias = torch.randn(1, 4, 70, 130, generator=gen).to(kernel_device, dtype)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, bias)]
    torch.manual_seed(3)
    out, lse = flash_attention(
        *leaves[:3], attn_mask=leaves[3], is_causal=True, enable_gqa=True, dropout_p=0.3,
        return_lse=True,
    )  # fmt: skip
    torch.autograd.backward((out, lse), (dout, torch.randn(lse.shape, generator=gen).to(lse)))
    return [out, lse, *(leaf.grad for leaf in leaves)]


def additive_results(kernel_device, dtype):
    gen = torch.Generator().manual_seed(1)
    qf, kf, w, v, dout = (
        torch.randn(shape, generator=gen).to(kernel_device, dtype)
        for shape in ((2, 3, 70, 20), (2, 3, 90, 20), (3, 20), (2, 3, 90, 24), (2, 3, 70, 24))
    )
    mask = (torch.rand(2, 1, 1, 90, generator=gen) < 0.7).to(kernel_device)
    leaves = [t.clone().requires_grad_() for t in (qf, kf, w, v)]
    out = additive_attention(*leaves, attn_mask=mask, is_causal=True)
    out.backward(dout)
    return [out, *(leaf.grad for leaf in leaves)]


@pytest.mark.parametrize(
    "results,kernels",
    [
        (flash_results, {"_attn_fwd", "attn_bwd_delta", "_attn_bwd_dkdv", "_attn_bwd_dq"}),
        (
            additive_results,
            {"_additive_fwd", "attn_bwd_delta", "_additive_bwd_dq", "_additive_bwd_dkdv"},
        ),
    ],
    ids=["flash", "additive"],
)
def test_int64_offsets_compute_exactly_what_int32_offsets_do(
    results, kernels, kernel_device, request
):
    want = results(kernel_device, torch.float32)
    forced = request.getfixturevalue("forced_int64_offsets")
    got = results(kernel_device, torch.float32)
    assert kernels <= set(forced), forced
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- compiled code

# The kernels' builds for one call of each kind, specialised as the launchers launch them, with
# LARGE_OFFSETS forced to each value, lowered to Triton IR for sm_90 (no GPU needed).
TRITON_IR = """
import json, sys
sys.path.insert(0, "tests")
from kernels.compile_gate import Case
from kernels.compile_gate.capture import plan
from test_large_offsets import triton_ir

cases = [Case("flash_attention", "bfloat16", 64, m)
         for m in ("causal+bias+dropout", "full_mask", "causal+key_mask")]
cases.append(Case("additive_attention", "bfloat16", 64, "causal+key_mask"))
irs = {}
for build in plan(cases, [90], False):
    if "LARGE_OFFSETS" not in build.constexprs:
        continue  # the dropout keep-mask kernel: its offsets are int64 already
    for large in (False, True):
        build.constexprs["LARGE_OFFSETS"] = large
        irs.setdefault(f"{build.kernel} {large}", []).append(triton_ir(build))
print(json.dumps(irs))
"""


def triton_ir(build) -> str:
    """The Triton IR (after inlining and simplification) of one gate build."""
    import triton
    from triton._C.libtriton import ir
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    kernel = getattr(importlib.import_module(build.module), build.kernel)
    index = {name: (kernel.arg_names.index(name),) for name in kernel.arg_names}
    source = ASTSource(
        kernel,
        build.signature,
        {index[n]: v for n, v in build.constexprs.items()},
        {index[n]: v for n, v in build.attrs.items()},
    )
    target = GPUTarget("cuda", build.arch, 32)
    backend = make_backend(target)
    options = backend.parse_options(dict(build.options))
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    stages = {}
    backend.add_stages(stages, options, source.language)
    module = source.make_ir(
        target, options, backend.get_codegen_implementation(options), backend.get_module_map(),
        context,
    )  # fmt: skip
    assert triton.__version__
    return str(stages["ttir"](module, {}))


def int32_products_in_offsets(triton_ir_text: str) -> list[str]:
    """The int32 multiplies of two run-time values (an index and a stride or a length; not a
    block size, which is a constant) that flow into a pointer offset (``tt.addptr``)."""
    definitions = {}
    for line in triton_ir_text.splitlines():
        if match := re.match(r"\s*(%[\w.$-]+)(?::\d+)? = (.*)", line):
            definitions[match.group(1)] = match.group(2)

    def operands(rhs):
        return [name.split("#")[0] for name in re.findall(r"%[\w.$#-]+", rhs.split(" : ")[0])]

    def is_constant(name):
        return definitions.get(name, "").startswith("arith.constant")

    found, seen = [], set()
    stack = [operands(rhs)[1] for rhs in definitions.values() if rhs.startswith("tt.addptr")]
    while stack:
        name = stack.pop()
        if name in seen or name not in definitions:
            continue
        seen.add(name)
        rhs = definitions[name]
        names = operands(rhs)
        if rhs.startswith("arith.muli") and re.search(r"(: i32|xi32>)\s*(loc\(|$)", rhs):
            if not any(is_constant(n) for n in names):
                found.append(f"{name} = {rhs.split(' loc(')[0]}")
        stack.extend(names)
    return found


def test_the_product_finder_sees_an_int32_row_offset():
    text = """
    %rows = tt.make_range {end = 64 : i32, start = 0 : i32} : tensor<64xi32> loc(#loc1)
    %c64_i32 = arith.constant 64 : i32 loc(#loc2)
    %start = arith.muli %pid, %c64_i32 : i32 loc(#loc3)
    %0 = tt.splat %stride : i32 -> tensor<64xi32> loc(#loc4)
    %1 = arith.muli %rows, %0 : tensor<64xi32> loc(#loc5)
    %2 = tt.addptr %3, %1 : tensor<64x!tt.ptr<f32>>, tensor<64xi32> loc(#loc6)
    %4 = arith.muli %rows64, %5 : tensor<64xi64> loc(#loc7)
    %6 = tt.addptr %3, %4 : tensor<64x!tt.ptr<f32>>, tensor<64xi64> loc(#loc8)
    """
    assert int32_products_in_offsets(text) == ["%1 = arith.muli %rows, %0 : tensor<64xi32>"]


def test_compiled_int64_offsets_have_no_int32_products_where_int32_offsets_do(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", TRITON_IR], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    irs = json.loads(done.stdout.strip().splitlines()[-1])
    kernels = {key.split()[0] for key in irs}
    assert kernels == {
        "_attn_fwd", "attn_bwd_delta", "_attn_bwd_dkdv", "_attn_bwd_dq",
        "_additive_fwd", "_additive_bwd_dq", "_additive_bwd_dkdv",
    }  # fmt: skip
    for kernel in kernels:
        for text in irs[f"{kernel} True"]:
            assert int32_products_in_offsets(text) == [], kernel
        # the int32 specialisation multiplies rows by strides in int32: what the check finds
        assert any(int32_products_in_offsets(text) for text in irs[f"{kernel} False"]), kernel


# ----------------------------------------------------------------------------- on a GPU

NEEDS_CUDA = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
GPU_TOKENS = 46400  # past PAST_INT32: every (len_q, len_k) slice is past int32


def chunked_reference(q, k, v, dout, mask, dtype, rows=2048):
    """naive_attention in ``dtype``: out, dq, dk, dv and a float mask's gradient, query rows a
    chunk at a time. Each row's softmax is its own, so this is naive attention itself without a
    (len_q, len_k) score matrix at once; the key-side gradients add up over the chunks."""
    k_, v_ = (t.detach().to(dtype).requires_grad_() for t in (k, v))
    outs, dqs, dmasks = [], [], []
    for start in range(0, q.shape[2], rows):
        part = slice(start, start + rows)
        q_ = q[:, :, part].detach().to(dtype).requires_grad_()
        leaves, m_ = [q_, k_, v_], None
        if mask is not None:
            m_ = mask[:, :, part].detach()
            if m_.is_floating_point():
                m_ = m_.to(dtype).requires_grad_()
                leaves.append(m_)
        out = naive_attention(q_, k_, v_, attn_mask=m_)
        grads = torch.autograd.grad(out, leaves, dout[:, :, part].to(dtype))
        k_.grad = grads[1] if k_.grad is None else k_.grad + grads[1]
        v_.grad = grads[2] if v_.grad is None else v_.grad + grads[2]
        outs.append(out.detach())
        dqs.append(grads[0])
        dmasks += grads[3:]
    results = [torch.cat(outs, 2), torch.cat(dqs, 2), k_.grad, v_.grad]
    return results + ([torch.cat(dmasks, 2)] if dmasks else [])


def chunked_max_err(a, b, rows=2048):
    """max |a - b| over (b, h, rows, cols) tensors, in float64 a chunk of rows at a time."""
    return max(
        (max_err(a[:, :, i : i + rows], b[:, :, i : i + rows]) for i in range(0, a.shape[2], rows)),
        default=0.0,
    )


def assert_within_2x_naive_error_at_scale(q, k, v, dout, mask):
    """The criterion of tests/flash_reference.py (kernel error vs float64 <= 2 x naive error in
    the same dtype + 4 ulps), for out and every gradient, at lengths where it is computed a
    chunk of query rows at a time."""
    dtype = q.dtype
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    kwargs = {}
    if mask is not None:
        kwargs["attn_mask"] = mask.detach().requires_grad_(mask.is_floating_point())
        if mask.is_floating_point():
            leaves.append(kwargs["attn_mask"])
    out = flash_attention(*leaves[:3], **kwargs)
    ours = [out.detach(), *torch.autograd.grad(out, leaves, dout)]
    del out
    exact = chunked_reference(q, k, v, dout, mask, torch.float64)
    naive = chunked_reference(q, k, v, dout, mask, dtype)
    names = ("out", "dq", "dk", "dv", "dmask")[: len(exact)]
    for name, got, ref, base in zip(names, ours, exact, naive, strict=True):
        assert torch.isfinite(got).all(), name
        err, base_err = chunked_max_err(got, ref), chunked_max_err(base, ref)
        floor = 4 * torch.finfo(dtype).eps * max(1.0, ref.abs().max().item())
        assert err <= 2 * base_err + floor, f"{name}: {err:.3g} > 2 x {base_err:.3g} + {floor:.3g}"


@pytest.mark.cuda
@NEEDS_CUDA
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_a_full_4d_mask_at_47k_tokens_matches_the_reference(kind, kernel_device):
    """A (1, 1, 46400, 46400) boolean mask, or a float one with its gradient: every (len_q,
    len_k) offset past 2^31 - 1 in the last rows (int32 would wrap there)."""
    gen = torch.Generator(device=kernel_device).manual_seed(0)
    n, d = GPU_TOKENS, 64
    q, k, v, dout = (
        torch.randn(1, 1, n, d, generator=gen, device=kernel_device, dtype=torch.bfloat16)
        for _ in range(4)
    )
    shape = (1, 1, n, n)
    if kind == "bool":
        mask = torch.rand(shape, generator=gen, device=kernel_device) < 0.7
        mask[..., -1000:, :] &= torch.arange(n, device=kernel_device) % 3 == 0
    else:
        mask = torch.randn(shape, generator=gen, device=kernel_device, dtype=torch.bfloat16)
    assert needs_int64_offsets(mask)
    assert_within_2x_naive_error_at_scale(q, k, v, dout, mask)


@pytest.mark.cuda
@NEEDS_CUDA
def test_bnhd_views_past_int32_at_47k_tokens_match_the_reference(kernel_device):
    """(b, n, h, d) storage of 512 heads of 128 seen as (b, h, n, d), two of its heads used:
    a row stride of 65,536, so rows past 32,768 are past int32."""
    gen = torch.Generator(device=kernel_device).manual_seed(1)
    n, heads = GPU_TOKENS, 2

    def bnhd():
        storage = torch.empty(1, n, 512, 128, device=kernel_device, dtype=torch.bfloat16)
        view = storage[:, :, :heads].transpose(1, 2)
        view.copy_(torch.randn(view.shape, generator=gen, device=kernel_device))
        return view

    q, k, v, dout = bnhd(), bnhd(), bnhd(), bnhd()
    assert needs_int64_offsets(q) and q.stride(2) == 512 * 128
    assert_within_2x_naive_error_at_scale(q, k, v, dout, None)
