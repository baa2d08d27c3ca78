"""Attention maps: the weights drawn are the ones the model used, and the flash kernel's weights,
rebuilt from its log-sum-exp, equal the naive ones."""

import importlib.util

import pytest
import torch
from attention_map_helpers import BOS, PAD, tiny_model
from einops import einsum

from transformer.attention import attention_weights
from transformer.masks import combine_masks
from transformer.translation.attention_maps import (
    KINDS,
    attention_map,
    capture_attention_inputs,
    layer_weights,
    weights_from_lse,
)


def padded_pair():
    """Two sources, the second right-padded, and a teacher-forced target prefix."""
    src = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]])
    tgt_in = torch.tensor([[BOS, 14, 15, 16, 17], [BOS, 18, 19, 20, 21]])
    return src, tgt_in


def flash_available() -> tuple[bool, str]:
    """Whether Triton is installed. That is the only reason to skip: a kernel that is there but
    fails must fail the test, not skip it."""
    if importlib.util.find_spec("triton") is None:
        return False, "Triton is not installed"
    return True, ""


# --- the weights are the model's ---------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_rows_sum_to_one_in_every_layer_and_head(kind):
    model = tiny_model()
    src, tgt_in = padded_pair()
    grid = attention_map(model, src, tgt_in, kind, grid=True)  # (l, h, i, j)
    assert grid.shape[:2] == (2, 4)
    torch.testing.assert_close(grid.sum(-1), torch.ones(grid.shape[:-1]))
    mean = attention_map(model, src, tgt_in, kind)
    torch.testing.assert_close(mean, grid.mean(dim=(0, 1)))


def test_decoder_self_attention_map_is_lower_triangular():
    model = tiny_model()
    src, tgt_in = padded_pair()
    grid = attention_map(model, src, tgt_in, "decoder", grid=True)
    above_diagonal = torch.ones(grid.shape[-2:], dtype=torch.bool).triu(1)
    assert (grid[..., above_diagonal] == 0).all()
    assert (grid[..., ~above_diagonal] > 0).all()


@pytest.mark.parametrize("kind", ["cross", "encoder"])
def test_source_padding_gets_zero_weight(kind):
    model = tiny_model()
    src, tgt_in = padded_pair()
    for layer in range(2):
        weights = layer_weights(model, src, tgt_in, kind, layer)  # (b, h, i, j)
        padded = weights[1][..., src[1] == PAD]
        real = weights[1][..., src[1] != PAD]
        assert (padded == 0).all()
        torch.testing.assert_close(real.sum(-1), torch.ones(real.shape[:-1]))


@pytest.mark.parametrize("kind", KINDS)
def test_drawn_weights_reproduce_the_output_of_the_models_own_forward(kind):
    """The module's output in an ordinary forward (on SDPA, with no weights asked for) is
    to_out(weights · v) for exactly the weights the map draws."""
    model = tiny_model(backend="sdpa")
    src, tgt_in = padded_pair()
    for layer in range(2):
        inputs = capture_attention_inputs(model, src, tgt_in, kind, layer)
        weights = layer_weights(model, src, tgt_in, kind, layer)
        module = (
            model.encoder.layers[layer].self_attention
            if kind == "encoder"
            else getattr(
                model.decoder.layers[layer], f"{'cross' if kind == 'cross' else 'self'}_attention"
            )
        )
        mixed = einsum(weights, inputs.v, "b h i j, b h j d -> b h i d")
        with torch.no_grad():
            out = module.to_out(module.merge_heads(mixed))
        torch.testing.assert_close(out, inputs.out, atol=1e-5, rtol=1e-5)


def test_one_head_is_a_slice_of_all_heads_and_negative_indices_count_from_the_end():
    model = tiny_model()
    src, tgt_in = padded_pair()
    grid = attention_map(model, src, tgt_in, "cross", grid=True)
    torch.testing.assert_close(
        attention_map(model, src, tgt_in, "cross", layer=1, head=2), grid[1, 2]
    )
    torch.testing.assert_close(
        attention_map(model, src, tgt_in, "cross", layer=-1, head=-2), grid[1, 2]
    )
    torch.testing.assert_close(attention_map(model, src, tgt_in, "cross", layer=0), grid[0].mean(0))


@pytest.mark.parametrize(
    "layer, head, message",
    [
        (2, None, "layer 2 is out of range"),
        (-3, None, "layer -3"),
        (0, 4, "head 4 is out of range"),
    ],
)
def test_layer_or_head_out_of_range_is_a_clear_error(layer, head, message):
    model = tiny_model()
    src, tgt_in = padded_pair()
    with pytest.raises(ValueError, match=message):
        attention_map(model, src, tgt_in, "cross", layer=layer, head=head)


# --- the flash path: rebuilt from the log-sum-exp ---------------------------------------------


@pytest.mark.parametrize("is_causal, len_q, len_k", [(False, 7, 5), (True, 7, 7), (True, 3, 9)])
def test_weights_from_lse_equal_softmax_block_by_block(is_causal, len_q, len_k):
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, len_q, 8), torch.randn(2, 3, len_k, 8)
    key_mask = torch.ones(2, 1, 1, len_k, dtype=torch.bool)
    key_mask[1, ..., :] = False  # the second sentence sees no key at all: lse = -inf
    scale = 8**-0.5
    logits = einsum(q, k, "b h i d, b h j d -> b h i j") * scale
    visible = combine_masks(key_mask, is_causal, len_q, len_k, q.device)
    lse = logits.masked_fill(~visible, float("-inf")).logsumexp(-1)
    rebuilt = weights_from_lse(q, k, lse, key_mask, is_causal, scale, block_rows=2)
    expected = attention_weights(q, k, key_mask, is_causal, scale)
    assert not rebuilt.isnan().any()
    torch.testing.assert_close(rebuilt, expected)
    assert (rebuilt[1] == 0).all()


@pytest.mark.parametrize(
    # general runs as (qW)·k through the same flash kernel as scaled_dot: the slow sweep has it
    "score",
    ["scaled_dot", pytest.param("general", marks=pytest.mark.slow), "additive"],
)
@pytest.mark.parametrize("kind", KINDS)
def test_flash_weights_rebuilt_from_lse_match_naive_weights(kind, score, kernel_device):
    ok, reason = flash_available()
    if not ok:
        pytest.skip(reason)
    model = tiny_model(score=score).to(kernel_device)
    src, tgt_in = (t.to(kernel_device) for t in padded_pair())
    for layer in range(2):
        for head in (None, 1):
            naive = layer_weights(model, src, tgt_in, kind, layer, head, method="naive")
            flash = layer_weights(model, src, tgt_in, kind, layer, head, method="flash")
            assert flash.shape == naive.shape
            torch.testing.assert_close(flash, naive, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "options",
    [
        dict(window_size=(3, 1)),
        dict(softcap=0.7, is_causal=True),
        dict(alibi_slopes=torch.tensor([0.3, 0.1, 0.05])),
        dict(sinks=torch.tensor([0.5, -1.0, 2.0]), is_causal=True, window_size=(2, 0)),
        dict(alignment="top_left", is_causal=True, alibi_slopes=torch.tensor([0.2, 0.2, 0.4])),
    ],
    ids=["window", "softcap_causal", "alibi", "sinks_window", "top_left_alibi"],
)
def test_weights_from_lse_match_the_naive_weights_with_the_kernels_score_options(
    options, kernel_device
):  # fmt: skip
    # The kernel's lse with softcapping, ALiBi, a window or sinks; the weights rebuilt from it
    # with the same options equal softmax over the same scores (the sinks' column dropped).
    ok, reason = flash_available()
    if not ok:
        pytest.skip(reason)
    from flash_reference import masked_scores

    from kernels import flash_attention

    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 3, n, 8, device=kernel_device) for n in (7, 11, 11))
    key_mask = torch.ones(2, 1, 1, 11, dtype=torch.bool, device=kernel_device)
    key_mask[1, ..., 5:] = False
    options = {n: t.to(kernel_device) if torch.is_tensor(t) else t for n, t in options.items()}
    options.setdefault("alignment", "bottom_right")
    is_causal = options.pop("is_causal", False)
    _, lse = flash_attention(
        q, k, v, attn_mask=key_mask, is_causal=is_causal, return_lse=True, **options
    )  # fmt: skip
    sinks = options.pop("sinks", None)
    rebuilt = weights_from_lse(q, k, lse, key_mask, is_causal, 8**-0.5, block_rows=3, **options)
    scores, _ = masked_scores(
        q.double(), k.double(), key_mask, is_causal, 8**-0.5,
        bottom_right=options["alignment"] == "bottom_right",
        window=options.get("window_size", (-1, -1)), softcap=options.get("softcap", 0.0),
        alibi_slopes=options.get("alibi_slopes"),
    )  # fmt: skip
    if sinks is not None:
        scores = torch.cat([scores, sinks.double()[None, :, None, None].expand(2, 3, 7, 1)], -1)
    expected = torch.softmax(scores, -1)[..., :11].nan_to_num(0.0)
    torch.testing.assert_close(rebuilt.double(), expected, atol=2e-6, rtol=1e-5)
