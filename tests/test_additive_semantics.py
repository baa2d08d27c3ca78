"""What the fused additive-attention kernel computes, beyond its parity: rows that see no key
(zeros, zero gradients, -inf log-sum-exp), the bottom-right causal triangle, key masks in every
layout, and the laws of attention (permuting queries permutes the output, permuting keys and
values together changes nothing, a future token changes no earlier causal output).
"""

import pytest
import torch
from additive_reference import (
    DEVICE,
    naive_additive,
    random_inputs,
    random_key_mask,
)

from kernels import additive_attention

# The reference helpers build their inputs on the kernel_device fixture's device (devices.py).
pytestmark = pytest.mark.usefixtures("kernel_device")


# ----------------------------------------------------------------------------- semantics


def test_query_with_every_key_masked_gets_zeros_zero_grads_and_minus_inf_lse():
    qf, kf, w, v, dout = random_inputs(2, 2, 9, 20, 8, 16, torch.float32)
    mask = random_key_mask(2, 20)  # batch row 1 masks every key
    leaves = [t.clone().requires_grad_() for t in (qf, kf, w, v)]
    out, lse = additive_attention(*leaves, attn_mask=mask, return_lse=True)
    out.backward(dout)
    assert (out[1] == 0).all() and torch.isfinite(out).all()
    assert (lse[1] == float("-inf")).all() and torch.isfinite(lse[0]).all()
    qf_grad, kf_grad, w_grad, v_grad = (leaf.grad for leaf in leaves)
    for grad in (qf_grad, kf_grad, v_grad):
        assert (grad[1] == 0).all() and torch.isfinite(grad).all()
    assert torch.isfinite(w_grad).all()


def test_causal_mask_is_bottom_right_aligned():
    # len_q > len_k: the first len_q - len_k queries see no key at all.
    qf, kf, w, v, _ = random_inputs(1, 2, 10, 4, 8, 16, torch.float32)
    out = additive_attention(qf, kf, w, v, is_causal=True)
    assert (out[:, :, :6] == 0).all()
    assert torch.allclose(out, naive_additive(qf, kf, w, v, is_causal=True), atol=1e-5)
    # len_q < len_k (decoding with a cache): the last query sees every key.
    qf, kf, w, v, _ = random_inputs(1, 2, 3, 11, 8, 16, torch.float32)
    full = additive_attention(qf, kf, w, v, is_causal=True)
    last = additive_attention(qf[:, :, -1:], kf, w, v, is_causal=True)
    assert torch.allclose(last, full[:, :, -1:], atol=1e-6)
    assert torch.allclose(last, additive_attention(qf[:, :, -1:], kf, w, v), atol=1e-6)


def test_every_key_mask_layout_gives_the_same_result():
    qf, kf, w, v, _ = random_inputs(2, 3, 17, 29, 8, 16, torch.float32)
    mask = random_key_mask(2, 29)
    expected = naive_additive(qf, kf, w, v, attn_mask=mask)
    wide = torch.zeros(2, 1, 1, 58, dtype=torch.bool, device=DEVICE)
    wide[..., ::2] = mask  # a non-contiguous view of the same mask
    for layout in (mask, wide[..., ::2], mask.expand(-1, 3, -1, -1)):
        got = additive_attention(qf, kf, w, v, attn_mask=layout)
        assert torch.allclose(got, expected, atol=1e-5)
    row = mask[:1]  # batch dim 1 broadcasts over the batch
    expected = naive_additive(qf, kf, w, v, attn_mask=row.expand(2, -1, -1, -1))
    assert torch.allclose(additive_attention(qf, kf, w, v, attn_mask=row), expected, atol=1e-5)
    per_head = torch.rand(2, 3, 1, 29, generator=torch.Generator().manual_seed(3)) < 0.5
    per_head = per_head.to(DEVICE)
    expected = naive_additive(qf, kf, w, v, attn_mask=per_head)
    assert torch.allclose(additive_attention(qf, kf, w, v, attn_mask=per_head), expected, atol=1e-5)


# ----------------------------------------------------------------------------- laws


def test_permuting_queries_permutes_the_output():
    qf, kf, w, v, _ = random_inputs(2, 2, 23, 31, 8, 16, torch.float32)
    mask = random_key_mask(2, 31, all_masked_row=False)
    perm = torch.randperm(23, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    out = additive_attention(qf, kf, w, v, attn_mask=mask)
    permuted = additive_attention(qf[:, :, perm], kf, w, v, attn_mask=mask)
    assert torch.allclose(permuted, out[:, :, perm], atol=1e-6)


def test_permuting_keys_and_values_together_leaves_the_output_unchanged():
    qf, kf, w, v, _ = random_inputs(2, 2, 23, 70, 8, 16, torch.float32)  # two key blocks
    mask = random_key_mask(2, 70, all_masked_row=False)
    perm = torch.randperm(70, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    out = additive_attention(qf, kf, w, v, attn_mask=mask)
    permuted = additive_attention(qf, kf[:, :, perm], w, v[:, :, perm], attn_mask=mask[..., perm])
    assert torch.allclose(permuted, out, atol=1e-5)
    moved_keys_only = additive_attention(qf, kf[:, :, perm], w, v, attn_mask=mask[..., perm])
    assert not torch.allclose(moved_keys_only, out, atol=1e-3)


def test_with_causal_masking_a_future_token_changes_no_earlier_output():
    qf, kf, w, v, _ = random_inputs(1, 2, 40, 40, 8, 16, torch.float32)
    out = additive_attention(qf, kf, w, v, is_causal=True)
    changed = [t.clone() for t in (qf, kf, v)]
    for t in changed:
        t[:, :, 30] += 3.0  # token 30 changes its query, key and value
    out2 = additive_attention(changed[0], changed[1], w, changed[2], is_causal=True)
    assert torch.equal(out2[:, :, :30], out[:, :, :30])
    assert not torch.allclose(out2[:, :, 30:], out[:, :, 30:])
