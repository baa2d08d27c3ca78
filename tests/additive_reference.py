"""What the fused additive-attention kernel's tests share (not a test module: pytest collects
only tests/test_*.py): the float64 reference, random inputs and key masks, and the criterion.

Criterion, as for the flash kernel (tests/flash_reference.py): the kernel's largest error
against a float64 computation of the same inputs is at most twice that of the naive additive
path run in the kernel's dtype, plus a small floor; nothing is ever NaN. Without CUDA the
kernels run under the Triton interpreter, so shapes and feature sizes stay small.

Test files import it by its name, as tests/flash_reference.py explains; a test module that
checks with assert_close_as_flash_attention_does also imports the autouse fixture
report_largest_errors, which prints that module's largest errors with -s.
"""

import pytest
import torch
from devices import KERNEL_DEVICE
from flash_reference import allowed_pairs, max_err, random_key_mask  # noqa: F401 (the flash tests' own)

from kernels import additive_attention

HAS_CUDA = torch.cuda.is_available()
DEVICE = KERNEL_DEVICE  # the kernel_device fixture's: test modules request it (devices.py)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SLOW = pytest.mark.slow  # the long sweeps: python -m pytest -m slow


# ----------------------------------------------------------------------------- reference


def additive_scores(qf, kf, w):
    """s_ij = sum_c w_c tanh(qf_ic + kf_jc), through the full (b, h, i, j, a) tensor."""
    hidden = torch.tanh(qf[:, :, :, None, :] + kf[:, :, None, :, :])
    return (hidden * w[None, :, None, None, :]).sum(-1)


def naive_additive(qf, kf, w, v, attn_mask=None, is_causal=False):
    """Textbook additive attention in the inputs' dtype; a row with no allowed key gets zeros."""
    scores = additive_scores(qf, kf, w.to(qf.dtype))
    allowed = allowed_pairs(qf.shape[-2], kf.shape[-2], attn_mask, is_causal, qf.device)
    scores = scores.masked_fill(~allowed, float("-inf"))
    scores = scores.masked_fill(~allowed.any(-1, keepdim=True), 0.0)  # no softmax of all -inf
    probs = torch.softmax(scores, dim=-1).masked_fill(~allowed, 0.0)
    return probs @ v


# ----------------------------------------------------------------------------- helpers


def random_inputs(batch, heads, len_q, len_k, a, value_dim, dtype, seed=0):
    """Features, score vector, values and an output gradient; features ~ N(0, 1) as after a
    freshly initialised projection, so tanh spans its curved range."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(DEVICE, dtype)

    qf, kf = randn(batch, heads, len_q, a), randn(batch, heads, len_k, a)
    w, v = randn(heads, a), randn(batch, heads, len_k, value_dim)
    dout = randn(batch, heads, len_q, value_dim)
    return qf, kf, w, v, dout


def output_and_grads(attn, qf, kf, w, v, dout, dtype, **kwargs):
    """attn run on copies cast to dtype; (out, dqf, dkf, dw, dv) in float64."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (qf, kf, w, v)]
    out = attn(*leaves, **kwargs)
    out.backward(dout.to(dtype))
    return [t.double() for t in (out, *(leaf.grad for leaf in leaves))]


# As in flash_reference.py: 4 ulps of the dtype but no less than FLOOR_F32, relative to
# max(1, largest reference value). Naive attention can be exact where the kernel cannot: with
# one key, dS = P (dP - rowsum(dO * O)) cancels to exactly 0 in naive softmax's backward but is
# a difference of two float32 sums of size |dP| = |dO . v| in the kernel. So the gradients get
# 8 float32 ulps of that size on top: times |w| for the feature gradients, times sqrt(len_q)
# for the sums over query rows (dkf, dw). Errors from a real bug are far larger.
FLOOR_F32 = 1e-5
CANCELLATION_ULPS = 8 * torch.finfo(torch.float32).eps


def cancellation_scales(qf, w, v, dout):
    """Per output, the size of the float32 terms that cancel in the kernel's dS."""
    dp = (dout.double() @ v.double().transpose(-1, -2)).abs().max().item() if v.numel() else 0.0
    w_max = w.double().abs().max().item() if w.numel() else 0.0
    rows = max(1, qf.shape[-2]) ** 0.5
    return {"out": 0.0, "dqf": dp * w_max, "dkf": dp * w_max * rows, "dw": dp * rows, "dv": 0.0}


NAMES = ("out", "dqf", "dkf", "dw", "dv")
ERRORS = {}  # (dtype, tensor) -> kernel errors seen; printed at the end with -s


def assert_close_as_flash_attention_does(qf, kf, w, v, dout, **kwargs):
    """Kernel error vs float64 <= 2 x naive error in the same dtype + floor, for out and grads."""
    dtype = qf.dtype
    exact = output_and_grads(naive_additive, qf, kf, w, v, dout, torch.float64, **kwargs)
    naive = output_and_grads(naive_additive, qf, kf, w, v, dout, dtype, **kwargs)
    ours = output_and_grads(additive_attention, qf, kf, w, v, dout, dtype, **kwargs)
    cancellation = cancellation_scales(qf, w, v, dout)
    for name, got, ref, base in zip(NAMES, ours, exact, naive, strict=True):
        assert torch.isfinite(got).all(), f"{name} has NaN/Inf"
        err, base_err = max_err(got, ref), max_err(base, ref)
        scale = max(1.0, ref.abs().max().item() if ref.numel() else 0.0)
        floor = max(4 * torch.finfo(dtype).eps, FLOOR_F32) * scale
        floor += CANCELLATION_ULPS * cancellation[name]
        ERRORS.setdefault((dtype, name), []).append((err, base_err))
        assert err <= 2 * base_err + floor, (
            f"{name}: kernel error {err:.3g} > 2 x naive {dtype} error {base_err:.3g} + {floor:.3g}"
        )


@pytest.fixture(scope="module", autouse=True)
def report_largest_errors():
    """Autouse in each test module that imports it: with -s, prints the largest kernel errors
    that module's tests saw (ERRORS is emptied as each such module starts)."""
    ERRORS.clear()
    yield
    if ERRORS:
        print("\nlargest additive-kernel error vs float64 (naive same-dtype error beside it):")
        for (dtype, name), errs in sorted(ERRORS.items(), key=str):
            err, base = max(errs)
            print(f"  {str(dtype):15s} {name:3s} {err:.3g}  (naive {base:.3g})")
