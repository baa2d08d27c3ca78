"""Softcapping (``softcap=c``: s = c tanh(s / c) on the scaled scores, before masks and biases;
its derivative 1 - tanh^2 in the backward) and ALiBi (``alibi_slopes`` (h,) or (b, h), float32:
-slope |a(i) - j| added to the scaled, capped scores; no bias tensor, no slope gradient), alone,
together, and with causality, windows, masks, dropout-free GQA and d_v != d.

Criterion: tests/flash_reference.py's (float64 reference, at most twice naive attention's error
in the same dtype plus a floor), forward and every gradient.
"""

import pytest
import torch
from flash_reference import (
    DEVICE,
    SLOW,
    assert_close_as_flash_attention_does,
    max_err,
    random_inputs,
    random_key_mask,
    random_mask,
    report_largest_errors,  # noqa: F401 (autouse: -s prints the largest errors)
)

from kernels import flash_attention

pytestmark = pytest.mark.usefixtures("kernel_device")


def slopes(*shape, seed=0):
    """ALiBi-like slopes, float32: positive, a few tenths."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=gen) * 0.5 + 0.05).to(DEVICE)


@pytest.mark.parametrize("softcap", [0.5, 3.0, 30.0])
def test_softcap_matches_the_reference(softcap):
    # scale 1.0 makes scores of several units, so that a cap of 0.5 or 3 bites
    q, k, v, dout = random_inputs(2, 2, 37, 53, 16, torch.float32, seed=1)
    assert_close_as_flash_attention_does(q, k, v, dout, softcap=softcap, scale=1.0)


def test_softcap_changes_the_output():
    q, k, v, _ = random_inputs(1, 2, 20, 30, 16, torch.float32, seed=2)
    assert (
        max_err(flash_attention(q, k, v, scale=1.0, softcap=1.0), flash_attention(q, k, v)) > 0.05
    )


@pytest.mark.parametrize(
    "shape, extra",
    [((2,), {}), ((2, 2), dict(is_causal=True)), ((2,), dict(alignment="bottom_right"))],
    ids=["per_head", "per_batch_and_head_causal", "bottom_right"],
)
def test_alibi_matches_the_reference(shape, extra):
    q, k, v, dout = random_inputs(2, 2, 37, 53, 16, torch.float32, seed=3)
    assert_close_as_flash_attention_does(
        q, k, v, dout, alibi_slopes=slopes(*shape, seed=3), **extra
    )  # fmt: skip


def test_softcap_alibi_window_gqa_key_mask_and_value_dim_together_match_the_reference():
    q, k, v, dout = random_inputs(
        2, 4, 37, 53, 24, torch.float32, seed=4, heads_kv=2, value_head_dim=40
    )  # fmt: skip
    assert_close_as_flash_attention_does(
        q, k, v, dout, attn_mask=random_key_mask(2, 53, seed=4), enable_gqa=True,
        softcap=2.0, scale=0.7, alibi_slopes=slopes(2, 4, seed=4), window_size=(11, 3),
    )  # fmt: skip


def test_softcap_and_alibi_with_a_float_bias_give_its_gradient():
    q, k, v, dout = random_inputs(1, 2, 37, 53, 16, torch.float32, seed=5)
    bias = random_mask((1, 2, 37, 53), "float", seed=5)
    assert_close_as_flash_attention_does(
        q, k, v, dout, attn_mask=bias, softcap=1.5, scale=1.0, alibi_slopes=slopes(2, seed=5),
        is_causal=True,
    )  # fmt: skip


@SLOW
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("len_q, len_k", [(97, 97), (37, 200)])
@pytest.mark.parametrize("head_dim", [40, 128, 256])
def test_softcap_and_alibi_grid_matches_the_reference(dtype, len_q, len_k, head_dim):
    q, k, v, dout = random_inputs(1, 2, len_q, len_k, head_dim, dtype, seed=len_q + head_dim)
    assert_close_as_flash_attention_does(
        q, k, v, dout, softcap=5.0, alibi_slopes=slopes(2, seed=6), is_causal=True,
        window_size=(30, -1),
    )  # fmt: skip
