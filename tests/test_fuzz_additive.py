"""Fuzzing ``kernels.additive_attention`` (hypothesis): valid calls match the float64
reference, broken ones are refused naming the argument (how: tests/fuzz_helpers.py)."""

from __future__ import annotations

import pytest
import torch
from additive_reference import naive_additive
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
    other,
    tensor,
)
from hypothesis import given
from hypothesis import strategies as st

from kernels import additive_attention

FEATURES = ("query_features", "key_features")


@st.composite
def additive_calls(draw, device: str) -> Call:
    device = draw(st.sampled_from([device, "meta"]))
    b, h = draw(st.integers(0, 2)), draw(st.integers(1, 2))
    len_q, len_k = draw(st.integers(0, 7)), draw(st.integers(0, 7))
    a, e = draw(st.sampled_from([1, 3, 16])), draw(st.sampled_from([2, 16]))
    dtype, seed = draw(st.sampled_from(FLOATS)), draw(st.integers(0, 2**16))
    key_mask = None
    if draw(st.booleans()):
        gen = torch.Generator().manual_seed(seed + 1)
        heads = draw(st.sampled_from([1, h]))
        key_mask = (torch.rand(b, heads, 1, len_k, generator=gen) < 0.7).to(device)
    args = dict(
        query_features=tensor(draw, (b, h, len_q, a), dtype, device, seed),
        key_features=tensor(draw, (b, h, len_k, a), dtype, device, seed + 1),
        score_weight=tensor(draw, (h, a), draw(st.sampled_from(FLOATS)), device, seed + 2),
        v=tensor(draw, (b, h, len_k, e), dtype, device, seed + 3),
        attn_mask=key_mask,
        is_causal=draw(st.booleans()),
    )
    return Call(args, device)


ADDITIVE_BREAKS = {
    "float64": lambda c: broken(
        c,
        TypeError,
        ("the inputs' dtype torch.float64",),
        **{n: c.args[n].double() for n in (*FEATURES, "v")},
    ),  # fmt: skip
    "score_weight float64": lambda c: broken(
        c,
        TypeError,
        ("score_weight's dtype torch.float64",),
        score_weight=c.args["score_weight"].double(),
    ),  # fmt: skip
    "v not a tensor": lambda c: broken(c, TypeError, ("v must be a torch.Tensor",), v=None),
    "score_weight of rank 3": lambda c: broken(
        c,
        ValueError,
        ("score_weight must have rank 2",),
        score_weight=c.args["score_weight"][None],
    ),  # fmt: skip
    "feature sizes differ": lambda c: broken(
        c, ValueError, ("feature sizes differ",), key_features=longer(c.args["key_features"], 3, 1)
    ),
    "score_weight shape": lambda c: broken(
        c,
        ValueError,
        ("score_weight must be (heads, a)",),
        score_weight=longer(c.args["score_weight"], 0, 1),
    ),  # fmt: skip
    "129 features": lambda c: broken(
        c,
        ValueError,
        ("feature size 129 is not supported",),
        **{n: like(c.args[n], shape=(*c.args[n].shape[:3], 129)) for n in FEATURES},
        score_weight=like(c.args["score_weight"], shape=(c.args["score_weight"].shape[0], 129)),
    ),  # fmt: skip
    "value dim 0": lambda c: broken(
        c, ValueError, ("value head dim 0 is not supported",), v=c.args["v"][..., :0]
    ),
    "full mask": lambda c: broken(
        c,
        ValueError,
        ("attn_mask must be a key mask",),
        attn_mask=like(
            c.args["v"],
            shape=(c.args["query_features"].shape[2], c.args["v"].shape[2]),
            dtype=torch.bool,
        ),
    ),  # fmt: skip
    "float mask": lambda c: broken(
        c,
        TypeError,
        ("attn_mask must be torch.bool",),
        attn_mask=like(c.args["v"], shape=(1, 1, 1, c.args["v"].shape[2]), dtype=torch.float32),
    ),  # fmt: skip
    "mask elsewhere": lambda c: broken(
        c,
        ValueError,
        ("attn_mask is on",),
        attn_mask=like(
            c.args["v"],
            shape=(1, 1, 1, c.args["v"].shape[2]),
            dtype=torch.bool,
            device=other(c.device),
        ),
    ),  # fmt: skip
    "v elsewhere": lambda c: broken(
        c, ValueError, ("must be on one device",), v=like(c.args["v"], device=other(c.device))
    ),
}


def check_additive_call(call: Call) -> None:
    try:
        got = additive_attention(**call.args)
    except Exception as err:  # every failure is judged, not only the expected kind
        if call.error is None:
            raise
        assert_raised_by_the_checks(err, call, "additive_attention:", ("kernels",))
        return
    assert call.error is None, f"{call.says} was not refused"
    qf, kf, w, v = (call.args[n] for n in (*FEATURES, "score_weight", "v"))
    m, causal = call.args["attn_mask"], call.args["is_causal"]
    if call.device == "meta":
        assert got.shape == (*qf.shape[:3], v.shape[3]) and got.dtype == v.dtype
        return
    exact = naive_additive(qf.double(), kf.double(), w.double(), v.double(), m, causal)
    assert_as_close_as_naive(got, exact, naive_additive(qf, kf, w, v, m, causal), v.dtype)


def test_additive_attention_fuzzed_returns_what_the_float64_reference_returns(kernel_device):
    @QUICK
    @given(additive_calls(kernel_device.type))
    def run(call):
        check_additive_call(call)

    run()


@pytest.mark.parametrize("breaking", list(ADDITIVE_BREAKS))
def test_additive_attention_fuzzed_and_broken_refuses_naming_the_argument(kernel_device, breaking):
    @FEW
    @given(additive_calls(kernel_device.type))
    def run(call):
        check_additive_call(ADDITIVE_BREAKS[breaking](call))

    run()


@pytest.mark.slow
@pytest.mark.parametrize("breaking", [None, *ADDITIVE_BREAKS])
def test_additive_attention_fuzzed_long(kernel_device, breaking):
    @LONG
    @given(additive_calls(kernel_device.type))
    def run(call):
        check_additive_call(ADDITIVE_BREAKS[breaking](call) if breaking else call)

    run()
