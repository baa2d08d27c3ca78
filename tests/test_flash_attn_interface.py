"""FlashAttention-2's API (``flash_attn_func``) on our kernel: code written for ``flash_attn``
runs by changing the import (its call patterns, keyword names and return types), and the
results match a float64 FlashAttention-2 reference (bottom-right causality, GQA/MQA, odd
lengths) in the output and every gradient; nothing is copied on the way in.

Criterion (tests/flash_reference.py): the kernel's largest error against float64 is at most
twice that of the naive computation in the kernel's dtype, plus a small floor.
"""

import pytest
import torch
from flash_reference import (
    DEVICE,
    DTYPES,
    assert_close_as_flash_attention_does,
    fa2_reference,
    kernel_input_pointers,
    random_inputs,
    report_largest_errors,  # noqa: F401 (autouse: -s prints the largest errors)
)

from kernels.flash_attention import dropout_keep_mask, flash_attn_func
from kernels.flash_attention.dropout import draw_seed_offset

pytestmark = pytest.mark.usefixtures("kernel_device")


def fa2_inputs(batch, heads, len_q, len_k, head_dim, dtype, seed=0, heads_kv=None, d_v=None):
    """q (b, n_q, h, d), k (b, n_k, h_k, d), v (b, n_k, h_k, d_v), dout (b, n_q, h, d_v):
    contiguous in FlashAttention's layout, standard normal."""
    tensors = random_inputs(batch, heads, len_q, len_k, head_dim, dtype, seed, heads_kv, d_v)
    return [t.transpose(1, 2).contiguous() for t in tensors]


# (len_q, len_k, heads, heads_kv, head_dim): odd lengths both ways, GQA, MQA, decoding
SHAPES = [(7, 7, 2, 2, 16), (37, 53, 4, 2, 40), (53, 37, 3, 1, 64), (1, 19, 4, 4, 32)]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(map(str, s)))
def test_flash_attn_func_matches_the_float64_reference_in_output_and_gradients(shape, causal):
    len_q, len_k, heads, heads_kv, head_dim = shape
    q, k, v, dout = fa2_inputs(2, heads, len_q, len_k, head_dim, torch.float32, heads_kv=heads_kv)
    assert_close_as_flash_attention_does(
        q, k, v, dout, reference=fa2_reference, kernel=flash_attn_func, causal=causal
    )


@pytest.mark.parametrize("dtype", DTYPES[1:], ids=str)
def test_flash_attn_func_in_16_bit_is_as_close_as_naive_attention_in_that_dtype(dtype):
    q, k, v, dout = fa2_inputs(2, 4, 37, 53, 64, dtype, seed=3, heads_kv=2)
    assert_close_as_flash_attention_does(
        q, k, v, dout, reference=fa2_reference, kernel=flash_attn_func, causal=True,
        softmax_scale=0.3,
    )  # fmt: skip


def test_flash_attn_func_runs_code_written_for_flash_attn_unchanged():
    """FlashAttention-2's call patterns: positional dropout_p, softmax_scale, causal; keyword
    names; the (out, softmax_lse, S_dmask) triple of return_attn_probs."""
    q, k, v, _ = fa2_inputs(2, 4, 9, 13, 32, torch.float32, heads_kv=2)
    out = flash_attn_func(q, k, v, 0.0, None, True)
    assert out.shape == (2, 9, 4, 32) and out.dtype == q.dtype and out.is_contiguous()
    same = flash_attn_func(
        q, k, v, dropout_p=0.0, softmax_scale=32**-0.5, causal=True, window_size=(-1, -1),
        softcap=0.0, alibi_slopes=None, deterministic=True, return_attn_probs=False,
    )  # fmt: skip
    torch.testing.assert_close(same, out, rtol=0, atol=0)
    out3, softmax_lse, s_dmask = flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    torch.testing.assert_close(out3, out, rtol=0, atol=0)
    assert softmax_lse.shape == (2, 4, 9) and softmax_lse.dtype == torch.float32
    assert s_dmask is None
    scores = torch.einsum("bihd,bjhd->bhij", q.double(), k.double().repeat_interleave(2, 2))
    scores = scores * 32**-0.5
    scores = scores.masked_fill(torch.ones(9, 13).tril(13 - 9) == 0, float("-inf"))
    torch.testing.assert_close(softmax_lse.double(), scores.logsumexp(-1), rtol=0, atol=1e-5)


def test_flash_attn_func_reads_the_callers_tensors_without_copying(monkeypatch):
    """The kernel gets (b, h, n, d) views of the caller's (b, n, h, d) storage."""
    seen = kernel_input_pointers(monkeypatch)
    q, k, v, _ = fa2_inputs(1, 2, 5, 6, 16, torch.float32)
    flash_attn_func(q, k, v)
    assert seen == [q.data_ptr(), k.data_ptr(), v.data_ptr()]


def test_flash_attn_func_dropout_matches_the_reference_fed_its_keep_mask():
    q, k, v, dout = fa2_inputs(1, 2, 17, 23, 16, torch.float32, seed=5)
    torch.manual_seed(11)
    seed, offset = draw_seed_offset()
    keep = dropout_keep_mask(seed, offset, 1, 2, 17, 23, 0.3, DEVICE)
    torch.manual_seed(11)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = flash_attn_func(*leaves, dropout_p=0.3, causal=True)
    out.backward(dout)
    exact = [t.double().requires_grad_() for t in (q, k, v)]
    ref = fa2_reference(*exact, dropout_p=0.3, causal=True, keep=keep)
    ref.backward(dout.double())
    for got, want in zip(
        (out, *(t.grad for t in leaves)), (ref, *(t.grad for t in exact)), strict=True
    ):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-5)


# FlashAttention-2's window, softcap and ALiBi, alone and together, anchored bottom-right; and
# the one keyword that is not FlashAttention-2's, the sinks (their gradient compared too)
OPTIONS = {
    "window": dict(window_size=(5, 3)),
    "causal-window": dict(window_size=(4, 7), causal=True),
    "softcap": dict(softcap=2.0),
    "alibi": dict(alibi_slopes=torch.tensor([0.5, 0.25, 0.125, 0.0625])),
    "alibi-batch-causal": dict(alibi_slopes=torch.rand(2, 4) / 2, causal=True),
    "all": dict(window_size=(6, 2), softcap=3.0, alibi_slopes=torch.full((4,), 0.3)),
    "sinks-causal": dict(sinks=torch.tensor([-2.0, -0.5, 0.5, 2.0]), causal=True),
}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_flash_attn_funcs_window_softcap_alibi_and_sinks_match_the_float64_reference(options):
    q, k, v, dout = fa2_inputs(2, 4, 23, 41, 32, torch.float32, seed=6, heads_kv=2)
    options = {
        name: value.to(DEVICE) if isinstance(value, torch.Tensor) else value
        for name, value in options.items()
    }
    assert_close_as_flash_attention_does(
        q, k, v, dout, reference=fa2_reference, kernel=flash_attn_func, **options
    )


def test_flash_attn_func_names_the_layout_when_a_tensor_has_the_wrong_rank():
    q, k, v, _ = fa2_inputs(1, 2, 5, 5, 16, torch.float32)
    with pytest.raises(ValueError, match=r"k must have rank 4 \(batch, seqlen, heads"):
        flash_attn_func(q, k[0], v)


def test_flash_attn_func_gives_slopes_that_require_a_gradient_none_as_flash_attn_does():
    q, k, v, _ = fa2_inputs(1, 2, 5, 6, 16, torch.float32)
    slopes = torch.tensor([0.5, 0.25], device=DEVICE, requires_grad=True)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = flash_attn_func(*leaves, alibi_slopes=slopes)
    constant = flash_attn_func(q, k, v, alibi_slopes=slopes.detach())
    torch.testing.assert_close(out, constant, rtol=0, atol=0)
    out.sum().backward()
    assert slopes.grad is None and all(t.grad is not None for t in leaves)


def test_flash_attn_funcs_output_follows_qs_memory_order():
    """As FlashAttention-2's empty_like(q): contiguous for a contiguous q, q's strides for a
    (b, h, n, d) tensor viewed as (b, n, h, d)."""
    q, k, v, _ = fa2_inputs(2, 4, 5, 6, 8, torch.float32)
    assert flash_attn_func(q, k, v).is_contiguous()
    q_bhnd = q.transpose(1, 2).contiguous().transpose(1, 2)
    out = flash_attn_func(q_bhnd, k, v)
    assert out.stride() == q_bhnd.stride()
    torch.testing.assert_close(out, flash_attn_func(q, k, v), rtol=0, atol=0)
