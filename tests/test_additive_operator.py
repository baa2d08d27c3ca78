"""The fused additive-attention kernel as torch.library operators: opcheck on the forward and
backward operators (schema, fake implementation, autograd registration, AOT dispatch), and a
fullgraph torch.compile call that equals eager with every gradient.
"""

import importlib

import pytest
import torch
from additive_reference import (
    DEVICE,
    SLOW,
    random_inputs,
    random_key_mask,
)

from kernels import additive_attention

# The reference helpers build their inputs on the kernel_device fixture's device (devices.py).
pytestmark = pytest.mark.usefixtures("kernel_device")

aa_function = importlib.import_module("kernels.additive_attention.function")  # the operators


# ----------------------------------------------------------------------------- as an operator


@SLOW  # the default run checks the fake implementation through torch.compile (below)
@pytest.mark.parametrize(
    "len_q,len_k,masked,is_causal",
    [(7, 5, True, True), (1, 9, False, False)],
    ids=["ragged-masked-causal", "one-query"],
)
def test_forward_and_backward_operators_pass_opcheck(len_q, len_k, masked, is_causal):
    """torch.library.opcheck: schema, fake implementation vs the real one, autograd
    registration, and AOT dispatch with dynamic shapes (what torch.compile relies on)."""
    qf, kf, w, v, dout = random_inputs(2, 2, len_q, len_k, 8, 16, torch.float32)
    mask = random_key_mask(2, len_k) if masked else None
    leaves = [t.clone().requires_grad_() for t in (qf, kf, w, v)]
    torch.library.opcheck(aa_function._forward_op, (*leaves, mask, is_causal))
    out, lse = aa_function._forward_op(qf, kf, w, v, mask, is_causal)
    dlse = torch.randn(lse.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    torch.library.opcheck(
        aa_function._backward_op, (qf, kf, w, v, mask, is_causal, out, lse, dout, dlse)
    )


def test_compiled_fullgraph_call_equals_eager_with_gradients():
    qf, kf, w, v, dout = random_inputs(2, 2, 6, 9, 8, 16, torch.float32, seed=4)
    mask = random_key_mask(2, 9, all_masked_row=False)

    def run(fn):
        leaves = [t.clone().requires_grad_() for t in (qf, kf, w, v)]
        out = fn(*leaves)
        out.backward(dout)
        return [out, *(leaf.grad for leaf in leaves)]

    def call(*t):
        return additive_attention(*t, attn_mask=mask, is_causal=True)

    torch._dynamo.reset()
    compiled = torch.compile(call, fullgraph=True, backend="aot_eager")
    for got, want in zip(run(compiled), run(call), strict=True):
        assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()
