"""Fuzzing the model's ``transformer.attention.attend`` with every backend (hypothesis): valid
calls match the float64 reference, broken ones are refused naming the argument (how:
tests/fuzz_helpers.py)."""

from __future__ import annotations

import pytest
import torch
from flash_reference import naive_attention
from fuzz_helpers import (
    FEW,
    FLOATS,
    LONG,
    QUICK,
    Call,
    assert_as_close_as_naive,
    assert_raised_by_the_checks,
    broken,
    like,
    longer,
    mask,
    other,
    tensor,
)
from hypothesis import given
from hypothesis import strategies as st

from transformer.attention import attend


@st.composite
def attend_calls(draw, device: str) -> Call:
    backend = draw(st.sampled_from(["naive", "sdpa", "triton"]))
    device = draw(st.sampled_from([device, "meta"]))
    b, h = draw(st.integers(0, 2)), draw(st.integers(1, 2))
    len_q, len_k = draw(st.integers(0, 7)), draw(st.integers(0, 7))
    d, e = draw(st.sampled_from([1, 5, 16])), draw(st.sampled_from([3, 16]))
    dtype, seed = draw(st.sampled_from(FLOATS)), draw(st.integers(0, 2**16))
    args = dict(
        q=tensor(draw, (b, h, len_q, d), dtype, device, seed),
        k=tensor(draw, (b, h, len_k, d), dtype, device, seed + 1),
        v=tensor(draw, (b, h, len_k, e), dtype, device, seed + 2),
        attn_mask=mask(draw, b, h, len_q, len_k, device, seed, kinds=("bool", "key")),
        is_causal=draw(st.booleans()),
        scale=draw(st.sampled_from([None, 0.3, 2.0])),
        backend=backend,
    )
    return Call(args, device)


ATTEND_BREAKS = {
    "unknown backend": lambda c: broken(
        c, ValueError, ("unknown attention backend 'flash'",), backend="flash"
    ),
    "float mask": lambda c: broken(
        c,
        TypeError,
        ("attn_mask must be torch.bool",),
        attn_mask=like(c.args["q"], shape=(1,), dtype=torch.float32),
    ),  # fmt: skip
    "mask too long": lambda c: broken(
        c,
        ValueError,
        ("attn_mask of shape",),
        attn_mask=like(
            c.args["q"], shape=(c.args["q"].shape[2], c.args["k"].shape[2] + 2), dtype=torch.bool
        ),
    ),  # fmt: skip
    "mask of rank 5": lambda c: broken(
        c,
        ValueError,
        ("attn_mask has 5 dims",),
        attn_mask=like(c.args["q"], shape=(1, 1, 1, 1, 1), dtype=torch.bool),
    ),  # fmt: skip
    "dropout_p 1": lambda c: broken(c, ValueError, ("dropout_p must be in [0, 1)",), dropout_p=1.0),
    "q of rank 3": lambda c: broken(
        c,
        ValueError,
        ("q must have shape (batch, heads, len, head_dim)",),
        q=c.args["q"].flatten(0, 1),
    ),  # fmt: skip
    "k not a tensor": lambda c: broken(c, TypeError, ("k must be a torch.Tensor",), k=1.0),
    "head dims differ": lambda c: broken(
        c, ValueError, ("head dims differ",), k=longer(c.args["k"], 3, 1)
    ),
    "heads differ": lambda c: broken(
        c, ValueError, ("must agree in (batch, heads)",), q=longer(c.args["q"], 1, 1)
    ),
    "inputs on two devices": lambda c: broken(
        c, ValueError, ("must be on one device",), v=like(c.args["v"], device=other(c.device))
    ),
    "mask elsewhere": lambda c: broken(
        c,
        ValueError,
        ("attn_mask",),
        attn_mask=like(c.args["q"], shape=(1,), dtype=torch.bool, device=other(c.device)),
        backend="naive",
    ),  # fmt: skip
    "scale a string": lambda c: broken(c, TypeError, ("scale",), scale="0.5", backend="naive"),
}


def check_attend_call(call: Call) -> None:
    try:
        got = attend(**call.args)
    except Exception as err:  # every failure is judged, not only the expected kind
        if call.error is None:
            raise
        assert_raised_by_the_checks(err, call, "", ("transformer", "kernels"))
        return
    assert call.error is None, f"{call.says} was not refused"
    q, k, v, m = (call.args[n] for n in ("q", "k", "v", "attn_mask"))
    # attend's causality is bottom-right (a decoder's queries are its cache's last positions).
    kwargs = {n: call.args[n] for n in ("is_causal", "scale")} | {"alignment": "bottom_right"}
    if call.device == "meta":
        assert got.shape == (*q.shape[:3], v.shape[3]) and got.dtype == q.dtype
        return
    exact = naive_attention(q.double(), k.double(), v.double(), m, **kwargs)
    assert_as_close_as_naive(got, exact, naive_attention(q, k, v, m, **kwargs), q.dtype)


def test_attend_fuzzed_returns_what_the_float64_reference_returns(kernel_device):
    @QUICK
    @given(attend_calls(kernel_device.type))
    def run(call):
        check_attend_call(call)

    run()


@pytest.mark.parametrize(
    "breaking",
    list(ATTEND_BREAKS),
)
def test_attend_fuzzed_and_broken_refuses_naming_the_argument(kernel_device, breaking):
    @FEW
    @given(attend_calls(kernel_device.type))
    def run(call):
        check_attend_call(ATTEND_BREAKS[breaking](call))

    run()


@pytest.mark.slow
@pytest.mark.parametrize("breaking", [None, *ATTEND_BREAKS])
def test_attend_fuzzed_long(kernel_device, breaking):
    @LONG
    @given(attend_calls(kernel_device.type))
    def run(call):
        check_attend_call(ATTEND_BREAKS[breaking](call) if breaking else call)

    run()
