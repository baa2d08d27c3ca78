"""Masks in the flash-attention kernel, read as SDPA reads them: rows that see no key (zeros,
zero gradients, -inf log-sum-exp), the bottom-right causal triangle, key masks in every layout,
boolean and float masks of every rank and broadcast (with the float mask's gradient), a mask
constant over keys, a broadcast mask read in place with zero strides, and a 2-D mask read as
(len_q, len_k). Parity checks use the criterion of tests/flash_reference.py (kernel error
<= 2 x the naive error in the kernel's dtype + a floor, against float64).
"""

import importlib

import pytest
import torch
import torch.nn.functional as F
from flash_reference import (
    DEVICE,
    assert_close_as_flash_attention_does,
    naive_attention,
    random_inputs,
    random_key_mask,
    random_mask,
    report_largest_errors,  # noqa: F401 (autouse: -s prints the largest errors)
)

from kernels import flash_attention
from kernels.common import runtime

fa_forward = importlib.import_module("kernels.flash_attention.forward")

# The reference helpers build their inputs on the kernel_device fixture's device (devices.py).
pytestmark = pytest.mark.usefixtures("kernel_device")


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


def test_causal_mask_asked_bottom_right_is_aligned_bottom_right():
    # len_q > len_k: the first len_q - len_k queries see no key at all.
    q, k, v, _ = random_inputs(1, 2, 10, 4, 16, torch.float32)
    out = flash_attention(q, k, v, is_causal=True, alignment="bottom_right")
    assert (out[:, :, :6] == 0).all()
    reference = naive_attention(q, k, v, is_causal=True, alignment="bottom_right")
    assert torch.allclose(out, reference, atol=1e-5)
    # len_q < len_k (decoding with a cache): the last query sees every key.
    q, k, v, _ = random_inputs(1, 2, 3, 11, 16, torch.float32)
    bottom_right = torch.ones(3, 11, dtype=torch.bool, device=DEVICE).tril(diagonal=11 - 3)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bottom_right)
    ours = flash_attention(q, k, v, is_causal=True, alignment="bottom_right")
    assert torch.allclose(ours, expected, atol=1e-5)
    last = flash_attention(q[:, :, -1:], k, v, is_causal=True, alignment="bottom_right")
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_bias_at_finfo_min_hides_its_key_as_minus_inf_does_as_documented(dtype):
    """docs/sdpa.md: below about -2.36e38 a bias times log2 e overflows to -inf in the kernel's
    base-2 arithmetic, so finfo.min hides a key; a row of nothing else sees no key."""
    q, k, v, _ = random_inputs(1, 2, 9, 20, 16, torch.float32)
    bias = torch.randn(1, 2, 9, 20, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    hidden = bias.clone()
    bias[0, 0, :, 4], hidden[0, 0, :, 4] = torch.finfo(dtype).min, float("-inf")
    bias[0, 1, 2], hidden[0, 1, 2] = torch.finfo(dtype).min, float("-inf")
    out, lse = flash_attention(q, k, v, attn_mask=bias.to(dtype), return_lse=True)
    want, want_lse = flash_attention(q, k, v, attn_mask=hidden.to(dtype), return_lse=True)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    torch.testing.assert_close(lse, want_lse, rtol=0, atol=0)
    assert (out[0, 1, 2] == 0).all() and lse[0, 1, 2] == float("-inf")


def test_a_broadcast_mask_is_read_in_place_with_zero_strides():
    """Nothing of len_q x len_k is built: every launch of the forward kernel gets the caller's
    mask and stride 0 on the axes it broadcasts over (a key mask stays one value per key). On
    a GPU a call may launch more than once (tuning.pick may try candidates first), so every
    launch is checked, not "the" launch."""
    launched = []

    def spy(launch):
        launched.append(launch)
        return launch.run()

    def forward_launches():
        found = [(launch.args, launch.meta) for launch in launched]
        assert found and all(launch.kernel is fa_forward._attn_fwd for launch in launched)
        launched.clear()
        return found

    q, k, v, _ = random_inputs(2, 3, 17, 33, 16, torch.float32)
    keys = random_key_mask(2, 33)  # (2, 1, 1, 33)
    per_query = random_mask((17, 1), "float")  # one bias per query, shared by every key
    with runtime.hooked(runtime.Hook(spy)):
        flash_attention(q, k, v, attn_mask=keys)
        for args, meta in forward_launches():
            assert args[3].data_ptr() == keys.data_ptr()
            assert args[22:26] == (keys.stride(0), 0, 0, 1) and not meta["MASK_ROWS"]
        flash_attention(q, k, v, attn_mask=per_query)
        for args, meta in forward_launches():
            assert args[3].data_ptr() == per_query.data_ptr()
            assert args[22:26] == (0, 0, 1, 0) and meta["MASK_ROWS"]


def test_a_2d_mask_is_read_as_len_q_by_len_k_as_sdpa_reads_it():
    """Where batch == len_q a (batch, len_k) key mask would also fit the 2-D shape: the kernel
    reads it as SDPA does, (len_q, len_k), and the key reading needs mask[:, None, None, :]."""
    q, k, v, _ = random_inputs(3, 1, 3, 8, 16, torch.float32)
    mask = random_key_mask(3, 8, all_masked_row=False)[:, 0, 0]  # (3, 8)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(flash_attention(q, k, v, attn_mask=mask), expected, atol=1e-5)
    key_reading = flash_attention(q, k, v, attn_mask=mask[:, None, None, :])
    assert not torch.allclose(expected, key_reading, atol=1e-3)  # the two readings differ
