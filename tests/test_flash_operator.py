"""The flash-attention kernel as torch.library operators: opcheck on the forward and backward
operators (schema, fake implementation, autograd registration, AOT dispatch), and fake
functions that give the real outputs' shapes, dtypes and strides (all torch.compile sees).
"""

import importlib

import pytest
import torch
from flash_reference import (
    DEVICE,
    SLOW,
    random_inputs,
    random_key_mask,
    random_mask,
)

from kernels import flash_attention

# The reference helpers build their inputs on the kernel_device fixture's device (devices.py).
pytestmark = pytest.mark.usefixtures("kernel_device")

fn = importlib.import_module("kernels.flash_attention.function")  # the operators


# ----------------------------------------------------------------------------- the operator


@pytest.mark.parametrize(
    "len_q,len_k,mask_kind,is_causal,heads_kv",
    [
        (7, 5, "keys", True, 3),
        pytest.param(5, 13, None, False, 1, marks=SLOW),
        pytest.param(1, 9, "keys", False, 3, marks=SLOW),
        (6, 11, "float", True, 1),
    ],
    ids=["ragged-masked-causal", "ragged-gqa", "one-query-masked", "float-mask-grad-gqa"],
)
def test_forward_and_backward_operators_pass_opcheck(len_q, len_k, mask_kind, is_causal, heads_kv):
    """torch.library.opcheck: schema, fake implementation vs the real one, autograd
    registration (the float mask's gradient included), and AOT dispatch with dynamic shapes
    (what torch.compile relies on)."""
    q, k, v, dout = random_inputs(2, 3, len_q, len_k, 24, torch.float32, heads_kv=heads_kv)
    mask = {
        None: None,
        "keys": random_key_mask(2, len_k),
        "float": random_mask((3, len_q, len_k), "float"),
    }[mask_kind]
    mask_grad = mask_kind == "float"
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    if mask_grad:
        mask = mask.clone().requires_grad_()
    torch.library.opcheck(fn._forward_op, (*leaves, mask, is_causal, 0.3))
    # (the backward is not differentiable itself: no double backward, as in flash-attention)
    detached = None if mask is None else mask.detach()
    out, lse = fn._forward_op(q, k, v, detached, is_causal, 0.3)
    dlse = torch.randn(lse.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    args = (q, k, v, detached, is_causal, 0.3, out, lse, dout, dlse, mask_grad)
    torch.library.opcheck(fn._backward_op, args)


def test_operators_with_every_score_option_pass_opcheck():
    """The same checks with the score options the operators take flat: bottom-right anchoring,
    a window, a softcap, ALiBi slopes broadcast over the batch (stride 0) and sinks with their
    gradient (the forward operator's fifth differentiable input)."""
    q, k, v, dout = random_inputs(2, 3, 7, 12, 24, torch.float32, heads_kv=1)
    slopes = torch.tensor([0.1, 0.2, 0.3], device=DEVICE).expand(2, 3)
    sinks = torch.tensor([0.5, -1.0, 2.0], device=DEVICE)
    options = (True, 4, 1, 2.5, slopes)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, sinks)]
    forward_args = (*leaves[:3], None, True, 0.3, 0.0, 0, 0, *options, leaves[3])
    torch.library.opcheck(fn._forward_op, forward_args)
    out, lse = fn._forward_op(q, k, v, None, True, 0.3, 0.0, 0, 0, *options, sinks)
    dlse = torch.randn(lse.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    args = (q, k, v, None, True, 0.3, out, lse, dout, dlse, False, 0.0, 0, 0, *options, sinks)
    torch.library.opcheck(fn._backward_op, args)


def test_fullgraph_compiled_call_with_score_options_equals_eager():
    """torch.compile(fullgraph=True) through flash_attention with every score option: one
    graph, and the same output and gradients (the sinks' too) as eager."""
    from torch._dynamo.testing import CompileCounterWithBackend

    q, k, v, dout = random_inputs(1, 2, 9, 14, 16, torch.float32, heads_kv=1)
    sinks = torch.tensor([0.3, -0.7], device=DEVICE)

    def call(q, k, v, sinks):
        return flash_attention(
            q, k, v, is_causal=True, enable_gqa=True, window_size=(5, 0), softcap=3.0,
            alibi_slopes=torch.tensor([0.2, 0.1], device=q.device), sinks=sinks,
            alignment="bottom_right",
        )  # fmt: skip

    counter = CompileCounterWithBackend("aot_eager")
    results = []
    for f in (call, torch.compile(call, fullgraph=True, backend=counter)):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, sinks)]
        out = f(*leaves)
        out.backward(dout)
        results.append([out, *(leaf.grad for leaf in leaves)])
    assert counter.frame_count == 1
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want)


def _metadata(t):
    return t.shape, t.dtype, t.stride(), t.device.type


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("len_q,len_k", [(7, 13), (13, 7), (1, 1)])
def test_fake_implementation_gives_the_real_shapes_dtypes_and_strides(len_q, len_k, dtype):
    """The compiler only sees the fake functions: they must describe what the kernels return,
    for odd lengths, len_q != len_k, with the log-sum-exp, and through the backward."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    q, k, v, dout = random_inputs(2, 3, len_q, len_k, 40, dtype)
    mask = random_key_mask(2, len_k)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    real = flash_attention(*leaves, attn_mask=mask, is_causal=True, return_lse=True)
    torch.autograd.backward(real, (dout, torch.zeros_like(real[1])))
    real_grads = [leaf.grad for leaf in leaves]

    with FakeTensorMode() as mode:
        fake_inputs = [mode.from_tensor(t) for t in (q, k, v, dout, mask)]
        fq, fk, fv = (t.requires_grad_() for t in fake_inputs[:3])
        fake = flash_attention(
            fq, fk, fv, attn_mask=fake_inputs[4], is_causal=True, return_lse=True
        )
        fake_grads = torch.autograd.grad(fake[0], (fq, fk, fv), fake_inputs[3])
    assert fake[1].dtype == torch.float32 and fake[1].shape == (2, 3, len_q)
    for got, want in zip((*fake, *fake_grads), (*real, *real_grads), strict=True):
        assert _metadata(got) == _metadata(want)
