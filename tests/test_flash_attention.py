"""The Triton flash-attention kernel against an independent float64 reference.

Criterion (as in flash-attention's own tests): the kernel's largest error against a float64
computation of the same inputs is at most twice that of naive attention run in the kernel's
dtype, plus a small floor (see FLOOR_F32); and nothing is ever NaN. Without CUDA the kernels
run under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so shapes stay
small; the ``cuda`` tests add long sequences where a GPU is present.
"""

import importlib
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import flash_attention
from kernels.launch import LaunchConfig

# The kernel's modules (`kernels.flash_attention` as an attribute is the function, which the
# package re-exports under its own name): the launcher, where tests intercept buffers, launches
# and configurations, and the operators.
fa = importlib.import_module("kernels.flash_attention.launcher")
fn = importlib.import_module("kernels.flash_attention.function")
fa_configs = importlib.import_module("kernels.flash_attention.configs")  # the launch tables

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SLOW = pytest.mark.slow  # the long sweeps: python -m pytest -m slow


# ----------------------------------------------------------------------------- reference


def allowed_pairs(len_q, len_k, key_mask, is_causal, device):
    """Bool (b|1, h|1, len_q, len_k): which (query, key) pairs take part."""
    allowed = torch.ones(len_q, len_k, dtype=torch.bool, device=device)
    if is_causal:  # bottom-right aligned: query i sees keys j <= i + len_k - len_q
        i = torch.arange(len_q, device=device)[:, None]
        j = torch.arange(len_k, device=device)[None, :]
        allowed = j <= i + (len_k - len_q)
    allowed = allowed[None, None]
    if key_mask is not None:
        allowed = allowed & key_mask
    return allowed


def masked_scores(q, k, attn_mask, is_causal, scale):
    """Scaled scores with the mask applied as SDPA does (boolean: False hides the pair; float:
    added) and the causal triangle; (scores, which pairs take part)."""
    scores = (q @ k.transpose(-2, -1)) * scale
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        scores = scores + attn_mask.to(scores.dtype)
        attn_mask = None
    allowed = allowed_pairs(q.shape[-2], k.shape[-2], attn_mask, is_causal, q.device)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return scores, scores != float("-inf")


def naive_attention(q, k, v, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    """Textbook attention in q's dtype; a query with no allowed key gets zeros. With
    enable_gqa, k and v are repeated to q's heads (autograd sums their gradients back)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if enable_gqa:
        k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
    scores, allowed = masked_scores(q, k, attn_mask, is_causal, scale)
    scores = scores.masked_fill(~allowed.any(-1, keepdim=True), 0.0)  # no softmax of all -inf
    probs = torch.softmax(scores, dim=-1).masked_fill(~allowed, 0.0)
    return probs @ v


# ----------------------------------------------------------------------------- helpers


def random_inputs(
    batch, heads, len_q, len_k, head_dim, dtype, seed=0, heads_kv=None, value_head_dim=None
):  # fmt: skip
    """q (b, h, len_q, d), k (b, h_kv, len_k, d), v (b, h_kv, len_k, d_v), dout like the output
    (b, h, len_q, d_v): standard normal. d_v defaults to d."""
    gen = torch.Generator().manual_seed(seed)
    heads_kv = heads if heads_kv is None else heads_kv
    d_v = head_dim if value_head_dim is None else value_head_dim
    q, k, v = (
        torch.randn(batch, h, n, d, generator=gen).to(DEVICE, dtype)
        for h, n, d in (
            (heads, len_q, head_dim),
            (heads_kv, len_k, head_dim),
            (heads_kv, len_k, d_v),
        )
    )
    dout = torch.randn(batch, heads, len_q, d_v, generator=gen).to(DEVICE, dtype)
    return q, k, v, dout


def random_key_mask(batch, len_k, seed=0, all_masked_row=True):
    """(batch, 1, 1, len_k) bool, ~70% True; with batch > 1, the last row masks every key."""
    gen = torch.Generator().manual_seed(seed + 1)
    mask = torch.rand(batch, len_k, generator=gen) < 0.7
    if all_masked_row and batch > 1:
        mask[-1] = False
    return mask[:, None, None, :].to(DEVICE)


def output_and_grads(attn, q, k, v, dout, dtype, **kwargs):
    """attn run on copies of q, k, v cast to dtype; (out, dq, dk, dv) in float64, and the
    gradient of a float attn_mask (cast to dtype as well) after them."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    mask = kwargs.get("attn_mask")
    if mask is not None and mask.is_floating_point():
        kwargs = {**kwargs, "attn_mask": mask.detach().to(dtype).requires_grad_()}
        leaves.append(kwargs["attn_mask"])
    out = attn(*leaves[:3], **kwargs)
    out.backward(dout.to(dtype))
    return [t.double() for t in (out, *(leaf.grad for leaf in leaves))]


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


# Naive attention can be exact where the kernel cannot: with a single key, dq = 0 by an exact
# cancellation in softmax's backward, while the kernel's dP and rowsum(dO * O) are two different
# float32 sums. So the floor is 4 ulps of the dtype but no less than this, both relative to
# max(1, largest reference value); errors from a real bug are orders of magnitude larger.
FLOOR_F32 = 1e-5


def assert_close_as_flash_attention_does(q, k, v, dout, reference=None, **kwargs):
    """Kernel error vs float64 <= 2 x naive error in the same dtype + floor, for out and grads.
    ``reference`` (default: naive_attention) computes both the float64 and the same-dtype run."""
    dtype = q.dtype
    reference = reference or naive_attention
    exact = output_and_grads(reference, q, k, v, dout, torch.float64, **kwargs)
    naive = output_and_grads(reference, q, k, v, dout, dtype, **kwargs)
    ours = output_and_grads(flash_attention, q, k, v, dout, dtype, **kwargs)
    names = ("out", "dq", "dk", "dv", "dmask")[: len(exact)]
    for name, got, ref, base in zip(names, ours, exact, naive, strict=True):
        assert torch.isfinite(got).all(), f"{name} has NaN/Inf"
        err, base_err = max_err(got, ref), max_err(base, ref)
        scale = max(1.0, ref.abs().max().item() if ref.numel() else 0.0)
        floor = max(4 * torch.finfo(dtype).eps, FLOOR_F32) * scale
        ERRORS.setdefault((dtype, name), []).append(err)
        assert err <= 2 * base_err + floor, (
            f"{name}: kernel error {err:.3g} > 2 x naive {dtype} error {base_err:.3g} + {floor:.3g}"
        )


ERRORS = {}  # (dtype, tensor) -> kernel errors seen; printed at the end with -s


@pytest.fixture(scope="module", autouse=True)
def _report_largest_errors():
    yield
    if ERRORS:
        print("\nlargest kernel error vs float64 reference:")
        for (dtype, name), errs in sorted(ERRORS.items(), key=str):
            print(f"  {str(dtype):15s} {name:3s} {max(errs):.3g}")


# ----------------------------------------------------------------------------- parity

# (len_q, len_k, head_dim): decoding (one query), equal lengths, both ragged orders, and a
# long-ish pair; head dims include non-powers of two (40, 80). Every test run checks the small
# shapes in every dtype and masking, and one ragged shape longer than a block unmasked and with
# both masks at once; the rest of the grid runs under the slow marker.
CASES = [(1, 7, 16), (7, 7, 40), (113, 203, 64), (203, 113, 80), (256, 511, 128)]
QUICK_CASES = {(1, 7, 16), (7, 7, 40)}
QUICK_MASKINGS = {(False, False), (True, True)}  # (masked, is_causal) checked at every shape


def parity_grid():
    """(len_q, len_k, head_dim, masked, is_causal, dtype), the slow ones marked so."""
    for (len_q, len_k, head_dim), masked, is_causal, dtype in itertools.product(
        CASES, (False, True), (False, True), DTYPES
    ):
        quick = (len_q, len_k, head_dim) in QUICK_CASES or (
            (len_q, len_k) == (113, 203) and (masked, is_causal) in QUICK_MASKINGS
        )
        name = f"{len_q}-{len_k}-{head_dim}-{'keymask' if masked else 'nomask'}-" + (
            f"{'causal' if is_causal else 'full'}-{dtype}"
        )
        marks = () if quick else SLOW
        yield pytest.param(len_q, len_k, head_dim, masked, is_causal, dtype, marks=marks, id=name)


@pytest.mark.parametrize("len_q,len_k,head_dim,masked,is_causal,dtype", list(parity_grid()))
def test_output_and_grads_within_2x_naive_error_of_float64_reference(
    len_q, len_k, head_dim, masked, is_causal, dtype
):
    q, k, v, dout = random_inputs(2, 2 if len_k < 256 else 1, len_q, len_k, head_dim, dtype)
    mask = random_key_mask(2, len_k) if masked else None
    assert_close_as_flash_attention_does(q, k, v, dout, attn_mask=mask, is_causal=is_causal)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "keymask"])
@pytest.mark.parametrize(
    "len_q,len_k,head_dim", [(1024, 1024, 64), (4096, 4096, 128), (1000, 4096, 96), (4096, 1, 64)]
)
def test_long_sequences_within_2x_naive_error_on_gpu(
    len_q, len_k, head_dim, masked, is_causal, dtype
):
    q, k, v, dout = random_inputs(2, 2, len_q, len_k, head_dim, dtype)
    mask = random_key_mask(2, len_k) if masked else None
    assert_close_as_flash_attention_does(q, k, v, dout, attn_mask=mask, is_causal=is_causal)


@SLOW
@settings(max_examples=12, deadline=None)
@given(
    batch=st.integers(1, 2),
    heads=st.integers(1, 2),
    len_q=st.integers(1, 80),
    len_k=st.integers(1, 80),
    head_dim=st.sampled_from([8, 16, 24, 40, 64, 96, 128]),
    is_causal=st.booleans(),
    mask_kind=st.sampled_from(
        [
            "none",
            "4d",
            "4d-broadcast",
            "4d-per-head",
            "2d",
            "per-head-full",
            "float-key",
            "float-2d",
        ]
    ),
    dtype=st.sampled_from(DTYPES),
    scale=st.one_of(st.none(), st.floats(0.05, 1.0)),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_and_masks_match_reference(
    batch, heads, len_q, len_k, head_dim, is_causal, mask_kind, dtype, scale, seed
):
    q, k, v, dout = random_inputs(batch, heads, len_q, len_k, head_dim, dtype, seed)
    mask = random_key_mask(batch, len_k, seed, all_masked_row=seed % 2 == 0)
    if mask_kind == "4d-per-head":  # every head but the first sees every other key as well
        mask = mask.repeat(1, heads, 1, 1)
        mask[:, 1:, :, ::2] = True
    mask = {
        "none": None,
        "4d": mask,
        "4d-broadcast": mask[:1],
        "2d": random_mask((len_q, len_k), "bool", seed),
        "per-head-full": random_mask((heads, len_q, len_k), "bool", seed),
        "float-key": random_mask((batch, 1, 1, len_k), "float", seed),
        "float-2d": random_mask((len_q, len_k), "float", seed),
    }.get(mask_kind, mask)
    assert_close_as_flash_attention_does(
        q, k, v, dout, attn_mask=mask, is_causal=is_causal, scale=scale
    )


def sdpa_math(q, k, v, **kwargs):
    """F.scaled_dot_product_attention on its math backend (the reference SDPA defines)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)


@st.composite
def sdpa_arguments(draw):
    """Inputs and keyword arguments both functions take, drawn over every argument: mask rank,
    broadcast axes and dtype (bool / float with its gradient), causal, scale, grouped-query
    heads, a value head dim of its own. Every query keeps key 0 visible (SDPA gives NaN for a
    query that sees nothing); is_causal only where len_q == len_k and without a mask (SDPA
    aligns it top-left and refuses it with a mask; ours aligns bottom-right and takes both).
    dropout_p stays 0: SDPA's random numbers are not ours; dropout is checked in
    tests/test_flash_dropout.py against a float64 reference fed the kernels' own keep-mask."""
    batch = draw(st.integers(1, 2))
    heads, heads_kv = draw(st.sampled_from([(2, 2), (4, 2), (3, 1), (1, 1)]))
    len_q, len_k = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**16))
    head_dims = st.sampled_from([8, 16, 24, 40])  # v's is drawn on its own: SDPA allows d_v != d
    q, k, v, dout = random_inputs(
        batch, heads, len_q, len_k, draw(head_dims), dtype, seed, heads_kv, draw(head_dims)
    )
    kwargs = dict(scale=draw(st.one_of(st.none(), st.floats(0.05, 1.0))))
    if heads_kv != heads:
        kwargs["enable_gqa"] = True
    full = (batch, heads, len_q, len_k)
    mask_kind = draw(st.sampled_from(["none", "bool", "float"]))
    if mask_kind != "none":  # each axis kept or broadcast (size 1), rank 2 to 4
        rank = draw(st.integers(2, 4))
        shape = tuple(n if draw(st.booleans()) else 1 for n in full[4 - rank :])
        mask = random_mask(shape, mask_kind, seed)
        mask[..., 0] = True if mask_kind == "bool" else 0.0
        kwargs["attn_mask"] = mask
    elif len_q == len_k:
        kwargs["is_causal"] = draw(st.booleans())
    return q, k, v, dout, kwargs


@settings(max_examples=5, deadline=None)
@given(args=sdpa_arguments())
def test_equals_sdpa_math_backend_on_drawn_arguments_with_every_gradient(args):
    q, k, v, dout, kwargs = args
    assert_close_as_flash_attention_does(q, k, v, dout, reference=sdpa_math, **kwargs)


@pytest.mark.slow
@settings(max_examples=120, deadline=None)
@given(args=sdpa_arguments())
def test_equals_sdpa_math_backend_on_many_drawn_arguments_with_every_gradient(args):
    q, k, v, dout, kwargs = args
    assert_close_as_flash_attention_does(q, k, v, dout, reference=sdpa_math, **kwargs)


# ----------------------------------------------------------------------------- semantics


def test_query_with_every_key_masked_gets_zeros_zero_grads_and_minus_inf_lse():
    q, k, v, dout = random_inputs(2, 2, 9, 20, 40, torch.float32)
    mask = random_key_mask(2, 20)  # batch row 1 masks every key
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = flash_attention(*leaves, attn_mask=mask, return_lse=True)
    out.backward(dout)
    assert (out[1] == 0).all() and torch.isfinite(out).all()
    assert (lse[1] == float("-inf")).all() and torch.isfinite(lse[0]).all()
    for leaf in leaves:
        assert (leaf.grad[1] == 0).all() and torch.isfinite(leaf.grad).all()


def test_causal_mask_is_bottom_right_aligned():
    # len_q > len_k: the first len_q - len_k queries see no key at all.
    q, k, v, _ = random_inputs(1, 2, 10, 4, 16, torch.float32)
    out = flash_attention(q, k, v, is_causal=True)
    assert (out[:, :, :6] == 0).all()
    assert torch.allclose(out, naive_attention(q, k, v, is_causal=True), atol=1e-5)
    # len_q < len_k (decoding with a cache): the last query sees every key.
    q, k, v, _ = random_inputs(1, 2, 3, 11, 16, torch.float32)
    bottom_right = torch.ones(3, 11, dtype=torch.bool, device=DEVICE).tril(diagonal=11 - 3)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bottom_right)
    assert torch.allclose(flash_attention(q, k, v, is_causal=True), expected, atol=1e-5)
    last = flash_attention(q[:, :, -1:], k, v, is_causal=True)
    assert torch.allclose(last, expected[:, :, -1:], atol=1e-5)


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_matches_sdpa_with_equal_lengths(is_causal):
    q, k, v, _ = random_inputs(2, 3, 50, 50, 32, torch.float32)
    mask = random_key_mask(2, 50, all_masked_row=False)
    mask[..., 0] = True  # SDPA returns NaN for a causal row 0 whose only key is masked
    sdpa_mask = mask
    if is_causal:  # SDPA refuses attn_mask with is_causal; fold the triangle into its mask
        sdpa_mask = sdpa_mask & torch.ones(50, 50, dtype=torch.bool, device=DEVICE).tril()
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask)
    got = flash_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
    assert torch.allclose(got, expected, atol=1e-5)


def test_every_key_mask_layout_gives_the_same_result():
    q, k, v, _ = random_inputs(2, 3, 17, 29, 16, torch.float32)
    mask = random_key_mask(2, 29)
    expected = naive_attention(q, k, v, attn_mask=mask)
    wide = torch.zeros(2, 1, 1, 58, dtype=torch.bool, device=DEVICE)
    wide[..., ::2] = mask  # a non-contiguous view of the same mask
    for layout in (mask, wide[..., ::2], mask.expand(-1, 3, -1, -1)):
        assert torch.allclose(flash_attention(q, k, v, attn_mask=layout), expected, atol=1e-5)
    # batch dim 1 broadcasts over the batch
    row = mask[:1]
    expected = naive_attention(q, k, v, attn_mask=row.expand(2, -1, -1, -1))
    assert torch.allclose(flash_attention(q, k, v, attn_mask=row), expected, atol=1e-5)
    # a per-head key mask, (batch, heads, 1, len_k)
    per_head = torch.rand(2, 3, 1, 29, generator=torch.Generator().manual_seed(3)) < 0.5
    per_head = per_head.to(DEVICE)
    expected = naive_attention(q, k, v, attn_mask=per_head)
    assert torch.allclose(flash_attention(q, k, v, attn_mask=per_head), expected, atol=1e-5)


@pytest.mark.parametrize("heads,heads_kv", [(4, 2), (3, 1), (2, 2)], ids=str)
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_grouped_query_attention_matches_the_reference_on_repeated_keys_and_values(
    heads, heads_kv, is_causal, dtype
):
    """Query head i reads key/value head i // (h / h_kv); dK and dV are summed over its group."""
    q, k, v, dout = random_inputs(2, heads, 17, 33, 24, dtype, seed=heads, heads_kv=heads_kv)
    mask = random_mask((2, heads, 17, 33), "float", seed=heads)  # per query head
    assert_close_as_flash_attention_does(
        q, k, v, dout, attn_mask=mask, is_causal=is_causal, enable_gqa=True
    )


def random_mask(shape, kind, seed=0):
    """A boolean mask (~70% True) or a float one (standard normal, ~20% -inf) of this shape."""
    gen = torch.Generator().manual_seed(seed + 7)
    if kind == "bool":
        return (torch.rand(shape, generator=gen) < 0.7).to(DEVICE)
    bias = torch.randn(shape, generator=gen)
    return bias.masked_fill(torch.rand(shape, generator=gen) < 0.2, float("-inf")).to(DEVICE)


# As SDPA reads them, broadcast from the right against (b, h, len_q, len_k) = (2, 3, 17, 33):
# full 2-D, per key (1-D and 4-D), per query, per head, per batch and head.
MASK_SHAPES = [(17, 33), (33,), (2, 1, 1, 33), (1, 3, 17, 1), (3, 17, 33), (2, 1, 17, 33),
               (2, 3, 17, 33)]  # fmt: skip


@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("shape", MASK_SHAPES, ids=str)
def test_masks_of_every_rank_and_broadcast_match_reference_with_the_mask_gradient(shape, kind):
    q, k, v, dout = random_inputs(2, 3, 17, 33, 24, torch.float32, seed=len(shape))
    mask = random_mask(shape, kind, seed=len(shape))
    is_causal = len(shape) == 3  # with the causal triangle as well
    assert_close_as_flash_attention_does(q, k, v, dout, attn_mask=mask, is_causal=is_causal)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,kind", [((2, 3, 17, 33), "float"), ((17, 33), "bool")], ids=str)
def test_full_masks_in_16_bit_dtypes_within_2x_naive_error(shape, kind, dtype):
    q, k, v, dout = random_inputs(2, 3, 17, 33, 40, dtype, seed=3)
    assert_close_as_flash_attention_does(q, k, v, dout, attn_mask=random_mask(shape, kind, 3))


@pytest.mark.parametrize("shape", [(1, 1), (2, 3, 17, 1), (1, 3, 1, 1)], ids=str)
def test_a_mask_constant_over_keys_gets_dlse_summed_as_its_exact_gradient(shape):
    """A mask with one value per query row shifts every score of the row alike: the softmax
    (and so out) does not see it, and lse moves by it. Its gradient is exactly dlse summed over
    the broadcast axes (0 without lse in the loss; 0 for a row that sees nothing), where the sum
    of dS over keys would carry delta's 16-bit rounding once per row (the float16 (1, 1) mask
    over 2 x 3 x 17 rows below: up to ~1e-3 before, where the truth is 0). Without lse in the
    loss the gradient must be exactly 0; with it, within one float16 rounding of the float64
    sum."""
    q, k, v, dout = random_inputs(2, 3, 17, 33, 24, torch.float16, seed=9)
    gen = torch.Generator().manual_seed(10)
    bias = torch.randn(shape, generator=gen).to(DEVICE)
    if bias.numel() > 1:
        bias.view(-1)[0] = float("-inf")  # rows that see nothing
    dlse = torch.randn(2, 3, 17, generator=gen).to(DEVICE, torch.float16)
    for with_lse in (False, True):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, bias.to(torch.float16))]
        out, lse = flash_attention(*leaves[:3], attn_mask=leaves[3], return_lse=True)
        loss = (out * dout).sum()
        if with_lse:
            seen = torch.isfinite(lse)
            loss = loss + (lse[seen] * dlse[seen]).sum()
        loss.backward()
        seen = torch.isfinite(lse).double()
        full = (dlse.double() * seen if with_lse else torch.zeros_like(seen))[..., None]
        want = full.sum_to_size((1,) * (4 - len(shape)) + shape).reshape(shape)
        got = leaves[3].grad.double()
        if not with_lse:  # the softmax does not see the mask at all: exactly zero
            assert torch.equal(got, torch.zeros_like(got)), got
        else:  # a float32 sum rounded once to float16
            assert ((got - want).abs() <= torch.finfo(torch.float16).eps * want.abs()).all()


def test_rows_a_float_mask_hides_entirely_get_zeros_minus_inf_lse_and_zero_grads():
    q, k, v, dout = random_inputs(1, 2, 9, 20, 16, torch.float32)
    bias = torch.randn(1, 2, 9, 20, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    bias[0, 1, 3] = float("-inf")  # one query of head 1 sees nothing
    leaves = [t.clone().requires_grad_() for t in (q, k, v, bias)]
    out, lse = flash_attention(*leaves[:3], attn_mask=leaves[3], return_lse=True)
    out.backward(dout)
    assert (out[0, 1, 3] == 0).all() and lse[0, 1, 3] == float("-inf")
    assert torch.isfinite(out).all() and torch.isfinite(lse[0, 0]).all()
    assert (leaves[0].grad[0, 1, 3] == 0).all() and (leaves[3].grad[0, 1, 3] == 0).all()
    for leaf in leaves:
        assert torch.isfinite(leaf.grad).all()


def test_a_broadcast_mask_is_read_in_place_with_zero_strides(monkeypatch):
    """Nothing of len_q x len_k is built: the kernels get the caller's mask and stride 0 on the
    axes it broadcasts over (a key mask stays one value per key)."""
    launched = []

    def spy(kernel, grid, *args, **meta):
        launched.append((kernel, args, meta))
        return launch_for_real(kernel, grid, *args, **meta)

    launch_for_real = fa._launch
    monkeypatch.setattr(fa, "_launch", spy)
    q, k, v, _ = random_inputs(2, 3, 17, 33, 16, torch.float32)
    keys = random_key_mask(2, 33)  # (2, 1, 1, 33)
    flash_attention(q, k, v, attn_mask=keys)
    [(kernel, args, meta)] = launched
    assert kernel is fa._attn_fwd and args[3].data_ptr() == keys.data_ptr()
    assert args[22:26] == (keys.stride(0), 0, 0, 1) and not meta["MASK_ROWS"]
    per_query = random_mask((17, 1), "float")  # one bias per query, shared by every key
    launched.clear()
    flash_attention(q, k, v, attn_mask=per_query)
    assert launched[0][1][22:26] == (0, 0, 1, 0) and launched[0][2]["MASK_ROWS"]


def test_non_contiguous_inputs_and_grad_match_contiguous():
    q, k, v, dout = random_inputs(2, 3, 21, 33, 24, torch.float32)
    # (b, n, h, d) storage seen as (b, h, n, d), as a model's head split produces
    as_bnhd = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v, dout)]
    assert not as_bnhd[0].is_contiguous()
    want = output_and_grads(flash_attention, q, k, v, dout, torch.float32, is_causal=True)
    got = output_and_grads(flash_attention, *as_bnhd, torch.float32, is_causal=True)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_lse_and_its_gradient_match_logsumexp():
    q, k, v, dout = random_inputs(2, 2, 19, 37, 40, torch.float32)
    mask = random_key_mask(2, 37)
    kwargs = dict(attn_mask=mask, is_causal=True, scale=0.3)
    dlse = torch.randn(2, 2, 19, generator=torch.Generator().manual_seed(5)).to(DEVICE)

    def loss_and_grads(fn, dtype):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
        out, lse = fn(*leaves)
        seen = torch.isfinite(lse)  # -inf for the all-masked batch row
        loss = (out * dout.to(dtype)).sum() + (lse[seen] * dlse.to(dtype)[seen]).sum()
        loss.backward()
        return [lse.double(), *(leaf.grad.double() for leaf in leaves)]

    def reference(q, k, v):
        scores, allowed = masked_scores(q, k, mask, True, 0.3)
        seen = allowed.any(-1)  # logsumexp of only -inf has a NaN gradient: keep it out
        lse = torch.logsumexp(scores.masked_fill(~seen[..., None], 0.0), dim=-1)
        lse = torch.where(seen, lse, float("-inf"))
        return naive_attention(q, k, v, attn_mask=mask, is_causal=True, scale=0.3), lse

    got = loss_and_grads(lambda *t: flash_attention(*t, return_lse=True, **kwargs), torch.float32)
    want = loss_and_grads(reference, torch.float64)
    assert got[0].dtype == torch.float64 and torch.equal(torch.isinf(got[0]), torch.isinf(want[0]))
    for a, b in zip(got, want, strict=True):
        seen = torch.isfinite(b)
        assert torch.allclose(a[seen], b[seen], atol=1e-5)


def test_every_output_element_is_written(monkeypatch):
    """Every buffer the launchers allocate is pre-filled with NaN; none may survive."""

    def poisoned(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(fa, "_empty", poisoned)
    q, k, v, dout = random_inputs(2, 2, 70, 45, 40, torch.float16)
    mask = random_key_mask(2, 45)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = flash_attention(*leaves, attn_mask=mask, is_causal=True, return_lse=True)
    out.backward(dout)
    assert not lse.isnan().any()
    for t in (out, *(leaf.grad for leaf in leaves)):
        assert torch.isfinite(t).all()


# (BLOCK_M, BLOCK_N) as the launcher may pick them on a GPU: every tile shape in the launch
# tables (16-bit and float32, every kernel), plus 16x16. Lengths per shape (block_lengths) are
# the smallest that run both loop stages -- whole blocks unchecked, partial or diagonal blocks
# masked -- in every pass: a whole and a partial query tile, and a causal shift of more than a
# key block, so that some key blocks are wholly visible to a query tile; then the lengths swapped
# (the first queries see no key). Head dim 40 is padded to 64 inside the kernel.
TABLE_BLOCKS = sorted(
    {(c.block_m, c.block_n) for table in (fa_configs.CONFIGS_16BIT, fa_configs.CONFIGS_FLOAT32)
     for configs in table.values() for c in configs} | {(16, 16)}
)  # fmt: skip
# A representative few run by default (narrow queries / wide keys, the reverse, square); the
# interpreter is slow with large tiles, so the whole table is marked slow.
DEFAULT_BLOCKS = [(16, 64), (64, 32), (32, 32)]


def block_lengths(block_m, block_n):
    len_q = block_m + 3
    return [(len_q, len_q + block_n + 5), (len_q + block_n + 5, len_q)]


def assert_blocks_match_the_reference(blocks, head_dim, monkeypatch, maskings):
    monkeypatch.setattr(fa, "_configs", lambda name, q, d, dropout: [LaunchConfig(*blocks, 4, 1)])
    for len_q, len_k in block_lengths(*blocks):
        q, k, v, dout = random_inputs(2, 1, len_q, len_k, head_dim, torch.float32, seed=len_q)
        for masked, is_causal in maskings:
            mask = random_key_mask(2, len_k) if masked else None
            assert_close_as_flash_attention_does(q, k, v, dout, attn_mask=mask, is_causal=is_causal)


@pytest.mark.parametrize("head_dim", [40, 32])
@pytest.mark.parametrize("blocks", DEFAULT_BLOCKS, ids=str)
def test_launch_table_block_sizes_match_the_reference_in_both_loop_stages(
    blocks, head_dim, monkeypatch
):
    assert set(DEFAULT_BLOCKS) <= set(TABLE_BLOCKS)
    maskings = [(True, True)] if head_dim == 40 else [(False, False)]
    assert_blocks_match_the_reference(blocks, head_dim, monkeypatch, maskings)


@pytest.mark.slow
@pytest.mark.parametrize("blocks", TABLE_BLOCKS, ids=str)
def test_every_launch_table_block_size_matches_the_reference_with_every_masking(
    blocks, monkeypatch
):
    maskings = [(False, False), (False, True), (True, False), (True, True)]
    assert_blocks_match_the_reference(blocks, 40, monkeypatch, maskings)


def test_empty_lengths():
    q, k, v, _ = random_inputs(1, 2, 5, 0, 16, torch.float32)
    out, lse = flash_attention(q, k, v, return_lse=True)
    assert (out == 0).all() and (lse == float("-inf")).all()
    q, k, v, _ = random_inputs(1, 2, 0, 5, 16, torch.float32)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = flash_attention(*leaves)
    out.sum().backward()
    assert out.shape == (1, 2, 0, 16) and (leaves[1].grad == 0).all()


@pytest.mark.parametrize("head_dim", [40, 7])
def test_default_scale_is_sdpas_default_scale(head_dim):
    q, k, v, _ = random_inputs(1, 2, 6, 9, head_dim, torch.float32)
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    assert max_err(flash_attention(q, k, v), expected) < 1e-5
    unscaled = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=1.0)
    assert max_err(unscaled, expected) > 1e-2  # the scale matters for these inputs


@pytest.mark.parametrize("head_dim", range(1, 8))
def test_head_dims_1_to_7_within_2x_naive_error(head_dim):
    q, k, v, dout = random_inputs(2, 1, 9, 13, head_dim, torch.float32, seed=head_dim)
    mask = random_key_mask(2, 13)
    assert_close_as_flash_attention_does(q, k, v, dout, attn_mask=mask, is_causal=True)


@pytest.mark.parametrize("batch,heads", [(0, 2), (2, 0), (0, 0)])
def test_batch_or_heads_of_zero_give_empty_outputs_and_gradients(batch, heads, monkeypatch):
    """Nothing is launched on an empty grid (a GPU refuses a grid dimension of 0)."""
    from triton.runtime.jit import KernelInterface

    grids, getitem = [], KernelInterface.__getitem__
    monkeypatch.setattr(
        KernelInterface,
        "__getitem__",
        lambda kernel, grid: grids.append(grid) or getitem(kernel, grid),
    )
    q, k, v, dout = random_inputs(batch, heads, 5, 7, 16, torch.float32)
    mask = torch.ones(batch, 1, 1, 7, dtype=torch.bool, device=DEVICE)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = flash_attention(*leaves, attn_mask=mask, is_causal=True, return_lse=True)
    out.backward(dout)
    assert out.shape == (batch, heads, 5, 16) and lse.shape == (batch, heads, 5)
    assert [leaf.grad.shape for leaf in leaves] == [t.shape for t in (q, k, v)]
    assert grids == []  # every grid has batch * heads = 0 programs


# ----------------------------------------------------------------------------- bad input


def _bad_inputs():
    q, k, v, _ = random_inputs(2, 2, 5, 6, 16, torch.float32)
    mask = torch.ones(2, 1, 1, 6, dtype=torch.bool, device=DEVICE)
    return [
        ("rank", (q[0], k, v), {}, ValueError, "rank 4"),
        ("batch", (q, k[:1], v[:1]), {}, ValueError, "share the batch"),
        ("kv-heads", (q, k, v[:, :1]), {}, ValueError, "k, v the heads"),
        ("gqa-off", (q, k[:, :1], v[:, :1]), {}, ValueError, "enable_gqa=True"),
        ("gqa-not-dividing", (torch.zeros(1, 3, 2, 16), *[torch.zeros(1, 2, 2, 16)] * 2), {"enable_gqa": True}, ValueError, "divide"),
        ("dropout-above-1", (q, k, v), {"dropout_p": 1.5}, ValueError, r"dropout_p must be in \[0, 1\]"),
        ("kv-len", (q, k, v[:, :, :5]), {}, ValueError, "same length"),
        ("head-dim", (q, k[..., :8], v), {}, ValueError, "head dims differ"),
        ("too-wide", [torch.zeros(1, 1, 2, 257, device=DEVICE)] * 3, {}, ValueError, "head dim 257"),
        ("mixed-dtype", (q, k.half(), v), {}, TypeError, "one dtype"),
        ("float64", (q.double(), k.double(), v.double()), {}, TypeError, "float64"),
        ("not-tensor", (q, k.tolist(), v), {}, TypeError, "k must be a torch.Tensor"),
        ("mask-dtype", (q, k, v), {"attn_mask": mask.int()}, TypeError, "torch.bool"),
        ("mask-float64", (q, k, v), {"attn_mask": mask.double()}, TypeError, "added to the scores"),
        ("mask-len", (q, k, v), {"attn_mask": mask[..., :5]}, ValueError, "does not broadcast"),
        ("mask-batch", (q, k, v), {"attn_mask": torch.ones(3, 1, 1, 6, dtype=torch.bool, device=DEVICE)}, ValueError, "does not broadcast"),
        ("mask-heads", (q, k, v), {"attn_mask": torch.ones(2, 3, 1, 6, dtype=torch.bool, device=DEVICE)}, ValueError, "does not broadcast"),
        ("mask-len-q", (q, k, v), {"attn_mask": torch.ones(2, 1, 4, 6, dtype=torch.bool, device=DEVICE)}, ValueError, "does not broadcast"),
        ("mask-rank-5", (q, k, v), {"attn_mask": mask[None]}, ValueError, "does not broadcast"),
        ("mask-2d-key-padding", (q, k, v), {"attn_mask": mask[:, 0, 0]}, ValueError, r"2-D mask is \(len_q, len_k\)"),
        ("mask-list", (q, k, v), {"attn_mask": mask.tolist()}, TypeError, "attn_mask must be a torch.Tensor"),
        ("scale-nan", (q, k, v), {"scale": float("nan")}, ValueError, "scale must be finite, got nan"),
        ("scale-inf", (q, k, v), {"scale": float("inf")}, ValueError, "scale must be finite, got inf"),
        ("scale-tensor-inf", (q, k, v), {"scale": torch.tensor(-float("inf"))}, ValueError, "scale must be finite"),
    ]  # fmt: skip


@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda c: c[0])
def test_bad_input_raises_a_clear_error_before_any_launch(case, monkeypatch):
    _, args, kwargs, error, message = case

    def no_launch(*a, **kw):
        raise AssertionError("a kernel was launched")

    monkeypatch.setattr(fa, "_launch", no_launch)
    with pytest.raises(error, match=message):
        flash_attention(*args, **kwargs)


def test_a_2d_mask_is_read_as_len_q_by_len_k_as_sdpa_reads_it():
    """Where batch == len_q a (batch, len_k) key mask would also fit the 2-D shape: the kernel
    reads it as SDPA does, (len_q, len_k), and the key reading needs mask[:, None, None, :]."""
    q, k, v, _ = random_inputs(3, 1, 3, 8, 16, torch.float32)
    mask = random_key_mask(3, 8, all_masked_row=False)[:, 0, 0]  # (3, 8)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(flash_attention(q, k, v, attn_mask=mask), expected, atol=1e-5)
    key_reading = flash_attention(q, k, v, attn_mask=mask[:, None, None, :])
    assert not torch.allclose(expected, key_reading, atol=1e-3)  # the two readings differ


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_mixed_devices_raise_on_gpu():
    q, k, v, _ = random_inputs(1, 1, 4, 4, 16, torch.float32)
    with pytest.raises(ValueError, match="one device"):
        flash_attention(q, k.cpu(), v)


def test_import_without_triton_and_cpu_without_interpreter_raise_runtime_errors():
    script = """
import os, sys, torch
sys.modules["triton"] = None  # as on a machine without Triton
import kernels
try:
    kernels.flash_attention(*[torch.zeros(1, 1, 2, 16)] * 3)
except RuntimeError as err:
    assert "Triton" in str(err), err
else:
    raise SystemExit("no RuntimeError without triton")
for name in [m for m in sys.modules if m == "kernels" or m.startswith("kernels.")]:
    del sys.modules[name]
del sys.modules["triton"]
os.environ.pop("TRITON_INTERPRET", None)
from kernels import flash_attention
from kernels.launch import LaunchConfig
try:
    flash_attention(*[torch.zeros(1, 1, 2, 16)] * 3)
except RuntimeError as err:
    assert "TRITON_INTERPRET=1" in str(err), err
else:
    raise SystemExit("no RuntimeError for CPU tensors without the interpreter")
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr + done.stdout


# ----------------------------------------------------------------------------- the operator


@pytest.mark.parametrize(
    "len_q,len_k,mask_kind,is_causal,heads_kv",
    [
        (7, 5, "keys", True, 3),
        pytest.param(5, 13, None, False, 1, marks=SLOW),
        pytest.param(1, 9, "keys", False, 3, marks=SLOW),
        (6, 11, "float", True, 1),
    ],
    ids=["ragged-masked-causal", "ragged-gqa", "one-query-masked", "float-mask-grad-gqa"],
)
def test_forward_and_backward_operators_pass_opcheck(len_q, len_k, mask_kind, is_causal, heads_kv):
    """torch.library.opcheck: schema, fake implementation vs the real one, autograd
    registration (the float mask's gradient included), and AOT dispatch with dynamic shapes
    (what torch.compile relies on)."""
    q, k, v, dout = random_inputs(2, 3, len_q, len_k, 24, torch.float32, heads_kv=heads_kv)
    mask = {
        None: None,
        "keys": random_key_mask(2, len_k),
        "float": random_mask((3, len_q, len_k), "float"),
    }[mask_kind]
    mask_grad = mask_kind == "float"
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    if mask_grad:
        mask = mask.clone().requires_grad_()
    torch.library.opcheck(fn._forward_op, (*leaves, mask, is_causal, 0.3))
    # (the backward is not differentiable itself: no double backward, as in flash-attention)
    detached = None if mask is None else mask.detach()
    out, lse = fn._forward_op(q, k, v, detached, is_causal, 0.3)
    dlse = torch.randn(lse.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    args = (q, k, v, detached, is_causal, 0.3, out, lse, dout, dlse, mask_grad)
    torch.library.opcheck(fn._backward_op, args)


def _metadata(t):
    return t.shape, t.dtype, t.stride(), t.device.type


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("len_q,len_k", [(7, 13), (13, 7), (1, 1)])
def test_fake_implementation_gives_the_real_shapes_dtypes_and_strides(len_q, len_k, dtype):
    """The compiler only sees the fake functions: they must describe what the kernels return,
    for odd lengths, len_q != len_k, with the log-sum-exp, and through the backward."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    q, k, v, dout = random_inputs(2, 3, len_q, len_k, 40, dtype)
    mask = random_key_mask(2, len_k)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    real = flash_attention(*leaves, attn_mask=mask, is_causal=True, return_lse=True)
    torch.autograd.backward(real, (dout, torch.zeros_like(real[1])))
    real_grads = [leaf.grad for leaf in leaves]

    with FakeTensorMode() as mode:
        fake_inputs = [mode.from_tensor(t) for t in (q, k, v, dout, mask)]
        fq, fk, fv = (t.requires_grad_() for t in fake_inputs[:3])
        fake = flash_attention(
            fq, fk, fv, attn_mask=fake_inputs[4], is_causal=True, return_lse=True
        )
        fake_grads = torch.autograd.grad(fake[0], (fq, fk, fv), fake_inputs[3])
    assert fake[1].dtype == torch.float32 and fake[1].shape == (2, 3, len_q)
    for got, want in zip((*fake, *fake_grads), (*real, *real_grads), strict=True):
        assert _metadata(got) == _metadata(want)
