"""What the flash-attention kernel's tests share (not a test module: pytest collects only
tests/test_*.py): the float64 reference, random inputs and masks, the criterion, and a spy on
the pointers the kernel reads.

Criterion (as in flash-attention's own tests): the kernel's largest error against a float64
computation of the same inputs is at most twice that of naive attention run in the kernel's
dtype, plus a small floor (see FLOOR_F32); and nothing is ever NaN. Without CUDA the kernels
run under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so shapes stay
small; the ``cuda`` tests add long sequences where a GPU is present.

Test files import it by its name (``from flash_reference import ...``): tests/ has no
__init__.py, so pytest's default import mode (prepend) puts tests/ on sys.path. A test module
that checks with assert_close_as_flash_attention_does also imports the autouse fixture
report_largest_errors, which prints that module's largest errors with -s.
"""

import importlib

import pytest
import torch
from devices import KERNEL_DEVICE
from torch.nn.attention.bias import CausalBias, CausalVariant

from kernels import flash_attention

HAS_CUDA = torch.cuda.is_available()
DEVICE = KERNEL_DEVICE  # the kernel_device fixture's: test modules request it (devices.py)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SLOW = pytest.mark.slow  # the long sweeps: python -m pytest -m slow


# ----------------------------------------------------------------------------- reference


def allowed_pairs(
    len_q, len_k, key_mask, is_causal, device, *, bottom_right=True, window=(-1, -1)
):  # fmt: skip
    """Bool (b|1, h|1, len_q, len_k): which (query, key) pairs take part. Query i sees key j
    iff a(i) - left <= j <= a(i) + right (-1: unbounded; causal: right = 0), a(i) = i +
    len_k - len_q bottom-right (the additive kernel's causality, and this function's default)
    or i top-left."""
    i = torch.arange(len_q, device=device)[:, None] + (len_k - len_q if bottom_right else 0)
    j = torch.arange(len_k, device=device)[None, :]
    allowed = torch.ones(len_q, len_k, dtype=torch.bool, device=device)
    left, right = window
    if is_causal:
        right = 0
    if right >= 0:
        allowed = allowed & (j <= i + right)
    if left >= 0:
        allowed = allowed & (j >= i - left)
    allowed = allowed[None, None]
    if key_mask is not None:
        allowed = allowed & key_mask
    return allowed


def masked_scores(
    q, k, attn_mask, is_causal, scale, *, bottom_right=False, window=(-1, -1), softcap=0.0,
    alibi_slopes=None,
):  # fmt: skip
    """Scaled scores, softcapped (c tanh(s / c)), ALiBi's -slope |a(i) - j| added, the mask
    applied as SDPA does (boolean: False hides the pair; float: added) and the causal and
    window edges; (scores, which pairs take part)."""
    len_q, len_k = q.shape[-2], k.shape[-2]
    scores = (q @ k.transpose(-2, -1)) * scale
    if softcap > 0.0:
        scores = softcap * torch.tanh(scores / softcap)
    if alibi_slopes is not None:
        i = torch.arange(len_q, device=q.device)[:, None] + (len_k - len_q if bottom_right else 0)
        distance = (i - torch.arange(len_k, device=q.device)[None, :]).abs().to(scores.dtype)
        slopes = alibi_slopes.to(scores.dtype)
        slopes = slopes[None] if slopes.dim() == 1 else slopes  # (b|1, h)
        scores = scores - slopes[:, :, None, None] * distance
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        scores = scores + attn_mask.to(scores.dtype)
        attn_mask = None
    allowed = allowed_pairs(
        len_q, len_k, attn_mask, is_causal, q.device, bottom_right=bottom_right, window=window
    )
    scores = scores.masked_fill(~allowed, float("-inf"))
    return scores, scores != float("-inf")


def naive_attention(
    q, k, v, attn_mask=None, is_causal=False, scale=None, enable_gqa=False, *,
    window_size=(-1, -1), softcap=0.0, alibi_slopes=None, sinks=None, alignment=None,
    dropout_p=0.0, keep=None,
):  # fmt: skip
    """Textbook attention in q's dtype, with flash_attention's arguments and semantics
    (causality and the window anchored top-left unless ``alignment="bottom_right"`` or
    attn_mask is ``causal_lower_right``); a query with no allowed key gets zeros. With
    enable_gqa, k and v are repeated to q's heads (autograd sums their gradients back). Sinks
    join each row's softmax as one more logit whose value is dropped. ``keep``: with
    dropout_p, a keep-mask broadcastable to (b, h, len_q, len_k), the kernel's (the kept
    probabilities are divided by 1 - dropout_p, the others dropped, as SDPA does)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    bottom_right = alignment == "bottom_right"
    if isinstance(attn_mask, CausalBias):
        is_causal, bottom_right = True, attn_mask.variant == CausalVariant.LOWER_RIGHT
        attn_mask = None
    if enable_gqa:
        k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
    scores, allowed = masked_scores(
        q, k, attn_mask, is_causal, scale, bottom_right=bottom_right, window=tuple(window_size),
        softcap=softcap, alibi_slopes=alibi_slopes,
    )  # fmt: skip
    if sinks is not None:
        sink_column = sinks.to(scores.dtype)[None, :, None, None].expand(*scores.shape[:3], 1)
        probs = torch.softmax(torch.cat([scores, sink_column], dim=-1), dim=-1)[..., :-1]
    else:
        scores = scores.masked_fill(~allowed.any(-1, keepdim=True), 0.0)  # no softmax of -infs
        probs = torch.softmax(scores, dim=-1).masked_fill(~allowed, 0.0)
    if keep is not None:
        probs = probs * keep.to(probs.dtype) / (1.0 - dropout_p)
    return probs @ v


# ----------------------------------------------------------------------------- helpers


def random_inputs(
    batch, heads, len_q, len_k, head_dim, dtype, seed=0, heads_kv=None, value_head_dim=None
):  # fmt: skip
    """q (b, h, len_q, d), k (b, h_kv, len_k, d), v (b, h_kv, len_k, d_v), dout like the output
    (b, h, len_q, d_v): standard normal. d_v defaults to d."""
    gen = torch.Generator().manual_seed(seed)
    heads_kv = heads if heads_kv is None else heads_kv
    d_v = head_dim if value_head_dim is None else value_head_dim
    q, k, v = (
        torch.randn(batch, h, n, d, generator=gen).to(DEVICE, dtype)
        for h, n, d in (
            (heads, len_q, head_dim),
            (heads_kv, len_k, head_dim),
            (heads_kv, len_k, d_v),
        )
    )
    dout = torch.randn(batch, heads, len_q, d_v, generator=gen).to(DEVICE, dtype)
    return q, k, v, dout


def random_key_mask(batch, len_k, seed=0, all_masked_row=True):
    """(batch, 1, 1, len_k) bool, ~70% True; with batch > 1, the last row masks every key."""
    gen = torch.Generator().manual_seed(seed + 1)
    mask = torch.rand(batch, len_k, generator=gen) < 0.7
    if all_masked_row and batch > 1:
        mask[-1] = False
    return mask[:, None, None, :].to(DEVICE)


def is_float_mask(mask):
    """A float attn_mask tensor (a CausalBias is a tensor subclass, but not one)."""
    return (
        isinstance(mask, torch.Tensor)
        and not isinstance(mask, CausalBias)
        and mask.is_floating_point()
    )


def output_and_grads(attn, q, k, v, dout, dtype, **kwargs):
    """attn run on copies of q, k, v cast to dtype; (out, dq, dk, dv) in float64, then the
    gradient of a float attn_mask (cast to dtype as well) and of the sinks, when given."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    mask = kwargs.get("attn_mask")
    if is_float_mask(mask):
        kwargs = {**kwargs, "attn_mask": mask.detach().to(dtype).requires_grad_()}
        leaves.append(kwargs["attn_mask"])
    sinks = kwargs.get("sinks")
    if sinks is not None:  # float32 stays float32 (the kernel takes it with any q dtype)
        sink_dtype = torch.float64 if dtype == torch.float64 else sinks.dtype
        kwargs = {**kwargs, "sinks": sinks.detach().to(sink_dtype).requires_grad_()}
        leaves.append(kwargs["sinks"])
    out = attn(*leaves[:3], **kwargs)
    out.backward(dout.to(dtype))
    return [t.double() for t in (out, *(leaf.grad for leaf in leaves))]


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def random_mask(shape, kind, seed=0):
    """A boolean mask (~70% True) or a float one (standard normal, ~20% -inf) of this shape."""
    gen = torch.Generator().manual_seed(seed + 7)
    if kind == "bool":
        return (torch.rand(shape, generator=gen) < 0.7).to(DEVICE)
    bias = torch.randn(shape, generator=gen)
    return bias.masked_fill(torch.rand(shape, generator=gen) < 0.2, float("-inf")).to(DEVICE)


# Naive attention can be exact where the kernel cannot: with a single key, dq = 0 by an exact
# cancellation in softmax's backward, while the kernel's dP and rowsum(dO * O) are two different
# float32 sums. So the floor is 4 ulps of the dtype but no less than this, both relative to
# max(1, largest reference value); errors from a real bug are orders of magnitude larger. To it
# the gradients add what storing the output in the dtype costs them (delta_rounding_allowance).
FLOOR_F32 = 1e-5


def delta_rounding_allowance(reference, q, k, v, dout, out64, dtype, kwargs) -> dict:
    """What storing the output in ``dtype`` costs the gradients, by name: FlashAttention's
    backward (this kernel's) reads delta_i = rowsum(dO_i * O_i) from the output it stored, O
    rounded to the dtype, where naive attention's autograd keeps P and never rounds O. The
    rounding moves delta_i by e_i = rowsum(dO_i * (round(O_i) - O_i)), computed here exactly
    from the float64 output, and dS_ij by -P_ij e_i: so dq_i by at most scale |e_i| max |k|,
    dk_j by at most scale sum_i P_ij |e_i| max |q_i| (the sum read exactly from one more float64
    backward: dV_j's first column under the upstream gradient |e_i| max |q_i| on O_i's first
    column), and a float mask's gradient by at most max |e|. (Found by hypothesis in bf16 and
    fp16, one query over 3 keys: |O| 2.4, |dq| 0.29, the kernel's dq error 0.034 = the bound.)"""
    if dtype == torch.float64:
        return {}
    dout64 = dout.double()
    rounding = (dout64 * (out64.to(dtype).double() - out64)).sum(-1).abs()
    scale = kwargs.get("scale", kwargs.get("softmax_scale"))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    probe = torch.zeros_like(dout64)
    probe[..., 0] = rounding * q.double().abs().amax(-1)
    dv = output_and_grads(reference, q, k, v, probe, torch.float64, **kwargs)[3]
    largest = lambda t: t.abs().max().item() if t.numel() else 0.0  # noqa: E731
    return {
        "dq": scale * largest(rounding) * largest(k),
        "dk": scale * largest(dv[..., 0]),
        "dmask": largest(rounding),
    }


def assert_close_as_flash_attention_does(
    q, k, v, dout, reference=None, kernel=flash_attention, **kwargs
):  # fmt: skip
    """Kernel error vs float64 <= 2 x naive error in the same dtype + floor, for out and grads.
    ``reference`` (default: naive_attention) computes both the float64 and the same-dtype run;
    ``kernel`` (default: flash_attention) is the function under test, called as it is."""
    dtype = q.dtype
    reference = reference or naive_attention
    exact = output_and_grads(reference, q, k, v, dout, torch.float64, **kwargs)
    naive = output_and_grads(reference, q, k, v, dout, dtype, **kwargs)
    ours = output_and_grads(kernel, q, k, v, dout, dtype, **kwargs)
    allowance = delta_rounding_allowance(reference, q, k, v, dout, exact[0], dtype, kwargs)
    names = ["out", "dq", "dk", "dv"]
    if is_float_mask(kwargs.get("attn_mask")):
        names.append("dmask")
    if kwargs.get("sinks") is not None:
        names.append("dsinks")
    for name, got, ref, base in zip(names, ours, exact, naive, strict=True):
        assert torch.isfinite(got).all(), f"{name} has NaN/Inf"
        err, base_err = max_err(got, ref), max_err(base, ref)
        scale = max(1.0, ref.abs().max().item() if ref.numel() else 0.0)
        floor = max(4 * torch.finfo(dtype).eps, FLOOR_F32) * scale + allowance.get(name, 0.0)
        ERRORS.setdefault((dtype, name), []).append(err)
        assert err <= 2 * base_err + floor, (
            f"{name}: kernel error {err:.3g} > 2 x naive {dtype} error {base_err:.3g} + {floor:.3g}"
        )


ERRORS = {}  # (dtype, tensor) -> kernel errors seen; printed at the end with -s


@pytest.fixture(scope="module", autouse=True)
def report_largest_errors():
    """Autouse in each test module that imports it: with -s, prints the largest kernel errors
    that module's tests saw (ERRORS is emptied as each such module starts)."""
    ERRORS.clear()
    yield
    if ERRORS:
        print("\nlargest kernel error vs float64 reference:")
        for (dtype, name), errs in sorted(ERRORS.items(), key=str):
            print(f"  {str(dtype):15s} {name:3s} {max(errs):.3g}")


def kernel_input_pointers(monkeypatch) -> list[int]:
    """The data pointers of the q, k, v that each flash_attention forward launch gets (the list
    fills as the kernel runs): the caller's, when nothing is copied."""
    function = importlib.import_module("kernels.flash_attention.function")
    seen, launch_forward = [], function.launch_forward

    def spy(q, k, v, *args, **kwargs):
        seen.extend(t.data_ptr() for t in (q, k, v))
        return launch_forward(q, k, v, *args, **kwargs)

    monkeypatch.setattr(function, "launch_forward", spy)
    return seen


# ----------------------------------------------------------------------------- FlashAttention-2


def fa2_reference(
    q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
    softcap=0.0, alibi_slopes=None, keep=None, sinks=None,
):  # fmt: skip
    """FlashAttention-2's ``flash_attn_func`` computed naively in q's dtype
    (:func:`naive_attention` on (b, h, n, d) views): q (b, n_q, h, d), k and v (b, n_k, h_k,
    d|d_v), h_k dividing h; out (b, n_q, h, d_v); causality, the window and ALiBi anchored
    bottom-right. ``keep``: with dropout, the (b, h, n_q, n_k) keep-mask; ``sinks`` (h,):
    flash_attention's sinks (not FlashAttention-2's)."""
    query, key, value = (t.transpose(1, 2) for t in (q, k, v))
    out = naive_attention(
        query, key, value, is_causal=causal, scale=softmax_scale, enable_gqa=True,
        window_size=window_size, softcap=softcap, alibi_slopes=alibi_slopes,
        alignment="bottom_right", dropout_p=dropout_p, keep=keep, sinks=sinks,
    )  # fmt: skip
    return out.transpose(1, 2)
