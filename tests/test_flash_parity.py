"""The Triton flash-attention kernel against independent float64 references: the output and
every gradient over a grid of lengths, head dims, dtypes and maskings, on random shapes and
masks, and against SDPA's math backend on drawn arguments (every mask rank and broadcast,
grouped-query heads, a value head dim of its own); grouped-query attention; the log-sum-exp and
its gradient; head dims 1 to 7; SDPA's default scale.

Criterion (explained in tests/flash_reference.py, as in flash-attention's own tests): the
kernel's largest error against float64 is at most twice that of naive attention run in the
kernel's dtype, plus a small floor; nothing is ever NaN. Without CUDA the kernels run under the
Triton interpreter, so shapes stay small; the ``cuda`` tests add long sequences on a GPU.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F
from flash_reference import (
    DEVICE,
    DTYPES,
    HAS_CUDA,
    SLOW,
    assert_close_as_flash_attention_does,
    masked_scores,
    max_err,
    naive_attention,
    random_inputs,
    random_key_mask,
    random_mask,
    report_largest_errors,  # noqa: F401 (autouse: -s prints the largest errors)
)
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import flash_attention

# The reference helpers build their inputs on the kernel_device fixture's device (devices.py).
pytestmark = pytest.mark.usefixtures("kernel_device")

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


def test_16_bit_gradients_allow_for_the_output_rounded_before_the_backward():
    """Hypothesis's find (seed 751): one query over 3 keys in bf16, |O| 2.4 against |dq| 0.29:
    the kernel's dq error is delta's, from O stored in bf16 (FlashAttention's backward), within
    tests/flash_reference.py's allowance for it; in float32 the kernel is exact there."""
    q, k, v, dout = random_inputs(2, 1, 1, 3, 8, torch.bfloat16, 751, 1, 16)
    assert_close_as_flash_attention_does(q, k, v, dout, reference=sdpa_math, scale=0.75)
    q, k, v, dout = (t.float() for t in (q, k, v, dout))
    assert_close_as_flash_attention_does(q, k, v, dout, reference=sdpa_math, scale=0.75)


@pytest.mark.slow
@settings(max_examples=120, deadline=None)
@given(args=sdpa_arguments())
def test_equals_sdpa_math_backend_on_many_drawn_arguments_with_every_gradient(args):
    q, k, v, dout, kwargs = args
    assert_close_as_flash_attention_does(q, k, v, dout, reference=sdpa_math, **kwargs)


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
