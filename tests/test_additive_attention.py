"""The fused additive-attention kernel against an independent float64 reference.

Criterion, as for the flash kernel (tests/test_flash_attention.py): the kernel's largest error
against a float64 computation of the same inputs is at most twice that of the naive additive
path run in the kernel's dtype, plus a small floor; nothing is ever NaN. Without CUDA the
kernels run under the Triton interpreter, so shapes and feature sizes stay small.
"""

import importlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import additive_attention
from kernels.launch import LaunchConfig

aa = importlib.import_module("kernels.additive_attention.launcher")  # buffers and launches
aa_configs = importlib.import_module("kernels.additive_attention.configs")
aa_function = importlib.import_module("kernels.additive_attention.function")

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SLOW = pytest.mark.slow  # the long sweeps: python -m pytest -m slow


# ----------------------------------------------------------------------------- reference


def allowed_pairs(len_q, len_k, key_mask, is_causal, device):
    """Bool (b|1, h|1, len_q, len_k): which (query, key) pairs take part."""
    allowed = torch.ones(len_q, len_k, dtype=torch.bool, device=device)
    if is_causal:  # bottom-right aligned: query i sees keys j <= i + len_k - len_q
        i = torch.arange(len_q, device=device)[:, None]
        j = torch.arange(len_k, device=device)[None, :]
        allowed = j <= i + (len_k - len_q)
    allowed = allowed[None, None]
    return allowed if key_mask is None else allowed & key_mask


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


def random_key_mask(batch, len_k, seed=0, all_masked_row=True):
    """(batch, 1, 1, len_k) bool, ~70% True; with batch > 1 the last row masks every key."""
    gen = torch.Generator().manual_seed(seed + 1)
    mask = torch.rand(batch, len_k, generator=gen) < 0.7
    if all_masked_row and batch > 1:
        mask[-1] = False
    return mask[:, None, None, :].to(DEVICE)


def output_and_grads(attn, qf, kf, w, v, dout, dtype, **kwargs):
    """attn run on copies cast to dtype; (out, dqf, dkf, dw, dv) in float64."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (qf, kf, w, v)]
    out = attn(*leaves, **kwargs)
    out.backward(dout.to(dtype))
    return [t.double() for t in (out, *(leaf.grad for leaf in leaves))]


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


# As in test_flash_attention.py: 4 ulps of the dtype but no less than FLOOR_F32, relative to
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
def _report_largest_errors():
    yield
    if ERRORS:
        print("\nlargest additive-kernel error vs float64 (naive same-dtype error beside it):")
        for (dtype, name), errs in sorted(ERRORS.items(), key=str):
            err, base = max(errs)
            print(f"  {str(dtype):15s} {name:3s} {err:.3g}  (naive {base:.3g})")


# ----------------------------------------------------------------------------- parity

# (len_q, len_k, a, value_dim): decoding (one query), equal odd lengths, and ragged
# cross-attention both ways across several 64-blocks; feature sizes and value dims that are
# not powers of two. Every test run checks decoding and one ragged pair; the equal lengths and
# the other ragged order run under the slow marker.
CASES = [
    (1, 7, 8, 16),
    pytest.param(37, 37, 12, 24, marks=SLOW),
    pytest.param(70, 100, 8, 40, marks=SLOW),
    (100, 70, 5, 16),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("masked,is_causal", [(False, False), (True, True)])
@pytest.mark.parametrize("len_q,len_k,a,value_dim", CASES)
def test_output_and_grads_within_2x_naive_error_of_float64_reference(
    len_q, len_k, a, value_dim, masked, is_causal, dtype
):
    qf, kf, w, v, dout = random_inputs(2, 2, len_q, len_k, a, value_dim, dtype)
    mask = random_key_mask(2, len_k) if masked else None
    assert_close_as_flash_attention_does(qf, kf, w, v, dout, attn_mask=mask, is_causal=is_causal)


@SLOW
def test_causal_without_mask_and_a_wide_feature_size_within_2x_naive_error():
    qf, kf, w, v, dout = random_inputs(1, 1, 65, 65, 64, 64, torch.float32, seed=7)
    assert_close_as_flash_attention_does(qf, kf, w, v, dout, is_causal=True)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("len_q,len_k,a", [(1024, 1024, 64), (1000, 2048, 128), (2048, 1, 32)])
def test_long_sequences_within_2x_naive_error_on_gpu(len_q, len_k, a, is_causal, dtype):
    qf, kf, w, v, dout = random_inputs(1, 2, len_q, len_k, a, 64, dtype)
    mask = random_key_mask(1, len_k)
    assert_close_as_flash_attention_does(qf, kf, w, v, dout, attn_mask=mask, is_causal=is_causal)


@SLOW
@settings(max_examples=5, deadline=None)
@given(
    batch=st.integers(1, 2),
    heads=st.integers(1, 2),
    len_q=st.integers(1, 70),
    len_k=st.integers(1, 70),
    a=st.integers(1, 20),
    value_dim=st.sampled_from([1, 8, 24, 64]),
    is_causal=st.booleans(),
    mask_kind=st.sampled_from(["none", "4d", "4d-broadcast"]),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_and_masks_match_reference(
    batch, heads, len_q, len_k, a, value_dim, is_causal, mask_kind, dtype, seed
):
    qf, kf, w, v, dout = random_inputs(batch, heads, len_q, len_k, a, value_dim, dtype, seed)
    mask = random_key_mask(batch, len_k, seed, all_masked_row=seed % 2 == 0)
    mask = {"none": None, "4d": mask, "4d-broadcast": mask[:1]}[mask_kind]
    assert_close_as_flash_attention_does(qf, kf, w, v, dout, attn_mask=mask, is_causal=is_causal)


def test_float32_score_weight_with_bfloat16_features_within_2x_naive_bfloat16_error():
    """Under autocast the score vector stays a float32 parameter: its gradient is float32, and
    every output is within twice the error of the naive path in bfloat16 (which rounds w)."""
    qf, kf, _, v, dout = random_inputs(1, 2, 9, 13, 8, 16, torch.bfloat16)
    w = torch.randn(2, 8, generator=torch.Generator().manual_seed(4)).to(DEVICE)

    def run(attn, dtype):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (qf, kf, v)]
        w_leaf = w.detach().to(torch.float64 if dtype == torch.float64 else w.dtype)
        w_leaf.requires_grad_()
        out = attn(leaves[0], leaves[1], w_leaf, leaves[2])
        out.backward(dout.to(dtype))
        grads = [leaves[0].grad, leaves[1].grad, w_leaf.grad, leaves[2].grad]
        return out, grads

    out, grads = run(additive_attention, torch.bfloat16)
    assert grads[2].dtype == torch.float32
    exact = [t.double() for t in (lambda o, g: [o, *g])(*run(naive_additive, torch.float64))]
    naive = [t.double() for t in (lambda o, g: [o, *g])(*run(naive_additive, torch.bfloat16))]
    ours = [out, *grads]
    for name, got, ref, base in zip(NAMES, ours, exact, naive, strict=True):
        err, base_err = max_err(got, ref), max_err(base, ref)
        # 4 ulps of the tensor's own dtype, as in the suite: float32 for dw, bfloat16 elsewhere
        ulps = max(4 * torch.finfo(got.dtype).eps, FLOOR_F32)
        floor = ulps * max(1.0, ref.abs().max().item())
        assert err <= 2 * base_err + floor, f"{name}: {err:.3g} > 2 x {base_err:.3g} + {floor:.3g}"


@pytest.mark.parametrize("size", range(1, 8))
def test_feature_sizes_and_value_dims_1_to_7_within_2x_naive_error(size):
    qf, kf, w, v, dout = random_inputs(2, 1, 9, 13, size, size, torch.float32, seed=size)
    mask = random_key_mask(2, 13)
    assert_close_as_flash_attention_does(qf, kf, w, v, dout, attn_mask=mask, is_causal=True)


@pytest.mark.parametrize("a,value_dim", [(128, 16), (8, 128), (128, 128)])
def test_feature_size_and_value_dim_of_128_within_2x_naive_error(a, value_dim):
    qf, kf, w, v, dout = random_inputs(1, 1, 5, 9, a, value_dim, torch.float32, seed=a)
    mask = random_key_mask(1, 9)
    assert_close_as_flash_attention_does(qf, kf, w, v, dout, attn_mask=mask, is_causal=True)


@pytest.mark.parametrize("batch,heads", [(0, 2), (2, 0), (0, 0)])
def test_batch_or_heads_of_zero_give_empty_outputs_and_gradients(batch, heads, monkeypatch):
    """Nothing is launched on an empty grid (a GPU refuses a grid dimension of 0)."""
    from triton.runtime.jit import KernelInterface

    grids, getitem = [], KernelInterface.__getitem__
    monkeypatch.setattr(
        KernelInterface,
        "__getitem__",
        lambda kernel, grid: grids.append(grid) or getitem(kernel, grid),
    )
    qf, kf, w, v, dout = random_inputs(batch, heads, 5, 7, 8, 16, torch.float32)
    leaves = [t.clone().requires_grad_() for t in (qf, kf, w, v)]
    mask = torch.ones(batch, 1, 1, 7, dtype=torch.bool, device=DEVICE)
    out, lse = additive_attention(*leaves, attn_mask=mask, is_causal=True, return_lse=True)
    out.backward(dout)
    assert out.shape == (batch, heads, 5, 16) and lse.shape == (batch, heads, 5)
    assert [leaf.grad.shape for leaf in leaves] == [t.shape for t in (qf, kf, w, v)]
    assert grids == []  # every grid has batch * heads = 0 programs
    assert (leaves[2].grad == 0).all()


# ----------------------------------------------------------------------------- semantics


def test_query_with_every_key_masked_gets_zeros_zero_grads_and_minus_inf_lse():
    qf, kf, w, v, dout = random_inputs(2, 2, 9, 20, 8, 16, torch.float32)
    mask = random_key_mask(2, 20)  # batch row 1 masks every key
    leaves = [t.clone().requires_grad_() for t in (qf, kf, w, v)]
    out, lse = additive_attention(*leaves, attn_mask=mask, return_lse=True)
    out.backward(dout)
    assert (out[1] == 0).all() and torch.isfinite(out).all()
    assert (lse[1] == float("-inf")).all() and torch.isfinite(lse[0]).all()
    qf_grad, kf_grad, w_grad, v_grad = (leaf.grad for leaf in leaves)
    for grad in (qf_grad, kf_grad, v_grad):
        assert (grad[1] == 0).all() and torch.isfinite(grad).all()
    assert torch.isfinite(w_grad).all()


def test_causal_mask_is_bottom_right_aligned():
    # len_q > len_k: the first len_q - len_k queries see no key at all.
    qf, kf, w, v, _ = random_inputs(1, 2, 10, 4, 8, 16, torch.float32)
    out = additive_attention(qf, kf, w, v, is_causal=True)
    assert (out[:, :, :6] == 0).all()
    assert torch.allclose(out, naive_additive(qf, kf, w, v, is_causal=True), atol=1e-5)
    # len_q < len_k (decoding with a cache): the last query sees every key.
    qf, kf, w, v, _ = random_inputs(1, 2, 3, 11, 8, 16, torch.float32)
    full = additive_attention(qf, kf, w, v, is_causal=True)
    last = additive_attention(qf[:, :, -1:], kf, w, v, is_causal=True)
    assert torch.allclose(last, full[:, :, -1:], atol=1e-6)
    assert torch.allclose(last, additive_attention(qf[:, :, -1:], kf, w, v), atol=1e-6)


def test_every_key_mask_layout_gives_the_same_result():
    qf, kf, w, v, _ = random_inputs(2, 3, 17, 29, 8, 16, torch.float32)
    mask = random_key_mask(2, 29)
    expected = naive_additive(qf, kf, w, v, attn_mask=mask)
    wide = torch.zeros(2, 1, 1, 58, dtype=torch.bool, device=DEVICE)
    wide[..., ::2] = mask  # a non-contiguous view of the same mask
    for layout in (mask, wide[..., ::2], mask.expand(-1, 3, -1, -1)):
        got = additive_attention(qf, kf, w, v, attn_mask=layout)
        assert torch.allclose(got, expected, atol=1e-5)
    row = mask[:1]  # batch dim 1 broadcasts over the batch
    expected = naive_additive(qf, kf, w, v, attn_mask=row.expand(2, -1, -1, -1))
    assert torch.allclose(additive_attention(qf, kf, w, v, attn_mask=row), expected, atol=1e-5)
    per_head = torch.rand(2, 3, 1, 29, generator=torch.Generator().manual_seed(3)) < 0.5
    per_head = per_head.to(DEVICE)
    expected = naive_additive(qf, kf, w, v, attn_mask=per_head)
    assert torch.allclose(additive_attention(qf, kf, w, v, attn_mask=per_head), expected, atol=1e-5)


def test_non_contiguous_inputs_and_grads_match_contiguous():
    qf, kf, w, v, dout = random_inputs(2, 3, 21, 33, 12, 24, torch.float32)
    # (b, n, h, a) storage seen as (b, h, n, a), as a model's head split produces
    as_bnhd = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (qf, kf, v, dout)]
    assert not as_bnhd[0].is_contiguous()
    w_t = w.t().contiguous().t()  # (h, a) with a column-major layout
    want = output_and_grads(additive_attention, qf, kf, w, v, dout, torch.float32, is_causal=True)
    qf2, kf2, v2, dout2 = as_bnhd
    got = output_and_grads(
        additive_attention, qf2, kf2, w_t, v2, dout2, torch.float32, is_causal=True
    )
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_lse_and_its_gradient_match_logsumexp():
    qf, kf, w, v, dout = random_inputs(2, 2, 19, 37, 8, 16, torch.float32)
    mask = random_key_mask(2, 37)
    dlse = torch.randn(2, 2, 19, generator=torch.Generator().manual_seed(5)).to(DEVICE)

    def loss_and_grads(fn, dtype):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (qf, kf, w, v)]
        out, lse = fn(*leaves)
        seen = torch.isfinite(lse)  # -inf for the all-masked batch row
        loss = (out * dout.to(dtype)).sum() + (lse[seen] * dlse.to(dtype)[seen]).sum()
        loss.backward()
        return [lse.double(), *(leaf.grad.double() for leaf in leaves)]

    def reference(qf, kf, w, v):
        allowed = allowed_pairs(19, 37, mask, True, qf.device)
        scores = additive_scores(qf, kf, w).masked_fill(~allowed, float("-inf"))
        seen = allowed.any(-1)  # logsumexp of only -inf has a NaN gradient: keep it out
        lse = torch.logsumexp(scores.masked_fill(~seen[..., None], 0.0), dim=-1)
        lse = torch.where(seen, lse, float("-inf"))
        return naive_additive(qf, kf, w, v, attn_mask=mask, is_causal=True), lse

    def ours(*t):
        return additive_attention(*t, attn_mask=mask, is_causal=True, return_lse=True)

    got = loss_and_grads(ours, torch.float32)
    want = loss_and_grads(reference, torch.float64)
    assert torch.equal(torch.isinf(got[0]), torch.isinf(want[0]))
    for a, b in zip(got, want, strict=True):
        seen = torch.isfinite(b)
        assert torch.allclose(a[seen], b[seen], atol=2e-5)


def test_every_output_element_is_written(monkeypatch):
    """Every buffer the launchers allocate is pre-filled with NaN; none may survive."""

    def poisoned(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(aa, "_empty", poisoned)
    qf, kf, w, v, dout = random_inputs(2, 2, 70, 45, 6, 20, torch.float16)
    mask = random_key_mask(2, 45)
    leaves = [t.clone().requires_grad_() for t in (qf, kf, w, v)]
    out, lse = additive_attention(*leaves, attn_mask=mask, is_causal=True, return_lse=True)
    out.backward(dout)
    assert not lse.isnan().any()
    for t in (out, *(leaf.grad for leaf in leaves)):
        assert torch.isfinite(t).all()


# Every tile shape in the additive launch table; lengths as in test_flash_attention.py's
# block_lengths (whole and partial query tiles, a causal shift of more than a key block, then
# swapped). A representative few by default; the whole table under the slow marker.
TABLE_BLOCKS = sorted({(c.block_m, c.block_n) for cs in aa_configs.CONFIGS.values() for c in cs})
DEFAULT_BLOCKS = [(16, 32), (64, 32)]


def block_lengths(block_m, block_n):
    len_q = block_m + 3
    return [(len_q, len_q + block_n + 5), (len_q + block_n + 5, len_q)]


def assert_blocks_match_the_reference(blocks, monkeypatch, maskings):
    monkeypatch.setattr(aa, "_configs", lambda kernel, dtype: [LaunchConfig(*blocks, 4, 1)])
    for len_q, len_k in block_lengths(*blocks):
        qf, kf, w, v, dout = random_inputs(2, 1, len_q, len_k, 6, 12, torch.float32, seed=len_q)
        for masked, is_causal in maskings:
            mask = random_key_mask(2, len_k) if masked else None
            kwargs = dict(attn_mask=mask, is_causal=is_causal)
            assert_close_as_flash_attention_does(qf, kf, w, v, dout, **kwargs)


@pytest.mark.parametrize("blocks", DEFAULT_BLOCKS, ids=str)
def test_launch_table_block_sizes_match_the_reference(blocks, monkeypatch):
    assert set(DEFAULT_BLOCKS) <= set(TABLE_BLOCKS)
    assert_blocks_match_the_reference(blocks, monkeypatch, [(True, True)])


@pytest.mark.slow
@pytest.mark.parametrize("blocks", TABLE_BLOCKS, ids=str)
def test_every_launch_table_block_size_matches_the_reference_with_every_masking(
    blocks, monkeypatch
):
    maskings = [(False, False), (False, True), (True, False), (True, True)]
    assert_blocks_match_the_reference(blocks, monkeypatch, maskings)


def test_empty_lengths():
    qf, kf, w, v, _ = random_inputs(1, 2, 5, 0, 8, 16, torch.float32)
    out, lse = additive_attention(qf, kf, w, v, return_lse=True)
    assert (out == 0).all() and (lse == float("-inf")).all()
    qf, kf, w, v, _ = random_inputs(1, 2, 0, 5, 8, 16, torch.float32)
    leaves = [t.clone().requires_grad_() for t in (qf, kf, w, v)]
    out = additive_attention(*leaves)
    out.sum().backward()
    assert out.shape == (1, 2, 0, 16)
    assert all((leaf.grad == 0).all() for leaf in leaves[1:])


# ----------------------------------------------------------------------------- laws


def test_permuting_queries_permutes_the_output():
    qf, kf, w, v, _ = random_inputs(2, 2, 23, 31, 8, 16, torch.float32)
    mask = random_key_mask(2, 31, all_masked_row=False)
    perm = torch.randperm(23, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    out = additive_attention(qf, kf, w, v, attn_mask=mask)
    permuted = additive_attention(qf[:, :, perm], kf, w, v, attn_mask=mask)
    assert torch.allclose(permuted, out[:, :, perm], atol=1e-6)


def test_permuting_keys_and_values_together_leaves_the_output_unchanged():
    qf, kf, w, v, _ = random_inputs(2, 2, 23, 70, 8, 16, torch.float32)  # two key blocks
    mask = random_key_mask(2, 70, all_masked_row=False)
    perm = torch.randperm(70, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    out = additive_attention(qf, kf, w, v, attn_mask=mask)
    permuted = additive_attention(qf, kf[:, :, perm], w, v[:, :, perm], attn_mask=mask[..., perm])
    assert torch.allclose(permuted, out, atol=1e-5)
    moved_keys_only = additive_attention(qf, kf[:, :, perm], w, v, attn_mask=mask[..., perm])
    assert not torch.allclose(moved_keys_only, out, atol=1e-3)


def test_with_causal_masking_a_future_token_changes_no_earlier_output():
    qf, kf, w, v, _ = random_inputs(1, 2, 40, 40, 8, 16, torch.float32)
    out = additive_attention(qf, kf, w, v, is_causal=True)
    changed = [t.clone() for t in (qf, kf, v)]
    for t in changed:
        t[:, :, 30] += 3.0  # token 30 changes its query, key and value
    out2 = additive_attention(changed[0], changed[1], w, changed[2], is_causal=True)
    assert torch.equal(out2[:, :, :30], out[:, :, :30])
    assert not torch.allclose(out2[:, :, 30:], out[:, :, 30:])


# ----------------------------------------------------------------------------- bad input


def _bad_inputs():
    qf, kf, w, v, _ = random_inputs(2, 2, 5, 6, 8, 16, torch.float32)
    mask = torch.ones(2, 1, 1, 6, dtype=torch.bool, device=DEVICE)
    return [
        ("rank", (qf[0], kf, w, v), {}, ValueError, "rank 4"),
        ("w-rank", (qf, kf, w[0], v), {}, ValueError, "score_weight must have rank 2"),
        ("batch", (qf, kf[:1], w, v[:1]), {}, ValueError, "batch, heads"),
        ("kv-len", (qf, kf, w, v[:, :, :5]), {}, ValueError, "same length"),
        ("feature-size", (qf, kf[..., :4], w, v), {}, ValueError, "feature sizes differ"),
        ("w-shape", (qf, kf, w[:1], v), {}, ValueError, r"\(heads, a\)"),
        ("too-wide", (qf, kf, w, torch.zeros(2, 2, 6, 256, device=DEVICE)), {}, ValueError, "value head dim 256"),
        ("too-many-features", [torch.zeros(1, 1, 2, 129, device=DEVICE)] * 2 + [torch.zeros(1, 129, device=DEVICE), torch.zeros(1, 1, 2, 8, device=DEVICE)], {}, ValueError, "feature size 129"),
        ("mixed-dtype", (qf, kf.half(), w, v), {}, TypeError, "one dtype"),
        ("float64", (qf.double(), kf.double(), w, v.double()), {}, TypeError, "float64"),
        ("w-float64", (qf, kf, w.double(), v), {}, TypeError, "score_weight's dtype"),
        ("not-tensor", (qf, kf.tolist(), w, v), {}, TypeError, "key_features must be a torch.Tensor"),
        ("mask-dtype", (qf, kf, w, v), {"attn_mask": mask.float()}, TypeError, "torch.bool"),
        ("mask-len", (qf, kf, w, v), {"attn_mask": mask[..., :5]}, ValueError, "key mask"),
        ("mask-batch", (qf, kf, w, v), {"attn_mask": torch.ones(3, 1, 1, 6, dtype=torch.bool, device=DEVICE)}, ValueError, "key mask"),
        ("mask-full", (qf, kf, w, v), {"attn_mask": torch.ones(2, 1, 5, 6, dtype=torch.bool, device=DEVICE)}, ValueError, r"Full \(len_q x len_k\)"),
        ("mask-2d", (qf, kf, w, v), {"attn_mask": mask[:, 0, 0]}, ValueError, "key mask"),
        ("mask-list", (qf, kf, w, v), {"attn_mask": mask.tolist()}, TypeError, "additive_attention: attn_mask must be a torch.Tensor"),
    ]  # fmt: skip


@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda c: c[0])
def test_bad_input_raises_a_clear_error_before_any_launch(case, monkeypatch):
    _, args, kwargs, error, message = case

    def no_launch(*a, **kw):
        raise AssertionError("a kernel was launched")

    monkeypatch.setattr(aa, "_launch", no_launch)
    with pytest.raises(error, match=message):
        additive_attention(*args, **kwargs)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_mixed_devices_raise_on_gpu():
    qf, kf, w, v, _ = random_inputs(1, 1, 4, 4, 8, 16, torch.float32)
    with pytest.raises(ValueError, match="one device"):
        additive_attention(qf, kf, w.cpu(), v)


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
