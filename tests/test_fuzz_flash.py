"""Fuzzing ``kernels.flash_attention`` (hypothesis): valid calls match the float64 reference,
broken ones are refused naming the argument (how: tests/fuzz_helpers.py)."""

from __future__ import annotations

import pytest
import torch
from flash_reference import naive_attention
from fuzz_helpers import (
    FEW,
    FLOATS,
    LONG,
    QKV,
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

from kernels import flash_attention


@st.composite
def flash_calls(draw, device: str) -> Call:
    device = draw(st.sampled_from([device, "meta"]))
    b, h_kv, group = draw(st.integers(0, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    h, len_q, len_k = h_kv * group, draw(st.integers(0, 7)), draw(st.integers(0, 7))
    d, d_v = draw(st.sampled_from([1, 5, 16, 24])), draw(st.sampled_from([3, 16]))
    dtype, seed = draw(st.sampled_from(FLOATS)), draw(st.integers(0, 2**16))
    args = dict(
        query=tensor(draw, (b, h, len_q, d), dtype, device, seed),
        key=tensor(draw, (b, h_kv, len_k, d), dtype, device, seed + 1),
        value=tensor(draw, (b, h_kv, len_k, d_v), dtype, device, seed + 2),
        attn_mask=mask(draw, b, h, len_q, len_k, device, seed),
        is_causal=draw(st.booleans()),
        scale=draw(st.sampled_from([None, 0.3, 2, -1.5])),
        enable_gqa=group > 1 or draw(st.booleans()),
    )
    return Call(args, device)


def _heads_without_gqa(c: Call) -> Call:
    q, k = c.args["query"], c.args["key"]
    q = torch.cat([q, q], dim=1) if q.shape[1] == k.shape[1] else q
    return broken(
        c, ValueError, ("pass enable_gqa=True",), query=q, enable_gqa=False, attn_mask=None
    )


def _kv_heads_not_dividing(c: Call) -> Call:
    q, k, v = (c.args[n] for n in QKV)
    return broken(
        c, ValueError, ("to divide the query heads",), enable_gqa=True, attn_mask=None,
        query=torch.cat([q] * 3, 1)[:, :3], key=torch.cat([k] * 2, 1)[:, :2],
        value=torch.cat([v] * 2, 1)[:, :2],
    )  # fmt: skip


FLASH_BREAKS = {
    "float64": lambda c: broken(
        c, TypeError, ("dtype torch.float64",), **{n: c.args[n].double() for n in QKV}
    ),
    "int32": lambda c: broken(
        c, TypeError, ("dtype torch.int32",), **{n: c.args[n].int() for n in QKV}
    ),
    "mixed dtypes": lambda c: broken(
        c,
        TypeError,
        ("q, k, v must share one dtype",),
        key=c.args["key"].to(torch.float64),
    ),  # fmt: skip
    "query of rank 3": lambda c: broken(
        c, ValueError, ("q must have rank 4",), query=c.args["query"].flatten(0, 1)
    ),
    "key not a tensor": lambda c: broken(c, TypeError, ("k must be a torch.Tensor",), key=[[1.0]]),
    "value longer": lambda c: broken(
        c, ValueError, ("k and v must have the same length",), value=longer(c.args["value"], 2, 1)
    ),
    "key head dim": lambda c: broken(
        c, ValueError, ("q and k head dims differ",), key=longer(c.args["key"], 3, 1)
    ),
    "head dim 0": lambda c: broken(
        c,
        ValueError,
        ("head dim 0 is not supported",),
        query=c.args["query"][..., :0],
        key=c.args["key"][..., :0],
    ),  # fmt: skip
    "value head dim 257": lambda c: broken(
        c,
        ValueError,
        ("v head dim 257 is not supported",),
        value=like(c.args["value"], shape=(*c.args["value"].shape[:3], 257)),
    ),  # fmt: skip
    "heads without enable_gqa": _heads_without_gqa,
    "kv heads not dividing": _kv_heads_not_dividing,
    "mask too long": lambda c: broken(
        c,
        ValueError,
        ("attn_mask of shape",),
        attn_mask=like(
            c.args["query"],
            shape=(c.args["query"].shape[2], c.args["key"].shape[2] + 2),
            dtype=torch.bool,
        ),
    ),  # fmt: skip
    "mask of ints": lambda c: broken(
        c,
        TypeError,
        ("attn_mask must be torch.bool",),
        attn_mask=like(c.args["query"], shape=(1,), dtype=torch.int64),
    ),
    "mask elsewhere": lambda c: broken(
        c,
        ValueError,
        ("attn_mask is on",),
        attn_mask=like(c.args["query"], shape=(1,), dtype=torch.bool, device=other(c.device)),
    ),
    "inputs on two devices": lambda c: broken(
        c, ValueError, ("must be on one device",), key=like(c.args["key"], device=other(c.device))
    ),
    "scale inf": lambda c: broken(c, ValueError, ("scale must be finite",), scale=float("inf")),
    "scale nan": lambda c: broken(c, ValueError, ("scale must be finite",), scale=float("nan")),
    "scale a string": lambda c: broken(c, TypeError, ("scale must be a real number",), scale="0.5"),
    "scale a tensor": lambda c: broken(
        c, TypeError, ("scale must be a real number",), scale=torch.tensor([0.5, 1.0])
    ),
    "dropout_p 1.5": lambda c: broken(
        c, ValueError, ("dropout_p must be in [0, 1]",), dropout_p=1.5
    ),
    "dropout_p nan": lambda c: broken(
        c, ValueError, ("dropout_p must be in [0, 1]",), dropout_p=float("nan")
    ),
}


def check_flash_call(call: Call) -> None:
    try:
        got = flash_attention(**call.args)
    except Exception as err:  # every failure is judged, not only the expected kind
        if call.error is None:
            raise
        assert_raised_by_the_checks(err, call, "flash_attention:", ("kernels",))
        return
    assert call.error is None, f"{call.says} was not refused"
    q, k, v = (call.args[n] for n in QKV)
    kwargs = {n: call.args[n] for n in ("is_causal", "scale", "enable_gqa")}
    if call.device == "meta":
        assert got.shape == (*q.shape[:3], v.shape[3]) and got.dtype == q.dtype
        return
    m = call.args["attn_mask"]
    exact = naive_attention(q.double(), k.double(), v.double(), m, **kwargs)
    cast = m.to(q.dtype) if m is not None and m.is_floating_point() else m
    assert_as_close_as_naive(got, exact, naive_attention(q, k, v, cast, **kwargs), q.dtype)


def test_flash_attention_fuzzed_returns_what_the_float64_reference_returns(kernel_device):
    @QUICK
    @given(flash_calls(kernel_device.type))
    def run(call):
        check_flash_call(call)

    run()


@pytest.mark.parametrize("breaking", list(FLASH_BREAKS))
def test_flash_attention_fuzzed_and_broken_refuses_naming_the_argument(kernel_device, breaking):
    @FEW
    @given(flash_calls(kernel_device.type))
    def run(call):
        check_flash_call(FLASH_BREAKS[breaking](call))

    run()


@pytest.mark.slow
@pytest.mark.parametrize("breaking", [None, *FLASH_BREAKS])
def test_flash_attention_fuzzed_long(kernel_device, breaking):
    @LONG
    @given(flash_calls(kernel_device.type))
    def run(call):
        check_flash_call(FLASH_BREAKS[breaking](call) if breaking else call)

    run()
