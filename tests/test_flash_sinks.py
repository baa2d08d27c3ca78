"""Attention sinks (``sinks``: one logit per query head joining each row's softmax denominator,
as GPT-OSS's ``s_aux``): the output, the log-sum-exp (which includes the sink), and the gradient
of the sinks, -sum over (batch, rows) of exp(sink - lse) * rowsum(dO * O), with GQA, dropout,
masks and windows; a row that sees no key gets 0.

Criterion: tests/flash_reference.py's (float64 reference, at most twice naive attention's error
in the same dtype plus a floor), forward and every gradient, the sinks' included.
"""

import pytest
import torch
from flash_reference import (
    DEVICE,
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

from kernels import flash_attention

pytestmark = pytest.mark.usefixtures("kernel_device")


def random_sinks(heads, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed + 100)
    return (torch.randn(heads, generator=gen) * 2.0).to(DEVICE, dtype)


@pytest.mark.parametrize(
    "extra",
    [{}, dict(is_causal=True), dict(window_size=(6, 0), alignment="bottom_right")],
    ids=["full", "causal", "window"],
)
def test_sinks_output_and_gradients_match_the_reference(extra):
    q, k, v, dout = random_inputs(2, 4, 37, 53, 16, torch.float32, seed=1, heads_kv=2)
    assert_close_as_flash_attention_does(
        q, k, v, dout, sinks=random_sinks(4, seed=1), enable_gqa=True, **extra
    )  # fmt: skip


def test_sinks_with_a_key_mask_a_float_bias_softcap_and_alibi_match_the_reference():
    q, k, v, dout = random_inputs(2, 2, 37, 53, 16, torch.float32, seed=2)
    sinks = random_sinks(2, seed=2)
    assert_close_as_flash_attention_does(
        q, k, v, dout, sinks=sinks, attn_mask=random_key_mask(2, 53, seed=2)
    )  # fmt: skip
    # A bias constant along the keys moves every score of a row but not its sink: the
    # kernel's shortcut for such a mask's gradient must not apply.
    for shape in ((1, 2, 37, 53), (1, 2, 37, 1)):
        bias = random_mask(shape, "float", seed=3)
        assert_close_as_flash_attention_does(
            q, k, v, dout, sinks=sinks, attn_mask=bias.nan_to_num(neginf=-1.0), softcap=4.0,
            alibi_slopes=torch.full((2,), 0.1, device=DEVICE),
        )  # fmt: skip


def test_sinks_in_the_query_dtype_get_a_gradient_in_that_dtype():
    q, k, v, dout = random_inputs(1, 2, 20, 30, 16, torch.bfloat16, seed=3)
    sinks = random_sinks(2, torch.bfloat16, seed=3).requires_grad_()
    out = flash_attention(q, k, v, sinks=sinks)
    out.backward(dout)
    assert sinks.grad.dtype == torch.bfloat16 and torch.isfinite(sinks.grad).all()


def test_a_row_that_sees_no_key_gets_zeros_and_the_sink_as_lse():
    q, k, v, _ = random_inputs(2, 2, 9, 20, 16, torch.float32, seed=4)
    mask = random_key_mask(2, 20, seed=4)  # batch row 1 masks every key
    sinks = random_sinks(2, seed=4)
    out, lse = flash_attention(q, k, v, attn_mask=mask, sinks=sinks, return_lse=True)
    assert (out[1] == 0).all()
    assert torch.allclose(lse[1], sinks[:, None].expand(2, 9))


def test_lse_includes_the_sink():
    q, k, v, _ = random_inputs(1, 2, 9, 20, 16, torch.float32, seed=5)
    sinks = random_sinks(2, seed=5)
    _, lse = flash_attention(q, k, v, sinks=sinks, return_lse=True)
    scores, _ = masked_scores(q.double(), k.double(), None, False, 16**-0.5)
    with_sink = torch.cat([scores, sinks.double()[None, :, None, None].expand(1, 2, 9, 1)], -1)
    assert max_err(lse, torch.logsumexp(with_sink, -1)) < 1e-5


def test_sinks_with_dropout_match_a_reference_with_the_kernels_keep_mask():
    # The sinks' gradient with dropout: d out / d sink = -p_sink * out holds for the dropped
    # output too, so it is the same formula; checked against autograd through a reference
    # that applies the kernel's own keep-mask.
    from kernels.flash_attention import draw_seed_offset, dropout_keep_mask

    q, k, v, dout = random_inputs(1, 4, 37, 53, 16, torch.float32, seed=6, heads_kv=2)
    p = 0.3
    torch.manual_seed(6)
    seed, offset = draw_seed_offset()
    keep = dropout_keep_mask(seed, offset, 1, 4, 37, 53, p, DEVICE)

    def run(attn, dtype):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
        sinks = random_sinks(4, seed=6).to(dtype).requires_grad_()
        torch.manual_seed(6)
        out = attn(*leaves, sinks)
        out.backward(dout.to(dtype))
        return [t.double() for t in (out, *(x.grad for x in leaves), sinks.grad)]

    def reference(q, k, v, sinks):
        return naive_attention(q, k, v, enable_gqa=True, sinks=sinks, dropout_p=p, keep=keep)

    def ours(q, k, v, sinks):
        return flash_attention(q, k, v, dropout_p=p, sinks=sinks, enable_gqa=True)

    for name, got, want in zip(
        ("out", "dq", "dk", "dv", "dsinks"), run(ours, torch.float32), run(reference, torch.float64),
        strict=True,
    ):  # fmt: skip
        assert max_err(got, want) < 1e-4 * max(1.0, want.abs().max().item()), name


@SLOW
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("len_q, len_k", [(97, 97), (200, 37)])
def test_sinks_grid_matches_the_reference(dtype, len_q, len_k):
    q, k, v, dout = random_inputs(2, 4, len_q, len_k, 64, dtype, seed=len_q, heads_kv=1)
    assert_close_as_flash_attention_does(
        q, k, v, dout, sinks=random_sinks(4, seed=7), enable_gqa=True, is_causal=True,
        window_size=(40, 0), softcap=20.0,
    )  # fmt: skip
