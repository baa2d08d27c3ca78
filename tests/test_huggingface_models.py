"""Today's decoder models on our kernel equal the same models on ``"eager"``: sliding windows
(Qwen2, Gemma 2, GPT-OSS), logit softcapping (Gemma 2), attention sinks (GPT-OSS) and packed
sequences (Llama, ``position_ids`` that restart, or the lengths transformers' flattening collator
gives).

Tiny randomly initialised models built from configs (nothing is downloaded), float32, train
mode, compared at every position through the logits and every parameter gradient (the sinks'
included) against ``attn_implementation="eager"``, the models' own reference. Sequences are
longer than the window, so the window hides keys. Tolerance: atol 2e-5, rtol 1e-4 (float32
against float32; the kernel's own float64 parity is tests/test_flash_parity.py's).
"""

import importlib

import pytest
import torch

transformers = pytest.importorskip("transformers")

from huggingface_helpers import (  # noqa: E402  (tests/, on sys.path as conftest's)
    VOCAB,
    assert_same_loss_and_gradients,
    padded_batch,
    twin_models,
)

from kernels import flash_attention  # noqa: E402
from kernels.integrations import huggingface  # noqa: E402

huggingface.register()

WINDOW = 4
TINY = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=8,
)  # fmt: skip


def sharpen_attention(model):
    """Queries and keys 10x larger than at initialisation, so that the scores are O(1) and the
    softcap, the window and the sinks each change the logits by tens of percent."""
    for name, p in model.named_parameters():
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            p.mul_(10)


def spread_sinks(model):
    """Sinks of either sign and size one (initialised near 0), so each row's sink weighs."""
    sharpen_attention(model)
    for name, p in model.named_parameters():
        if name.endswith("sinks"):
            p.copy_(torch.linspace(-1.5, 1.5, p.numel()))


def logits_at_tokens(ids, mask):
    """run(model) for assert_same_loss_and_gradients: the logits at the tokens that are not
    padding, and a loss of them."""

    def run(model):
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        return logits[mask.bool()], (logits[mask.bool()] ** 2).mean()

    return run


def packed_against_each_sequence_alone(ours, ids, lengths, **inputs):
    """A run: ``ours`` on the packed batch with its ``lengths`` (the flattening collator's) and
    ``inputs``, the other model on each sequence alone, their logits laid end to end."""
    cu = lengths["cu_seq_lens_q"].tolist()

    def run(net):
        if net is ours:
            logits = net(input_ids=ids, use_cache=False, **lengths, **inputs).logits.flatten(0, 1)
        else:
            tokens = ids.flatten()
            alone = [tokens[a:b][None] for a, b in zip(cu[:-1], cu[1:], strict=True)]
            logits = torch.cat([net(input_ids=t, use_cache=False).logits[0] for t in alone])
        return logits, (logits**2).mean()

    return run


def logits_everywhere(ids, **inputs):
    def run(model):
        logits = model(input_ids=ids, use_cache=False, **inputs).logits
        return logits, (logits**2).mean()

    return run


def packed(model_class, config, device):
    """A tiny model on our kernel and its eager twin, a batch of two rows packing 3 and 2
    sequences, and its position_ids (restarting at each sequence)."""
    ours, eager = twin_models(model_class, config, device, "eager", sharpen_attention)
    ids, _ = padded_batch([14, 14], device, seed=12)
    lengths = [[5, 6, 3], [9, 5]]
    position_ids = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in lengths])
    return ours, eager, ids, position_ids.to(device)


def kernel_mask_shapes(monkeypatch, windows=None):
    """The shape of the attn_mask of each kernel call the backend makes (None: no mask), and
    into ``windows``, if given, each call's window_size."""
    shapes = []

    def recording(*args, attn_mask=None, **kwargs):
        shapes.append(None if attn_mask is None else tuple(attn_mask.shape))
        if windows is not None:
            windows.append(kwargs.get("window_size"))
        return flash_attention(*args, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(huggingface, "flash_attention", recording)
    return shapes


def test_gemma2_softcap_and_alternating_sliding_window_match_eager(kernel_device):
    config = transformers.Gemma2Config(
        **TINY, query_pre_attn_scalar=8, sliding_window=WINDOW, attn_logit_softcapping=2.0,
    )  # fmt: skip
    assert config.layer_types == ["sliding_attention", "full_attention"]
    ours, eager = twin_models(
        transformers.Gemma2ForCausalLM, config, kernel_device, "eager", sharpen_attention
    )
    ids, mask = padded_batch([13, 10], kernel_device, seed=15)
    assert_same_loss_and_gradients(ours, eager, logits_at_tokens(ids, mask))


def test_qwen2_sliding_window_shorter_than_the_sequence_matches_eager(kernel_device):
    config = transformers.Qwen2Config(
        **TINY, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1,
    )  # fmt: skip
    assert config.layer_types == ["full_attention", "sliding_attention"]
    ours, eager = twin_models(
        transformers.Qwen2ForCausalLM, config, kernel_device, "eager", sharpen_attention
    )
    ids, mask = padded_batch([13, 9], kernel_device, seed=11)
    assert_same_loss_and_gradients(ours, eager, logits_at_tokens(ids, mask))


def test_gpt_oss_sinks_and_sliding_window_match_eager_with_the_sinks_gradient(kernel_device):
    config = transformers.GptOssConfig(
        **TINY, num_local_experts=4, num_experts_per_tok=2, sliding_window=WINDOW,
    )  # fmt: skip
    assert config.layer_types == ["sliding_attention", "full_attention"]
    ours, eager = twin_models(
        transformers.GptOssForCausalLM, config, kernel_device, "eager", spread_sinks
    )
    ids, mask = padded_batch([12, 9], kernel_device, seed=16)
    assert_same_loss_and_gradients(ours, eager, logits_everywhere(ids, attention_mask=mask))
    sinks = ours.model.layers[0].self_attn.sinks
    assert sinks.grad is not None and sinks.grad.abs().min() > 0


# Models whose sliding layers build transformers' sliding-window mask but pass no
# ``sliding_window`` to the attention call: the window must come from the mask.
WINDOW_ONLY_IN_THE_MASK = {
    "phimoe": lambda: (
        transformers.PhimoeForCausalLM,
        transformers.PhimoeConfig(
            **{k: v for k, v in TINY.items() if k != "head_dim"},
            sliding_window=WINDOW,
            num_local_experts=4,
            num_experts_per_tok=2,
        ),
    ),
    "qwen2_moe": lambda: (
        transformers.Qwen2MoeForCausalLM,
        transformers.Qwen2MoeConfig(
            **TINY,
            use_sliding_window=True,
            sliding_window=WINDOW,
            max_window_layers=2,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=16,
        ),
    ),
}


@pytest.mark.parametrize(
    "model, lengths", [("phimoe", [13, 10]), ("qwen2_moe", [13, 10]), ("qwen2_moe", [13, 13])]
)
def test_a_window_only_the_mask_carries_is_applied_as_eager_applies_it(
    model, lengths, kernel_device
):
    """PhiMoE and Qwen2-MoE pass no sliding_window to the attention call; their masks hide the
    keys outside the window, and so must the backend (with padding and without): logits and
    every gradient against eager, atol 2e-5, rtol 1e-4, sequences three times the window."""
    model_class, config = WINDOW_ONLY_IN_THE_MASK[model]()
    assert config.sliding_window == WINDOW
    ours, eager = twin_models(model_class, config, kernel_device, "eager", sharpen_attention)
    ours.eval(), eager.eval()  # PhiMoE's router samples in train mode (no attention dropout)
    ids, mask = padded_batch(lengths, kernel_device, seed=18)
    assert_same_loss_and_gradients(ours, eager, logits_at_tokens(ids, mask))


@pytest.mark.parametrize("given", ["position_ids", "lengths"])
def test_a_window_only_the_mask_carries_holds_in_packed_sequences_as_in_eager(given, kernel_device):
    """PhiMoE packed by restarting position_ids (against eager's packed batch) or by the
    flattening collator's lengths without position_ids (against eager on each sequence alone):
    the window its masks carry applies in each sequence; atol 2e-5, rtol 1e-4."""
    model_class, config = WINDOW_ONLY_IN_THE_MASK["phimoe"]()
    ours, eager, ids, position_ids = packed(model_class, config, kernel_device)
    ours.eval(), eager.eval()  # its router samples in train mode; gradients flow in eval too
    if given == "position_ids":
        run = logits_everywhere(ids, position_ids=position_ids)
    else:
        lengths = flattening_lengths(position_ids)
        run = packed_against_each_sequence_alone(ours, ids, lengths)

    assert_same_loss_and_gradients(ours, eager, run)


PACKABLE = {
    "llama": (transformers.LlamaForCausalLM, lambda: transformers.LlamaConfig(**TINY)),
    "gemma2": (  # softcap and a window: through flash_attn_varlen_func
        transformers.Gemma2ForCausalLM,
        lambda: transformers.Gemma2Config(
            **TINY, query_pre_attn_scalar=8, sliding_window=WINDOW, attn_logit_softcapping=2.0
        ),
    ),
    "gpt_oss": (  # sinks: through flash_attn_varlen_func's sinks keyword (not FA2's)
        transformers.GptOssForCausalLM,
        lambda: transformers.GptOssConfig(
            **TINY, num_local_experts=4, num_experts_per_tok=2, sliding_window=WINDOW
        ),
    ),
}


# The models whose transformers masks read position_ids (and so see packing there). GPT-OSS's
# do not (transformers <= 5.24 builds them without position_ids): on eager and SDPA, as here, its
# packed sequences then attend across each other; given their lengths (below), they do not.
PACKED_BY_POSITIONS = ("gemma2", "llama")


@pytest.mark.parametrize("model", PACKED_BY_POSITIONS)
def test_packed_batches_keep_their_sequences_apart_as_eager_does(model, kernel_device):
    model_class, config = PACKABLE[model]
    ours, eager, ids, position_ids = packed(model_class, config(), kernel_device)
    run = logits_everywhere(ids, position_ids=position_ids)
    assert_same_loss_and_gradients(ours, eager, run)


@pytest.mark.parametrize("model", PACKED_BY_POSITIONS)
def test_a_packed_batch_is_measured_once_per_forward_not_once_per_layer(
    model, kernel_device, monkeypatch
):
    """Finding the packed sequences reads the device back twice: the mask builder does it once
    per mask it builds (Gemma 2: one for its full layers, one for its windowed ones) and every
    layer reuses it."""
    model_class, config = PACKABLE[model]
    config = config()
    config.num_hidden_layers = 4
    layer_types = ["full_attention"] * 4
    if model == "gemma2":
        layer_types = config.layer_types = ["sliding_attention", "full_attention"] * 2
    ours, _, ids, position_ids = packed(model_class, config, kernel_device)
    masks = importlib.import_module("kernels.integrations.huggingface_masks")
    calls = []

    def counting(sequence_ids):
        calls.append(tuple(sequence_ids.shape))
        return packing_of(sequence_ids)

    packing_of = masks.packing_of
    monkeypatch.setattr(masks, "packing_of", counting)
    monkeypatch.setattr(huggingface, "packing_of", counting)
    with torch.no_grad():
        ours(input_ids=ids, position_ids=position_ids, use_cache=False)
    assert len(calls) == len(set(layer_types)), calls


def test_padding_reaches_the_kernel_as_one_value_per_key(kernel_device, monkeypatch):
    config = transformers.LlamaConfig(**TINY, max_position_embeddings=64)
    ours, _ = twin_models(transformers.LlamaForCausalLM, config, kernel_device, "eager")
    ids, mask = padded_batch([9, 5], kernel_device, seed=14)
    shapes = kernel_mask_shapes(monkeypatch)
    with torch.no_grad():
        ours(input_ids=ids, attention_mask=mask, use_cache=False)
    assert shapes == [(2, 1, 1, 9)] * config.num_hidden_layers


WINDOWED = {
    "qwen2": lambda: transformers.Qwen2ForCausalLM(
        transformers.Qwen2Config(
            **TINY, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=0
        )
    ),
    "gemma2": lambda: transformers.Gemma2ForCausalLM(
        transformers.Gemma2Config(**TINY, sliding_window=WINDOW, attn_logit_softcapping=2.0)
    ),
    "gpt_oss": lambda: transformers.GptOssForCausalLM(
        transformers.GptOssConfig(
            **TINY, num_local_experts=4, num_experts_per_tok=2, sliding_window=WINDOW
        )
    ),
}


@pytest.mark.parametrize("model", sorted(WINDOWED))
def test_sliding_windows_reach_the_kernel_as_a_window_not_a_mask(model, kernel_device, monkeypatch):
    """Each layer's kernel call gets a key mask (one value per key) and, on a sliding layer,
    window_size (WINDOW - 1, 0): the query itself is one of transformers' WINDOW keys."""
    torch.manual_seed(0)
    net = WINDOWED[model]().to(kernel_device)
    net.set_attn_implementation(huggingface.NAME)
    ids, mask = padded_batch([13, 10], kernel_device, seed=17)
    windows = []
    shapes = kernel_mask_shapes(monkeypatch, windows)
    with torch.no_grad():
        net(input_ids=ids, attention_mask=mask, use_cache=False)
    sliding = [kind == "sliding_attention" for kind in net.config.layer_types]
    assert shapes == [(2, 1, 1, 13)] * len(sliding)
    assert windows == [(WINDOW - 1, 0) if s else (-1, -1) for s in sliding]


@pytest.mark.parametrize("model", PACKED_BY_POSITIONS)
def test_packed_sequences_reach_the_kernel_as_varlen_with_their_lengths(
    model, kernel_device, monkeypatch
):
    """Restarting position_ids take a packed batch to flash_attn_varlen_func with the packed
    rows' lengths, never to the kernel with an (n x n) mask."""
    model_class, config = PACKABLE[model]
    ours, _, ids, position_ids = packed(model_class, config(), kernel_device)
    square = kernel_mask_shapes(monkeypatch)
    package = importlib.import_module("kernels.flash_attention")
    lengths = []

    def recording(q, k, v, cu_seqlens_q, cu_seqlens_k, *args, **kwargs):
        lengths.append((cu_seqlens_q.tolist(), cu_seqlens_k.tolist(), kwargs["causal"]))
        return varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, *args, **kwargs)

    varlen = package.flash_attn_varlen_func
    monkeypatch.setattr(package, "flash_attn_varlen_func", recording)
    with torch.no_grad():
        ours(input_ids=ids, position_ids=position_ids, use_cache=False)
    cumulative = [0, 5, 11, 14, 23, 28]
    assert lengths == [(cumulative, cumulative, True)] * 2 and square == []


def flattening_lengths(position_ids):
    """What DataCollatorWithFlattening(return_flash_attn_kwargs=True) passes for these packed
    rows: int32 cumulative lengths over the tokens laid end to end, and the longest."""
    starts = (position_ids.flatten() == 0).nonzero().flatten()
    cu = torch.cat([starts, starts.new_tensor([position_ids.numel()])]).to(torch.int32)
    longest = int(cu.diff().max())
    return dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)


@pytest.mark.parametrize("model", sorted(PACKABLE))
def test_packing_given_by_its_lengths_keeps_the_sequences_apart_as_eager_does(model, kernel_device):
    """The packed batch with its lengths (and restarting position_ids, as the collator gives
    them) equals eager run on each sequence alone, logits and gradients (GPT-OSS's sinks'
    included): the backend reads the lengths, for GPT-OSS too, whose masks ignore packing."""
    model_class, config = PACKABLE[model]
    ours, eager, ids, position_ids = packed(model_class, config(), kernel_device)
    lengths = flattening_lengths(position_ids)
    run = packed_against_each_sequence_alone(ours, ids, lengths, position_ids=position_ids)

    assert_same_loss_and_gradients(ours, eager, run)


@pytest.mark.parametrize("model", sorted(PACKABLE))
def test_packing_given_by_its_lengths_reaches_the_kernel_as_varlen_with_those_lengths(
    model, kernel_device, monkeypatch
):
    """Given lengths go to flash_attn_varlen_func as they are, GPT-OSS's sinks with them, and
    nothing goes to the kernel with an (n x n) mask."""
    model_class, config = PACKABLE[model]
    ours, _, ids, position_ids = packed(model_class, config(), kernel_device)
    square = kernel_mask_shapes(monkeypatch)
    package = importlib.import_module("kernels.flash_attention")
    calls = []

    def recording(q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k, **kwargs):
        calls.append((cu_seqlens_q.tolist(), cu_seqlens_k.tolist(), max_q, max_k))
        assert (kwargs["sinks"] is not None) == (model == "gpt_oss")
        return varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k, **kwargs)

    varlen = package.flash_attn_varlen_func
    monkeypatch.setattr(package, "flash_attn_varlen_func", recording)
    with torch.no_grad():
        ours(input_ids=ids, use_cache=False, **flattening_lengths(position_ids))
    cumulative = [0, 5, 11, 14, 23, 28]
    assert calls == [(cumulative, cumulative, 9, 9)] * 2 and square == []


def test_packing_given_by_its_lengths_with_a_bidirectional_window_sees_both_ways_in_each_sequence(
    kernel_device,
):
    """An encoder's packed batch (is_causal False) with a sliding window of w: each query sees
    the keys of its own sequence within |i - j| < w on both sides, as transformers'
    bidirectional window masks keep them, against a float64 reference per sequence (float32
    kernel, 1e-5); grouped-query heads, sequences shorter and longer than the window."""
    window, lengths = 4, [3, 9, 6]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    generator = torch.Generator().manual_seed(21)
    total = int(cu[-1])
    q = torch.randn(1, 4, total, 16, generator=generator)
    k, v = (torch.randn(1, 2, total, 16, generator=generator) for _ in range(2))

    class Encoder(torch.nn.Module):
        is_causal = False

    given = dict(cu_seq_lens_q=cu.to(kernel_device), cu_seq_lens_k=cu.to(kernel_device),
                 max_length_q=max(lengths), max_length_k=max(lengths))  # fmt: skip
    out, _ = huggingface.attention_forward(
        Encoder(), *(t.to(kernel_device) for t in (q, k, v)), attention_mask=None,
        scaling=0.25, sliding_window=window, **given,
    )  # fmt: skip
    expected = []
    for start, stop in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        qs, ks, vs = (t[0, :, start:stop].double() for t in (q, k, v))
        ks, vs = ks.repeat_interleave(2, dim=0), vs.repeat_interleave(2, dim=0)
        i = torch.arange(stop - start)
        seen = (i[:, None] - i[None, :]).abs() < window
        scores = (qs @ ks.transpose(-1, -2) * 0.25).masked_fill(~seen, float("-inf"))
        expected.append((scores.softmax(-1) @ vs).transpose(0, 1))  # (n, h, d)
    expected = torch.cat(expected)[None]
    torch.testing.assert_close(out.cpu().double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "arguments, complaint",
    [
        (dict(position_bias=torch.zeros(1, 2, 8, 8)), "position bias"),
        (dict(attention_mask=torch.ones(1, 8, dtype=torch.bool)), "padding"),
        (dict(attention_mask=torch.zeros(1, 1, 8, 8)), "a mask other than"),
        (dict(cu_seq_lens_k=None), "without cu_seq_lens_k"),
    ],
)
def test_packing_given_by_its_lengths_refuses_what_varlen_cannot_carry(arguments, complaint):
    q = torch.randn(1, 2, 8, 4)
    cu = torch.tensor([0, 3, 8], dtype=torch.int32)
    given = dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, attention_mask=None) | arguments
    with pytest.raises(ValueError, match=complaint):
        huggingface.attention_forward(Attention(), q, q, q, **given)


class Attention(torch.nn.Module):
    is_causal = True


@pytest.mark.parametrize(
    "arguments, complaint",
    [
        (dict(block_table=torch.zeros(1, 1, dtype=torch.int32)), "paged"),
        (dict(sliding_window=3, is_causal=False), "sliding window"),
        (dict(output_attentions=True), "no attention weights"),
    ],
)
def test_arguments_it_cannot_honour_raise_before_anything_runs(arguments, complaint):
    q = torch.randn(1, 2, 8, 4)
    with pytest.raises(ValueError, match=complaint):
        huggingface.attention_forward(Attention(), q, q, q, None, **arguments)
