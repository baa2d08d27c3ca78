"""Attention math: reference parity, backend parity, the mask convention and the laws of attention.

Tolerances: float32 against a float64 reference, 1e-5 absolute (outputs are O(1) averages of
unit-normal values, so float32's rounding of a few dozen terms stays far below it).
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer.attention import MultiHeadAttention, attend, attention_weights
from transformer.config import ModelConfig
from transformer.masks import causal_mask, check_attn_mask

ATOL = 1e-5


def reference_attention(q, k, v, visible, scale=None):
    """softmax(q kᵀ · scale) v in float64, row by row, written apart from the package.

    ``visible`` is a full boolean (b, h, i, j) tensor; a row with nothing visible gives zeros.
    """
    q, k, v = q.double(), k.double(), v.double()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    b, h, i, _ = q.shape
    out = torch.zeros(b, h, i, v.shape[-1], dtype=torch.float64)
    for bi, hi, qi in itertools.product(range(b), range(h), range(i)):
        keep = visible[bi, hi, qi]
        if not keep.any():
            continue
        scores = (k[bi, hi][keep] @ q[bi, hi, qi]) * scale
        p = torch.exp(scores - scores.max())
        out[bi, hi, qi] = (p / p.sum()) @ v[bi, hi][keep]
    return out


def bottom_right_visible(len_q, len_k):
    return torch.tensor([[j <= i + len_k - len_q for j in range(len_k)] for i in range(len_q)])


def random_qkv(batch=2, heads=3, len_q=5, len_k=7, dim=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, len_q, dim, generator=g, dtype=dtype)
    k = torch.randn(batch, heads, len_k, dim, generator=g, dtype=dtype)
    v = torch.randn(batch, heads, len_k, dim, generator=g, dtype=dtype)
    return q, k, v


def make_mask(kind, batch, heads, len_q, len_k, seed=1):
    """None, a key-padding mask (b,1,1,j) with one fully hidden batch row, or a full mask."""
    g = torch.Generator().manual_seed(seed)
    if kind == "none":
        return None
    if kind == "key":
        mask = torch.rand(batch, 1, 1, len_k, generator=g) > 0.4
        mask[0, ..., 0] = True
        mask[-1] = False  # a batch row whose keys are all hidden
        return mask
    mask = torch.rand(batch, heads, len_q, len_k, generator=g) > 0.5
    mask[0, 0, 0] = False  # one query with every key hidden
    return mask


def visible_of(mask, causal, batch, heads, len_q, len_k):
    visible = torch.ones(batch, heads, len_q, len_k, dtype=torch.bool)
    if mask is not None:
        visible = visible & mask
    if causal:
        visible = visible & bottom_right_visible(len_q, len_k)
    return visible


GRID = list(
    itertools.product(["none", "key", "full"], [False, True], [(5, 5), (3, 9), (9, 3), (1, 6)])
)


@pytest.mark.parametrize("mask_kind,causal,lengths", GRID)
def test_naive_attention_matches_float64_reference_for_every_mask(mask_kind, causal, lengths):
    len_q, len_k = lengths
    q, k, v = random_qkv(len_q=len_q, len_k=len_k)
    mask = make_mask(mask_kind, 2, 3, len_q, len_k)
    expected = reference_attention(q, k, v, visible_of(mask, causal, 2, 3, len_q, len_k))
    got = attend(q, k, v, attn_mask=mask, is_causal=causal, backend="naive")
    torch.testing.assert_close(got.double(), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("mask_kind,causal,lengths", GRID)
def test_sdpa_backend_matches_naive_for_every_mask(mask_kind, causal, lengths):
    len_q, len_k = lengths
    q, k, v = random_qkv(len_q=len_q, len_k=len_k, seed=3)
    mask = make_mask(mask_kind, 2, 3, len_q, len_k)
    naive = attend(q, k, v, attn_mask=mask, is_causal=causal, backend="naive")
    sdpa = attend(q, k, v, attn_mask=mask, is_causal=causal, backend="sdpa")
    torch.testing.assert_close(sdpa, naive, atol=ATOL, rtol=0)


@pytest.mark.parametrize("len_k", [1, 5])
def test_sdpa_backend_takes_a_one_dimensional_key_mask_even_over_one_key(len_k):
    q, k, v = random_qkv(len_q=3, len_k=len_k, seed=11)
    mask = torch.ones(len_k, dtype=torch.bool)
    mask[len_k // 2 + 1 :] = False
    naive = attend(q, k, v, attn_mask=mask, backend="naive")
    sdpa = attend(q, k, v, attn_mask=mask, backend="sdpa")
    torch.testing.assert_close(sdpa, naive, atol=ATOL, rtol=0)


def test_explicit_scale_is_used_by_every_backend():
    q, k, v = random_qkv(seed=5)
    visible = torch.ones(2, 3, 5, 7, dtype=torch.bool)
    expected = reference_attention(q, k, v, visible, scale=0.3)
    for backend in ("naive", "sdpa"):
        got = attend(q, k, v, scale=0.3, backend=backend)
        torch.testing.assert_close(got.double(), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_query_with_no_visible_key_gets_zero_output_and_finite_gradients(backend):
    q, k, v = random_qkv(seed=7)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1] = False
    out = attend(q, k, v, attn_mask=mask, backend=backend)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    (out * torch.randn_like(out)).sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert torch.equal(q.grad[1], torch.zeros_like(q.grad[1]))


def test_causal_mask_is_bottom_right_aligned():
    mask = causal_mask(2, 5)
    assert mask.tolist() == [
        [True, True, True, True, False],
        [True, True, True, True, True],
    ]
    assert torch.equal(causal_mask(4, 4), torch.ones(4, 4, dtype=torch.bool).tril())
    # A query longer than the keys: its first rows see nothing and get zeros.
    q, k, v = random_qkv(len_q=6, len_k=3)
    out = attend(q, k, v, is_causal=True)
    assert torch.equal(out[:, :, :3], torch.zeros_like(out[:, :, :3]))


def test_attention_weights_rows_sum_to_one_and_hidden_keys_get_zero_weight():
    q, k, _ = random_qkv(seed=11)
    mask = make_mask("key", 2, 3, 5, 7)
    weights = attention_weights(q, k, attn_mask=mask, is_causal=True)
    sums = weights.sum(-1)
    visible = visible_of(mask, True, 2, 3, 5, 7)
    has_key = visible.any(-1)
    torch.testing.assert_close(sums[has_key], torch.ones_like(sums[has_key]))
    assert torch.equal(sums[~has_key], torch.zeros_like(sums[~has_key]))
    assert torch.equal(weights[~visible], torch.zeros_like(weights[~visible]))


# --- the laws of attention ------------------------------------------------------------------

SCORES = ["scaled_dot", "dot", "general", "additive"]


def small_config(score="scaled_dot", backend="naive", **kw):
    base = dict(src_vocab_size=40, tgt_vocab_size=40, d_model=32, heads=4, d_ff=64, dropout=0.0)
    base.update(kw)
    return ModelConfig(score=score, backend=backend, **base)


@pytest.mark.parametrize("score", SCORES)
def test_permuting_queries_permutes_the_output_the_same_way(score):
    torch.manual_seed(0)
    attention = MultiHeadAttention(small_config(score)).eval()
    x, memory = torch.randn(2, 6, 32), torch.randn(2, 9, 32)
    kv = attention.project_kv(memory)
    perm = torch.randperm(6)
    out, _ = attention(x, kv=kv)
    out_permuted, _ = attention(x[:, perm], kv=kv)
    torch.testing.assert_close(out_permuted, out[:, perm], atol=ATOL, rtol=0)


@pytest.mark.parametrize("score", SCORES)
def test_permuting_keys_and_values_together_leaves_the_output_unchanged(score):
    torch.manual_seed(1)
    attention = MultiHeadAttention(small_config(score)).eval()
    x, memory = torch.randn(2, 6, 32), torch.randn(2, 9, 32)
    key_mask = torch.rand(2, 9) > 0.3
    key_mask[:, 0] = True
    perm = torch.randperm(9)
    out, _ = attention(x, kv=attention.project_kv(memory), key_mask=key_mask)
    out_permuted, _ = attention(
        x, kv=attention.project_kv(memory[:, perm]), key_mask=key_mask[:, perm]
    )
    torch.testing.assert_close(out_permuted, out, atol=ATOL, rtol=0)


def test_permuting_keys_alone_changes_the_output():
    """The law above is about a *joint* reordering: moving keys without values must matter."""
    q, k, v = random_qkv(seed=13)
    perm = torch.randperm(7)
    assert not torch.allclose(attend(q, k[:, :, perm], v), attend(q, k, v), atol=1e-3)


@pytest.mark.parametrize("score", SCORES)
def test_every_score_function_reaches_every_parameter_and_rows_sum_to_one(score):
    from transformer.model import Transformer

    torch.manual_seed(2)
    model = Transformer(small_config(score))
    src = torch.randint(3, 40, (2, 7))
    src[0, 5:] = 0
    tgt = torch.randint(3, 40, (2, 6))
    loss = torch.nn.functional.cross_entropy(model(src, tgt).flatten(0, 1), tgt.flatten())
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert parameter.grad.abs().sum() > 0, f"{name} got an all-zero gradient"
    maps = model.attention_maps(src, tgt)
    for weights in maps.encoder_self + maps.decoder_self + maps.cross:
        sums = weights.sum(-1)
        torch.testing.assert_close(sums, torch.ones_like(sums), atol=ATOL, rtol=0)


def test_general_score_starts_as_scaled_dot_product():
    torch.manual_seed(3)
    general = MultiHeadAttention(small_config("general")).eval()
    scaled = MultiHeadAttention(small_config("scaled_dot")).eval()
    scaled.load_state_dict(general.state_dict(), strict=False)
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(general(x)[0], scaled(x)[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("score", ["scaled_dot", "general"])
def test_module_weights_are_the_ones_its_output_uses(score):
    torch.manual_seed(4)
    attention = MultiHeadAttention(small_config(score)).eval()
    x = torch.randn(2, 5, 32)
    key_mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    fused, _ = attention(x, key_mask=key_mask, is_causal=True)
    explained, weights = attention(x, key_mask=key_mask, is_causal=True, need_weights=True)
    torch.testing.assert_close(fused, explained, atol=ATOL, rtol=0)
    assert torch.equal(weights.triu(1), torch.zeros_like(weights))
    assert torch.equal(weights[1, :, :, 3:], torch.zeros_like(weights[1, :, :, 3:]))


def test_attention_dropout_applies_in_training_whether_or_not_weights_are_asked_for():
    """need_weights=True used to skip attention dropout: training ran as in eval mode."""
    config = dataclasses.replace(small_config("scaled_dot"), attention_dropout=0.5)
    attention = MultiHeadAttention(config).train()
    x = torch.randn(2, 9, 32)
    for need_weights in (False, True):
        torch.manual_seed(0)
        first, weights = attention(x, need_weights=need_weights)
        torch.manual_seed(1)
        second, _ = attention(x, need_weights=need_weights)
        assert not torch.allclose(first, second), need_weights  # a different dropout draw
    attention.eval()
    _, eval_weights = attention(x, need_weights=True)
    torch.testing.assert_close(weights, eval_weights)  # the weights are the ones before dropout


# --- bad input --------------------------------------------------------------------------------


def test_mismatched_head_dims_are_refused_with_a_clear_error():
    q, k, v = random_qkv()
    with pytest.raises(ValueError, match="head dims differ"):
        attend(q, k[..., :4], v)


def test_mask_of_the_wrong_dtype_is_refused_with_a_clear_error():
    q, k, v = random_qkv()
    with pytest.raises(TypeError, match="torch.bool"):
        attend(q, k, v, attn_mask=torch.zeros(2, 1, 1, 7))


@pytest.mark.parametrize(
    "args, error, message",
    [
        (lambda q, k: (q, k, torch.ones(2, 1, 1, 7, dtype=torch.int64)), TypeError, "torch.bool"),
        (lambda q, k: (q, k[..., :4]), ValueError, "head dims differ"),
        (lambda q, k: (q[0], k), ValueError, r"q must have shape \(batch, heads, len, head_dim\)"),
    ],
    ids=["int-mask", "head-dims", "rank"],
)
def test_attention_weights_refuses_what_attend_refuses(args, error, message):
    """attention_weights, exported beside attend, checked nothing (torch's own errors)."""
    q, k, _ = random_qkv()
    with pytest.raises(error, match=message):
        attention_weights(*args(q, k))


def test_mask_of_the_wrong_shape_is_refused_with_a_clear_error():
    q, k, v = random_qkv()
    with pytest.raises(ValueError, match="len_k dim is 6"):
        attend(q, k, v, attn_mask=torch.ones(2, 1, 1, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="batch dim is 3"):
        check_attn_mask(torch.ones(3, 1, 1, 7, dtype=torch.bool), 2, 3, 5, 7)


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("need_weights", [False, True])
def test_a_key_mask_of_the_wrong_length_is_refused_clearly_by_every_score_and_path(
    score, need_weights
):
    """Before, the additive score and the need_weights path failed deep in a broadcast."""
    attention = MultiHeadAttention(small_config(score))
    x = torch.randn(2, 7, 32)
    short = torch.ones(2, 6, dtype=torch.bool)
    with pytest.raises(ValueError, match="its len_k dim is 6, expected 1 or 7"):
        attention(x, key_mask=short, need_weights=need_weights)


def _memory_of_batch_3(attention, x):
    return attention.project_kv(torch.randn(3, 7, 32))


MODULE_BREAKS = {
    "x of rank 2": (lambda a, x: dict(x=x[0]), ValueError, r"x must be \(batch, len, d_model\)"),
    "x too narrow": (
        lambda a, x: dict(x=x[..., :16]),
        ValueError,
        r"x must be \(batch, len, d_model\) = \(\*, \*, 32\), got \(2, 5, 16\)",
    ),
    "kv of another batch": (
        lambda a, x: dict(x=x, kv=_memory_of_batch_3(a, x)),
        ValueError,
        r"kv\.k of shape \(3, 4, 7, 8\) must be \(batch, heads, len_k, head_dim\) = \(2, 4, \*, 8\)",
    ),
    "kv of batch 2 for x of batch 1": (
        lambda a, x: dict(x=x[:1], kv=a.project_kv(torch.randn(2, 7, 32))),
        ValueError,
        r"kv\.k of shape \(2, 4, 7, 8\) must be \(batch, heads, len_k, head_dim\) = \(1, 4, \*, 8\)",
    ),
    "kv a tensor": (
        lambda a, x: dict(x=x, kv=torch.randn(2, 4, 7, 8)),
        TypeError,
        r"kv must be a KeyValue \(from project_kv\) or None, got Tensor",
    ),
    "key_mask of another batch": (
        lambda a, x: dict(x=x, key_mask=torch.ones(3, 5, dtype=torch.bool)),
        ValueError,
        r"key_mask of shape \(3, 5\) does not fit \(batch, len_k\) = \(2, 5\): its batch dim is 3",
    ),
    "key_mask elsewhere": (
        lambda a, x: dict(x=x, key_mask=torch.ones(2, 5, dtype=torch.bool, device="meta")),
        ValueError,
        "key_mask is on meta, but x is on cpu",
    ),
}


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("breaking", MODULE_BREAKS)
def test_multi_head_attention_refuses_bad_x_kv_or_key_mask_naming_it_on_every_path(
    score, need_weights, breaking
):
    """Before, these failed in torch's or einops' words (KeyError 2, an einsum's subscript, a
    broadcast), differently on each score and path, or named q, k and attn_mask, which the
    caller never passed; keys of batch 2 for queries of batch 1 were silently broadcast into an
    output of batch 2 by the additive score and by the need_weights path."""
    attention = MultiHeadAttention(small_config(score))
    x = torch.randn(2, 5, 32)
    arguments, error, message = MODULE_BREAKS[breaking]
    with pytest.raises(error, match=message):
        attention(**arguments(attention, x), need_weights=need_weights)


def test_rank_dtype_and_device_mismatches_are_refused():
    q, k, v = random_qkv()
    with pytest.raises(TypeError, match="floating point, got torch.int64"):
        attend(q.long(), k.long(), v.long())
    with pytest.raises(ValueError, match="batch, heads, len, head_dim"):
        attend(q[0], k, v)
    with pytest.raises(TypeError, match="one dtype"):
        attend(q.double(), k, v)
    with pytest.raises(ValueError, match="len_k"):
        attend(q, k, v[:, :, :3])
    # the meta device stands in for a second device on a machine with one
    with pytest.raises(ValueError, match="one device, got cpu, meta, cpu"):
        attend(q, k.to("meta"), v)
    with pytest.raises(ValueError, match="one device, got cpu, cpu, meta"):
        attend(q, k, v.to("meta"), backend="sdpa")


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
@pytest.mark.parametrize("shape", [(), (1,), (1, 1, 1, 1, 1)], ids=["0-dim", "1", "1x1x1x1x1"])
def test_a_one_element_scale_tensor_is_used_by_every_backend_as_its_number(backend, shape):
    """attend accepts a one-element tensor scale; before, a (1,) float64 one failed in the naive
    einsum (Double/Float), one of rank 5 broadcast the scores to rank 5, and SDPA refused both."""
    q, k, v = random_qkv(seed=17)
    expected = reference_attention(q, k, v, torch.ones(2, 3, 5, 7, dtype=torch.bool), scale=0.3)
    got = attend(q, k, v, scale=torch.full(shape, 0.3, dtype=torch.float64), backend=backend)
    assert got.dtype == q.dtype
    torch.testing.assert_close(got.double(), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
@pytest.mark.parametrize(
    "options, message",
    [
        ({"is_causal": None}, "is_causal must be True or False, got None"),
        ({"is_causal": 1}, "is_causal must be True or False, got 1"),
        ({"dropout_p": None}, r"dropout_p must be a number in \[0, 1\), got None"),
        ({"dropout_p": "0.1"}, r"dropout_p must be a number in \[0, 1\), got '0.1'"),
    ],
)
def test_an_is_causal_or_dropout_p_of_the_wrong_type_is_refused_naming_it(
    backend, options, message
):
    """Before, naive read is_causal=None as False while SDPA refused it in its own words, and
    dropout_p=None failed comparing None with a float."""
    q, k, v = random_qkv()
    with pytest.raises(TypeError, match=message):
        attend(q, k, v, backend=backend, **options)


def test_unknown_backend_or_score_is_refused_with_a_clear_error():
    q, k, v = random_qkv()
    with pytest.raises(ValueError, match="unknown attention backend 'flash2'"):
        attend(q, k, v, backend="flash2")
    with pytest.raises(ValueError, match="unknown score function 'cosine'"):
        small_config(score="cosine")
    with pytest.raises(ValueError, match="unknown attention backend"):
        small_config(backend="cudnn")


def test_backends_that_cannot_honour_a_setting_refuse_it(kernel_device):
    with pytest.raises(ValueError, match="fused additive kernel .* does not apply dropout"):
        small_config(score="additive", backend="triton", attention_dropout=0.1)
    with pytest.raises(ValueError, match="additive"):
        small_config(score="additive", backend="sdpa")


def test_triton_backend_applies_attention_dropout_in_training_only(kernel_device, monkeypatch):
    """The flash kernel gets the config's attention_dropout in training and 0 in evaluation;
    in training the output follows torch's seed (the same seed, the same output)."""
    import kernels

    config = small_config(backend="triton", attention_dropout=0.3)
    attention = MultiHeadAttention(config).to(kernel_device)
    x = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(0)).to(kernel_device)
    seen = []
    kernel = kernels.flash_attention

    def spy(*args, **kwargs):
        seen.append(kwargs["dropout_p"])
        return kernel(*args, **kwargs)

    monkeypatch.setattr(kernels, "flash_attention", spy)
    outputs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        outputs.append(attention(x)[0])
    assert torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[0], outputs[2])
    attention.eval()
    undropped = MultiHeadAttention(dataclasses.replace(config, attention_dropout=0.0))
    undropped.load_state_dict(attention.state_dict())
    undropped = undropped.to(kernel_device).eval()
    assert torch.equal(attention(x)[0], undropped(x)[0])
    assert seen == [0.3, 0.3, 0.3, 0.0, 0.0]


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    heads=st.integers(1, 3),
    len_q=st.integers(1, 12),
    len_k=st.integers(1, 12),
    dim=st.sampled_from([4, 8, 16]),
    causal=st.booleans(),
    mask_kind=st.sampled_from(["none", "key", "full"]),
    seed=st.integers(0, 2**16),
)
def test_naive_and_sdpa_agree_on_random_shapes_and_masks(
    batch, heads, len_q, len_k, dim, causal, mask_kind, seed
):
    q, k, v = random_qkv(batch, heads, len_q, len_k, dim, seed=seed)
    mask = make_mask(mask_kind, batch, heads, len_q, len_k, seed=seed + 1)
    naive = attend(q, k, v, attn_mask=mask, is_causal=causal, backend="naive")
    sdpa = attend(q, k, v, attn_mask=mask, is_causal=causal, backend="sdpa")
    assert torch.isfinite(naive).all()
    torch.testing.assert_close(sdpa, naive, atol=ATOL, rtol=0)
