"""Head dims of the flash-attention kernel: a value head dim d_v of its own (SDPA allows v
(b, h_kv, len_k, d_v) with out (b, h, len_q, d_v)) and head dims up to 256.

Criterion as in tests/flash_reference.py: the kernel's largest error against a float64
computation is at most twice that of naive attention in the kernel's dtype (plus a small floor),
for the output and every gradient, on fresh random inputs of odd lengths.
"""

import importlib

import pytest
import torch
import torch.nn.functional as F
from flash_reference import (
    assert_close_as_flash_attention_does,
    random_inputs,
    random_key_mask,
    random_mask,
    report_largest_errors,  # noqa: F401 (autouse: -s prints the largest errors)
)

from kernels import flash_attention
from kernels.common import runtime

fa_configs = importlib.import_module("kernels.flash_attention.configs")

# The reference helpers build their inputs on the kernel_device fixture's device (devices.py).
pytestmark = pytest.mark.usefixtures("kernel_device")

fn = importlib.import_module("kernels.flash_attention.function")
SLOW = pytest.mark.slow


def inputs(device, batch, heads, len_q, len_k, d, d_v, dtype, heads_kv=None, seed=0):
    """q (b, h, len_q, d), k (b, h_kv, len_k, d), v (b, h_kv, len_k, d_v), dout (b, h, len_q,
    d_v) on the kernels' device."""
    tensors = random_inputs(batch, heads, len_q, len_k, d, dtype, seed, heads_kv, d_v)
    return [t.to(device) for t in tensors]


# (d, d_v, len_q, len_k, heads, heads_kv, masking, dtype): values wider and narrower than the
# queries, across the padded widths (16 -> 64, 40 -> 16), with causal masking, a key mask, a
# float mask and its gradient, grouped-query heads, odd lengths.
VALUE_CASES = [
    (24, 40, 7, 13, 4, 2, "causal+key_mask", torch.float32),
    (40, 16, 13, 7, 2, 2, "float", torch.bfloat16),
    (16, 72, 9, 9, 3, 1, "causal", torch.float16),
    pytest.param(72, 8, 33, 70, 2, 1, "causal+float", torch.float32, marks=SLOW),
    pytest.param(8, 136, 70, 33, 2, 2, "key_mask", torch.bfloat16, marks=SLOW),
    pytest.param(96, 40, 65, 65, 4, 2, "causal+key_mask", torch.float16, marks=SLOW),
]


def mask_for(masking, batch, heads, len_q, len_k, device):
    if "key_mask" in masking:
        return random_key_mask(batch, len_k).to(device)
    if "float" in masking:
        return random_mask((heads, len_q, len_k), "float").to(device)
    return None


@pytest.mark.parametrize("d,d_v,len_q,len_k,heads,heads_kv,masking,dtype", VALUE_CASES, ids=str)
def test_a_value_head_dim_of_its_own_within_2x_naive_error_with_every_gradient(
    d, d_v, len_q, len_k, heads, heads_kv, masking, dtype, kernel_device
):
    q, k, v, dout = inputs(kernel_device, 2, heads, len_q, len_k, d, d_v, dtype, heads_kv)
    assert_close_as_flash_attention_does(
        q, k, v, dout,
        attn_mask=mask_for(masking, 2, heads, len_q, len_k, kernel_device),
        is_causal="causal" in masking, enable_gqa=heads_kv != heads,
    )  # fmt: skip


# Head dims past 128 (padded to 256): one float32 and one 16-bit shape by default.
WIDE_CASES = [
    (160, 160, 5, 9, "causal+key_mask", torch.bfloat16),
    (256, 256, 3, 4, "float", torch.float32),
    pytest.param(192, 192, 37, 70, "causal", torch.float16, marks=SLOW),
    pytest.param(256, 256, 65, 33, "causal+key_mask", torch.bfloat16, marks=SLOW),
    pytest.param(256, 96, 33, 65, "float", torch.float16, marks=SLOW),
    pytest.param(160, 256, 20, 20, "causal+float", torch.float32, marks=SLOW),
]


@pytest.mark.parametrize("d,d_v,len_q,len_k,masking,dtype", WIDE_CASES, ids=str)
def test_head_dims_up_to_256_within_2x_naive_error_with_every_gradient(
    d, d_v, len_q, len_k, masking, dtype, kernel_device
):
    q, k, v, dout = inputs(kernel_device, 2, 2, len_q, len_k, d, d_v, dtype)
    assert_close_as_flash_attention_does(
        q, k, v, dout,
        attn_mask=mask_for(masking, 2, 2, len_q, len_k, kernel_device),
        is_causal="causal" in masking,
    )  # fmt: skip


def test_default_scale_is_one_over_sqrt_of_the_query_head_dim(kernel_device):
    q, k, v, _ = inputs(kernel_device, 1, 2, 5, 6, 16, 64, torch.float32)
    expected = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(16), not 1/sqrt(64)
    assert torch.allclose(flash_attention(q, k, v), expected, atol=1e-5)


@pytest.mark.parametrize("d,d_v", [(24, 40), (40, 24)])
def test_fake_shapes_follow_the_value_head_dim(d, d_v, kernel_device):
    """torch.compile sees the fake functions: out and dv must be d_v wide, dq and dk d wide."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    q, k, v, dout = inputs(kernel_device, 2, 2, 5, 7, d, d_v, torch.float32)
    with FakeTensorMode() as mode:
        fq, fk, fv = (mode.from_tensor(t).requires_grad_() for t in (q, k, v))
        out = flash_attention(fq, fk, fv, is_causal=True)
        grads = torch.autograd.grad(out, (fq, fk, fv), mode.from_tensor(dout))
    assert out.shape == (2, 2, 5, d_v)
    assert [g.shape for g in grads] == [q.shape, k.shape, v.shape]


def test_a_mask_that_needs_a_gradient_takes_the_dq_bias_launch_table(monkeypatch, kernel_device):
    """The dQ pass that writes dS holds more registers and has its own table (configs.py)."""
    names = []
    real = fa_configs.for_kernel
    monkeypatch.setattr(
        fa_configs,
        "for_kernel",
        lambda name, q, d, dropout: names.append(name) or real(name, q, d, dropout),
    )
    q, k, v, dout = inputs(kernel_device, 1, 2, 5, 6, 16, 16, torch.float32)
    mask = random_mask((5, 6), "float").to(kernel_device)
    q.requires_grad_()
    flash_attention(q, k, v, attn_mask=mask).backward(dout)
    assert names == ["fwd", "dkdv", "dq"]
    names.clear()
    flash_attention(q, k, v, attn_mask=mask.requires_grad_()).backward(dout)
    assert names == ["fwd", "dkdv", "dq_bias"]


def _bad_head_dims(device):
    def t(d, n=2):
        return torch.zeros(1, 1, n, d, device=device)

    return [
        ("v-too-wide", (t(16), t(16), t(257)), "v head dim 257 is not supported"),
        ("qk-too-wide", (t(257), t(257), t(16)), "q/k head dim 257 is not supported"),
        ("v-zero", (t(16), t(16), t(0)), "v head dim 0 is not supported"),
        ("qk-zero", (t(0), t(0), t(16)), "q/k head dim 0 is not supported"),
        ("k-differs", (t(16), t(24), t(16)), "q and k head dims differ"),
    ]


@pytest.mark.parametrize("index", range(5), ids=[c[0] for c in _bad_head_dims("cpu")])
def test_head_dims_out_of_range_raise_a_clear_error_before_any_launch(index, kernel_device):
    _, args, message = _bad_head_dims(kernel_device)[index]

    def no_launch(launch):
        raise AssertionError(f"{launch.kernel} was launched")

    with runtime.hooked(runtime.Hook(no_launch)), pytest.raises(ValueError, match=message):
        flash_attention(*args)
