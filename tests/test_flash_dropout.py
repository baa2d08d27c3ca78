"""Dropout in the flash-attention kernel (``dropout_p``), under the interpreter or on a GPU.

SDPA's random numbers are not ours, so dropout is checked against a float64 reference fed the
kernels' own keep-mask (``dropout_keep_mask``, the same Philox helper in a kernel of its own),
with the criterion of tests/flash_reference.py (kernel error <= 2 x the naive error in
the kernel's dtype + a floor), forward and every gradient; statistically (the keep rate, the
1 / (1 - p) scaling); for reproducibility under ``torch.manual_seed``; and on bad input.
"""

import functools
import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from flash_reference import FLOOR_F32, max_err, naive_attention, output_and_grads

from kernels import flash_attention
from kernels.common import runtime
from kernels.common.tuning import LaunchConfig
from kernels.flash_attention.dropout import draw_seed_offset, dropout_keep_mask

fa_configs = importlib.import_module("kernels.flash_attention.configs")


def random_inputs(device, shape_q, shape_kv, dtype, seed=0):
    """q (b, h, len_q, d), k and v (b, h_kv, len_k, d), dout like q: standard normal."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v, dout = (
        torch.randn(shape, generator=gen).to(device, dtype)
        for shape in (shape_q, shape_kv, shape_kv, shape_q)
    )
    return q, k, v, dout


def next_call_keep_mask(rng_seed, q, k, dropout_p):
    """torch.manual_seed(rng_seed), then the keep-mask the next flash_attention call on q, k
    with this dropout_p uses (the call draws its seed and offset with one torch.randint)."""
    torch.manual_seed(rng_seed)
    seed, offset = draw_seed_offset()
    b, h, len_q, _ = q.shape
    keep = dropout_keep_mask(seed, offset, b, h, len_q, k.shape[2], dropout_p, q.device)
    torch.manual_seed(rng_seed)
    return keep


def assert_dropout_within_2x_naive_error(q, k, v, dout, dropout_p, rng_seed=0, **kwargs):
    """flash_attention with dropout vs naive_attention fed its keep-mask: out, dq, dk, dv
    (and a float mask's gradient) within 2 x the same-dtype naive error of float64 + floor."""
    dtype = q.dtype
    keep = next_call_keep_mask(rng_seed, q, k, dropout_p)
    reference = functools.partial(naive_attention, keep=keep, dropout_p=dropout_p)
    exact = output_and_grads(reference, q, k, v, dout, torch.float64, **kwargs)
    naive = output_and_grads(reference, q, k, v, dout, dtype, **kwargs)
    torch.manual_seed(rng_seed)
    kernel = functools.partial(flash_attention, dropout_p=dropout_p)
    ours = output_and_grads(kernel, q, k, v, dout, dtype, **kwargs)
    names = ("out", "dq", "dk", "dv", "dmask")[: len(exact)]
    for name, got, ref, base in zip(names, ours, exact, naive, strict=True):
        assert torch.isfinite(got).all(), f"{name} has NaN/Inf"
        err, base_err = max_err(got, ref), max_err(base, ref)
        floor = max(4 * torch.finfo(dtype).eps, FLOOR_F32) * max(1.0, ref.abs().max().item())
        assert err <= 2 * base_err + floor, (
            f"{name}: kernel error {err:.3g} > 2 x naive {dtype} error {base_err:.3g} + {floor:.3g}"
        )


# ----------------------------------------------------------------------------- equality

# (len_q, len_k, head_dim, heads, heads_kv, mask, is_causal, dtype, dropout_p): odd lengths;
# one case longer than the interpreter's 64 x 64 blocks, so both loop stages run with dropout.
EQUALITY_CASES = {
    "plain": (37, 53, 24, 2, 2, None, False, torch.float32, 0.3),
    "causal-gqa": (29, 71, 16, 4, 2, None, True, torch.bfloat16, 0.5),
    "bool-mask": (33, 70, 40, 2, 2, "bool", False, torch.float16, 0.2),
    "float-mask-grad-causal": (21, 66, 16, 2, 2, "float", True, torch.float32, 0.4),
    "key-mask-empty-row-gqa-causal": (70, 130, 32, 3, 1, "keys", True, torch.float32, 0.1),
}


def attention_mask(kind, batch, heads, len_q, len_k, device):
    """A boolean full mask (~70% True), a float bias shared by the batch (~20% -inf), or a
    (batch, 1, 1, len_k) key mask whose last batch row hides every key."""
    gen = torch.Generator().manual_seed(11)
    if kind == "bool":
        return (torch.rand(batch, heads, len_q, len_k, generator=gen) < 0.7).to(device)
    if kind == "float":
        bias = torch.randn(1, heads, len_q, len_k, generator=gen)
        return bias.masked_fill(torch.rand(bias.shape, generator=gen) < 0.2, -math.inf).to(device)
    keys = torch.rand(batch, 1, 1, len_k, generator=gen) < 0.7
    keys[-1] = False
    return keys.to(device)


@pytest.mark.parametrize("case", list(EQUALITY_CASES.values()), ids=list(EQUALITY_CASES))
def test_output_and_every_gradient_equal_a_float64_reference_fed_the_same_keep_mask(
    case, kernel_device
):
    len_q, len_k, head_dim, heads, heads_kv, mask, is_causal, dtype, p = case
    q, k, v, dout = random_inputs(
        kernel_device, (2, heads, len_q, head_dim), (2, heads_kv, len_k, head_dim), dtype
    )
    kwargs = dict(is_causal=is_causal, enable_gqa=heads != heads_kv)
    if mask is not None:
        kwargs["attn_mask"] = attention_mask(mask, 2, heads, len_q, len_k, kernel_device)
    assert_dropout_within_2x_naive_error(q, k, v, dout, p, **kwargs)


def test_a_value_head_dim_of_its_own_with_dropout_equals_the_reference(kernel_device):
    """d_v = 40 beside d = 16 (the keep bits index (query, key) pairs, not head dims)."""
    q, k, _, _ = random_inputs(kernel_device, (2, 2, 21, 16), (2, 2, 37, 16), torch.float32)
    _, v, _, dout = random_inputs(kernel_device, (2, 2, 21, 40), (2, 2, 37, 40), torch.float32)
    assert_dropout_within_2x_naive_error(q, k, v, dout, 0.3, is_causal=True)


def test_backward_regenerates_the_forwards_mask_whatever_the_generator_did_since(kernel_device):
    """The backward reads the seed the forward drew, not the generator: draws between the two
    change nothing (a backward that redrew would fail the reference)."""
    q, k, v, dout = random_inputs(kernel_device, (1, 2, 19, 16), (1, 2, 23, 16), torch.float32)
    keep = next_call_keep_mask(3, q, k, 0.5)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = flash_attention(*leaves, dropout_p=0.5)
    torch.manual_seed(4)
    torch.rand(10)
    out.backward(dout)
    exact = [t.double().requires_grad_() for t in (q, k, v)]
    naive_attention(*exact, keep=keep, dropout_p=0.5).backward(dout.double())
    for ours, ref in zip(leaves, exact, strict=True):
        assert max_err(ours.grad, ref.grad) < 1e-5


# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("dropout_p", [0.1, 0.5, 0.9])
def test_keep_rate_is_one_minus_p_within_five_standard_errors(dropout_p, kernel_device):
    """On a (2, 4, 128, 256) mask; neighbouring pairs (along keys and along queries) are both
    kept as often as independent draws would be, (1 - p)^2."""
    torch.manual_seed(0)
    seed, offset = draw_seed_offset()
    keep = dropout_keep_mask(seed, offset, 2, 4, 128, 256, dropout_p, kernel_device).double()
    rate = 1.0 - dropout_p
    n = keep.numel()
    assert abs(keep.mean().item() - rate) < 5 * math.sqrt(rate * (1 - rate) / n)
    both = rate**2
    for pairs in (keep[..., 1:] * keep[..., :-1], keep[..., 1:, :] * keep[..., :-1, :]):
        assert abs(pairs.mean().item() - both) < 5 * math.sqrt(both * (1 - both) / pairs.numel())


def test_output_is_the_undropped_probabilities_times_keep_over_one_minus_p(kernel_device):
    """V = identity makes the output the dropped probabilities themselves: the zeros are
    exactly the keep-mask's drops, every kept one is P / (1 - p), and over 64 heads holding
    the same q, k the mean is the undropped output within five standard errors."""
    p, heads, n = 0.4, 64, 16
    q, k, _, _ = random_inputs(kernel_device, (1, 1, n, n), (1, 1, n, n), torch.float32)
    q, k = q.expand(1, heads, n, n).contiguous(), k.expand(1, heads, n, n).contiguous()
    v = torch.eye(n, device=kernel_device).expand(1, heads, n, n).contiguous()
    undropped = flash_attention(q, k, v)
    keep = next_call_keep_mask(5, q, k, p)
    out = flash_attention(q, k, v, dropout_p=p)
    assert torch.equal(out != 0, keep)
    assert torch.allclose(out[keep], (undropped / (1 - p))[keep], rtol=1e-5, atol=0)
    standard_error = undropped[0] * math.sqrt(p / (1 - p) / heads)
    assert ((out.mean(dim=1)[0] - undropped[0]).abs() <= 5 * standard_error).all()


# ----------------------------------------------------------------------------- reproducibility


def outputs_and_grads(q, k, v, dout, dropout_p, attention=flash_attention, **kwargs):
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = attention(*leaves, dropout_p=dropout_p, **kwargs)
    out.backward(dout)
    return [out, *(leaf.grad for leaf in leaves)]


def test_same_manual_seed_gives_identical_outputs_and_gradients(kernel_device):
    q, k, v, dout = random_inputs(kernel_device, (2, 2, 17, 16), (2, 2, 17, 16), torch.float16)
    torch.manual_seed(7)
    first = outputs_and_grads(q, k, v, dout, 0.3, is_causal=True)
    torch.manual_seed(7)
    second = outputs_and_grads(q, k, v, dout, 0.3, is_causal=True)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_other_seeds_and_consecutive_calls_give_other_masks(kernel_device):
    q, k, v, _ = random_inputs(kernel_device, (1, 2, 17, 16), (1, 2, 17, 16), torch.float32)
    torch.manual_seed(1)
    first = flash_attention(q, k, v, dropout_p=0.5)
    following = flash_attention(q, k, v, dropout_p=0.5)
    torch.manual_seed(2)
    other_seed = flash_attention(q, k, v, dropout_p=0.5)
    assert not torch.equal(first, following) and not torch.equal(first, other_seed)
    assert not torch.equal(next_call_keep_mask(1, q, k, 0.5), next_call_keep_mask(2, q, k, 0.5))


def test_fullgraph_compiled_call_draws_at_run_time_and_equals_eager(kernel_device):
    """Under torch.compile(fullgraph=True) the seed draw is traced, not frozen into the graph:
    consecutive compiled calls get other masks, and after the same torch.manual_seed a compiled
    call equals the eager call, output and gradients (the aot_eager backend: Dynamo and
    AOTAutograd capture the graph as Inductor would be handed it)."""
    q, k, v, dout = random_inputs(kernel_device, (1, 2, 9, 16), (1, 2, 12, 16), torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(flash_attention, fullgraph=True, backend="aot_eager")
    try:
        torch.manual_seed(5)
        got = outputs_and_grads(q, k, v, dout, 0.4, is_causal=True, attention=compiled)
        following = compiled(q, k, v, dropout_p=0.4, is_causal=True)
    finally:
        torch._dynamo.reset()
    torch.manual_seed(5)
    want = outputs_and_grads(q, k, v, dout, 0.4, is_causal=True)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(got[0], following)


def test_dropout_p_0_draws_nothing_and_compiles_no_dropout_code(kernel_device):
    """p == 0 leaves torch's generator alone, launches every kernel with HAS_DROPOUT=False,
    and gives exactly the result without the argument; p > 0 launches with HAS_DROPOUT=True."""
    q, k, v, dout = random_inputs(kernel_device, (1, 2, 9, 16), (1, 2, 12, 16), torch.float32)
    seen = []

    def spy(launch):
        seen.append(launch.meta.get("HAS_DROPOUT"))
        return launch.run()

    state = torch.get_rng_state()
    with runtime.hooked(runtime.Hook(spy)):
        without = outputs_and_grads(q, k, v, dout, 0.0)
        assert torch.equal(torch.get_rng_state(), state)
        assert set(seen) == {False, None}  # forward, dK/dV, dQ; the delta pass has no dropout
        plain = outputs_and_grads(q, k, v, dout, 0)
        for a, b in zip(without, plain, strict=True):
            assert torch.equal(a, b)
        seen.clear()
        outputs_and_grads(q, k, v, dout, 0.1)
    assert set(seen) == {True, None}


def test_dropout_p_1_gives_zeros_zero_gradients_and_the_undropped_lse_as_sdpa(
    kernel_device, monkeypatch
):
    q, k, v, dout = random_inputs(kernel_device, (1, 2, 9, 16), (1, 2, 40, 16), torch.float32)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = flash_attention(*leaves, dropout_p=1.0, return_lse=True)
    out.backward(dout)
    assert torch.equal(out, torch.zeros_like(out))
    assert all(torch.equal(leaf.grad, torch.zeros_like(leaf)) for leaf in leaves)
    # HAS_DROPOUT is part of the launch's tuning key, so on a GPU the two calls may run other
    # block sizes, which sum each row's 40 keys in another order: equal up to float32 rounding
    # (here the undropped call is forced to 16-key blocks to be sure of it; bit-equal fails).
    monkeypatch.setattr(fa_configs, "for_kernel", lambda *args: [LaunchConfig(64, 16, 4, 1)])
    _, undropped_lse = flash_attention(q, k, v, return_lse=True)
    torch.testing.assert_close(lse, undropped_lse, rtol=1e-6, atol=1e-6)
    sdpa = F.scaled_dot_product_attention(q.cpu(), k.cpu(), v.cpu(), dropout_p=1.0)
    assert torch.equal(sdpa, torch.zeros_like(sdpa))


def test_dropout_launches_take_their_spill_free_configs_where_the_plain_table_spills():
    """On an sm_90 GPU (as its tables list them) dropout calls list the compile gate's
    spill-free configs (configs.CONFIGS_DROPOUT_16BIT): 64x16 w4 s1 for the d <= 64 dK/dV pass,
    128x32 w8 s2 for the d <= 64 forward (a float bias's) and 64x32 w8 s2 for its dQ pass, and
    64x16 w8 s2 for the d > 128 forward; each keeps the plain table's first choice."""
    arch, dtype = 90, torch.bfloat16
    for kernel, block_d, spill_free in (
        ("dkdv", 64, LaunchConfig(64, 16, 4, 1)),
        ("fwd", 64, LaunchConfig(128, 32, 8, 2)),
        ("dq_bias", 64, LaunchConfig(64, 32, 8, 2)),
        ("fwd", 256, LaunchConfig(64, 16, 8, 2)),
    ):
        with_dropout, plain = (
            fa_configs.candidates_for(kernel, arch, block_d, dtype, p) for p in (True, False)
        )
        assert spill_free in with_dropout, (kernel, block_d)
        # The plain d <= 64 dK/dV table now lists 64x16 w4 s1 too, last (packed sequences with
        # every score option spilled in its other three); the others still lack theirs.
        if kernel != "dkdv":
            assert spill_free not in plain and with_dropout[0] == plain[0], (kernel, block_d)


@pytest.mark.parametrize("arch", [80, 86, 89])
def test_a_float_bias_gradient_with_dropout_at_width_128_takes_narrow_dq_tiles_before_sm90(arch):
    """sm_80-89: every config of the plain dQ table spilled for this call (8-792 B); its
    dropout list is the measured spill-free 32- and 16-row tiles, and nothing else."""
    dtype = torch.float16
    with_dropout, plain = (
        fa_configs.candidates_for("dq_bias", arch, 128, dtype, p) for p in (True, False)
    )
    assert with_dropout[0] == LaunchConfig(32, 32, 8, 2)
    assert not set(with_dropout) & set(plain)


@pytest.mark.parametrize("arch", [86, 89])
def test_a_float_bias_gradient_with_dropout_at_width_256_lists_a_spill_free_dq_tile_on_sm86_89(
    arch,
):
    """sm_86/89: with 64x32 w8 s2 over their shared memory, every other config of the plain dQ
    table spilled for this call (16-48 B); 32x16 w8 s2, spill-free there, comes first."""
    dtype = torch.bfloat16
    with_dropout, plain = (
        fa_configs.candidates_for("dq_bias", arch, 256, dtype, p) for p in (True, False)
    )
    assert with_dropout[0] == LaunchConfig(32, 16, 8, 2) and with_dropout[0] not in plain


def test_a_wide_float32_forward_lists_no_tile_over_sm90_shared_memory():
    """float32 at head dims > 128: the forward's 64x32 w4 s2 needs 246-271 KB on sm_90 (compile
    gate), over its 227 KB, and is not listed there; at d <= 128 it is."""
    arch, dtype = 90, torch.float32
    assert LaunchConfig(64, 32, 4, 2) not in fa_configs.candidates_for("fwd", arch, 256, dtype)
    assert LaunchConfig(64, 32, 4, 2) in fa_configs.candidates_for("fwd", arch, 128, dtype)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "dropout_p,error,message",
    [
        (-0.1, ValueError, r"dropout_p must be in \[0, 1\], got -0.1"),
        (1.5, ValueError, r"dropout_p must be in \[0, 1\], got 1.5"),
        (math.nan, ValueError, r"dropout_p must be in \[0, 1\], got nan"),
        ("0.1", TypeError, "dropout_p must be a float in \\[0, 1\\], got str"),
        (True, TypeError, "got bool"),
        (None, TypeError, "got NoneType"),
    ],
    ids=["negative", "above-1", "nan", "string", "bool", "none"],
)
def test_bad_dropout_p_raises_a_clear_error_before_any_launch(
    dropout_p, error, message, kernel_device
):
    q, k, v, _ = random_inputs(kernel_device, (1, 1, 4, 16), (1, 1, 4, 16), torch.float32)

    def no_launch(launch):
        raise AssertionError(f"{launch.kernel} was launched")

    with runtime.hooked(runtime.Hook(no_launch)), pytest.raises(error, match=message):
        flash_attention(q, k, v, dropout_p=dropout_p)
