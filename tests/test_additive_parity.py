"""The fused additive-attention kernel against an independent float64 reference: the output and
every gradient over lengths, feature sizes, value dims, dtypes and maskings, on random shapes
and masks, with a float32 score vector beside bfloat16 features, and the log-sum-exp with its
gradient.

Criterion (tests/additive_reference.py, as for the flash kernel): the kernel's largest error
against float64 is at most twice that of the naive additive path run in the kernel's dtype,
plus a small floor; nothing is ever NaN. Without CUDA the kernels run under the Triton
interpreter, so shapes and feature sizes stay small.
"""

import pytest
import torch
from additive_reference import (
    DEVICE,
    DTYPES,
    FLOOR_F32,
    HAS_CUDA,
    NAMES,
    SLOW,
    additive_scores,
    allowed_pairs,
    assert_close_as_flash_attention_does,
    max_err,
    naive_additive,
    random_inputs,
    random_key_mask,
    report_largest_errors,  # noqa: F401 (autouse: -s prints the largest errors)
)
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import additive_attention

# The reference helpers build their inputs on the kernel_device fixture's device (devices.py).
pytestmark = pytest.mark.usefixtures("kernel_device")

# ----------------------------------------------------------------------------- parity

# (len_q, len_k, a, value_dim): decoding (one query), equal odd lengths, and ragged
# cross-attention both ways across several 64-blocks; feature sizes and value dims that are
# not powers of two. Every test run checks decoding and one ragged pair; the equal lengths and
# the other ragged order run under the slow marker.
CASES = [
    (1, 7, 8, 16),
    pytest.param(37, 37, 12, 24, marks=SLOW),
    pytest.param(70, 100, 8, 40, marks=SLOW),
    (100, 70, 5, 16),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("masked,is_causal", [(False, False), (True, True)])
@pytest.mark.parametrize("len_q,len_k,a,value_dim", CASES)
def test_output_and_grads_within_2x_naive_error_of_float64_reference(
    len_q, len_k, a, value_dim, masked, is_causal, dtype
):
    qf, kf, w, v, dout = random_inputs(2, 2, len_q, len_k, a, value_dim, dtype)
    mask = random_key_mask(2, len_k) if masked else None
    assert_close_as_flash_attention_does(qf, kf, w, v, dout, attn_mask=mask, is_causal=is_causal)


@SLOW
def test_causal_without_mask_and_a_wide_feature_size_within_2x_naive_error():
    qf, kf, w, v, dout = random_inputs(1, 1, 65, 65, 64, 64, torch.float32, seed=7)
    assert_close_as_flash_attention_does(qf, kf, w, v, dout, is_causal=True)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("len_q,len_k,a", [(1024, 1024, 64), (1000, 2048, 128), (2048, 1, 32)])
def test_long_sequences_within_2x_naive_error_on_gpu(len_q, len_k, a, is_causal, dtype):
    qf, kf, w, v, dout = random_inputs(1, 2, len_q, len_k, a, 64, dtype)
    mask = random_key_mask(1, len_k)
    assert_close_as_flash_attention_does(qf, kf, w, v, dout, attn_mask=mask, is_causal=is_causal)


@SLOW
@settings(max_examples=5, deadline=None)
@given(
    batch=st.integers(1, 2),
    heads=st.integers(1, 2),
    len_q=st.integers(1, 70),
    len_k=st.integers(1, 70),
    a=st.integers(1, 20),
    value_dim=st.sampled_from([1, 8, 24, 64]),
    is_causal=st.booleans(),
    mask_kind=st.sampled_from(["none", "4d", "4d-broadcast"]),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_and_masks_match_reference(
    batch, heads, len_q, len_k, a, value_dim, is_causal, mask_kind, dtype, seed
):
    qf, kf, w, v, dout = random_inputs(batch, heads, len_q, len_k, a, value_dim, dtype, seed)
    mask = random_key_mask(batch, len_k, seed, all_masked_row=seed % 2 == 0)
    mask = {"none": None, "4d": mask, "4d-broadcast": mask[:1]}[mask_kind]
    assert_close_as_flash_attention_does(qf, kf, w, v, dout, attn_mask=mask, is_causal=is_causal)


def test_float32_score_weight_with_bfloat16_features_within_2x_naive_bfloat16_error():
    """Under autocast the score vector stays a float32 parameter: its gradient is float32, and
    every output is within twice the error of the naive path in bfloat16 (which rounds w)."""
    qf, kf, _, v, dout = random_inputs(1, 2, 9, 13, 8, 16, torch.bfloat16)
    w = torch.randn(2, 8, generator=torch.Generator().manual_seed(4)).to(DEVICE)

    def run(attn, dtype):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (qf, kf, v)]
        w_leaf = w.detach().to(torch.float64 if dtype == torch.float64 else w.dtype)
        w_leaf.requires_grad_()
        out = attn(leaves[0], leaves[1], w_leaf, leaves[2])
        out.backward(dout.to(dtype))
        grads = [leaves[0].grad, leaves[1].grad, w_leaf.grad, leaves[2].grad]
        return out, grads

    out, grads = run(additive_attention, torch.bfloat16)
    assert grads[2].dtype == torch.float32
    exact = [t.double() for t in (lambda o, g: [o, *g])(*run(naive_additive, torch.float64))]
    naive = [t.double() for t in (lambda o, g: [o, *g])(*run(naive_additive, torch.bfloat16))]
    ours = [out, *grads]
    for name, got, ref, base in zip(NAMES, ours, exact, naive, strict=True):
        err, base_err = max_err(got, ref), max_err(base, ref)
        # 4 ulps of the tensor's own dtype, as in the suite: float32 for dw, bfloat16 elsewhere
        ulps = max(4 * torch.finfo(got.dtype).eps, FLOOR_F32)
        floor = ulps * max(1.0, ref.abs().max().item())
        assert err <= 2 * base_err + floor, f"{name}: {err:.3g} > 2 x {base_err:.3g} + {floor:.3g}"


@pytest.mark.parametrize("size", range(1, 8))
def test_feature_sizes_and_value_dims_1_to_7_within_2x_naive_error(size):
    qf, kf, w, v, dout = random_inputs(2, 1, 9, 13, size, size, torch.float32, seed=size)
    mask = random_key_mask(2, 13)
    assert_close_as_flash_attention_does(qf, kf, w, v, dout, attn_mask=mask, is_causal=True)


@pytest.mark.parametrize("a,value_dim", [(128, 16), (8, 128), (128, 128)])
def test_feature_size_and_value_dim_of_128_within_2x_naive_error(a, value_dim):
    qf, kf, w, v, dout = random_inputs(1, 1, 5, 9, a, value_dim, torch.float32, seed=a)
    mask = random_key_mask(1, 9)
    assert_close_as_flash_attention_does(qf, kf, w, v, dout, attn_mask=mask, is_causal=True)


def test_lse_and_its_gradient_match_logsumexp():
    qf, kf, w, v, dout = random_inputs(2, 2, 19, 37, 8, 16, torch.float32)
    mask = random_key_mask(2, 37)
    dlse = torch.randn(2, 2, 19, generator=torch.Generator().manual_seed(5)).to(DEVICE)

    def loss_and_grads(fn, dtype):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (qf, kf, w, v)]
        out, lse = fn(*leaves)
        seen = torch.isfinite(lse)  # -inf for the all-masked batch row
        loss = (out * dout.to(dtype)).sum() + (lse[seen] * dlse.to(dtype)[seen]).sum()
        loss.backward()
        return [lse.double(), *(leaf.grad.double() for leaf in leaves)]

    def reference(qf, kf, w, v):
        allowed = allowed_pairs(19, 37, mask, True, qf.device)
        scores = additive_scores(qf, kf, w).masked_fill(~allowed, float("-inf"))
        seen = allowed.any(-1)  # logsumexp of only -inf has a NaN gradient: keep it out
        lse = torch.logsumexp(scores.masked_fill(~seen[..., None], 0.0), dim=-1)
        lse = torch.where(seen, lse, float("-inf"))
        return naive_additive(qf, kf, w, v, attn_mask=mask, is_causal=True), lse

    def ours(*t):
        return additive_attention(*t, attn_mask=mask, is_causal=True, return_lse=True)

    got = loss_and_grads(ours, torch.float32)
    want = loss_and_grads(reference, torch.float64)
    assert torch.equal(torch.isinf(got[0]), torch.isinf(want[0]))
    for a, b in zip(got, want, strict=True):
        seen = torch.isfinite(b)
        assert torch.allclose(a[seen], b[seen], atol=2e-5)
