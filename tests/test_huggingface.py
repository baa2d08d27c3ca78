"""Hugging Face models on our kernel equal the same models on ``"sdpa"`` (and ``"eager"``).

Tiny randomly initialised models built from configs (nothing is downloaded): a Llama-style
decoder (causal, grouped-query attention, padding), BERT (padding masks), MarianMT (encoder-
decoder: padding, causal self-attention, cross attention) and T5 (a learnt relative-position
bias, the kernel's float mask with its gradient). Outputs at the positions a loss reads and every
parameter gradient agree; greedy generation with the key/value cache gives the same tokens.
Models and inputs are put on the ``kernel_device`` fixture's device (the GPU where there is one:
the kernel refuses CPU tensors there). Skipped when ``transformers`` is not installed
(``pip install -e ".[huggingface]"``).
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from huggingface_helpers import (  # noqa: E402  (tests/, on sys.path as conftest's)
    VOCAB,
    assert_same_loss_and_gradients,
    padded_batch,
    twin_models,
)

from kernels.integrations import huggingface  # noqa: E402

huggingface.register()


def test_llama_decoder_with_grouped_query_attention_and_padding_matches_sdpa(kernel_device):
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    ours, reference = twin_models(transformers.LlamaForCausalLM, config, kernel_device)
    ids, mask = padded_batch([9, 5], kernel_device, seed=1)

    def run(model):
        logits = model(input_ids=ids, attention_mask=mask).logits
        kept = mask.bool()
        return logits[kept], (logits[kept] ** 2).mean()

    assert_same_loss_and_gradients(ours, reference, run)


def test_llama_cached_generation_gives_the_same_tokens(kernel_device):
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
    )  # fmt: skip
    ours, reference = twin_models(transformers.LlamaForCausalLM, config, kernel_device)
    ids, _ = padded_batch([6, 6], kernel_device, seed=2)
    kwargs = dict(max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    with torch.no_grad():
        got = ours.eval().generate(ids, **kwargs)
        want = reference.eval().generate(ids, **kwargs)
    assert torch.equal(got, want)


def test_bert_with_padding_matches_sdpa(kernel_device):
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    ours, reference = twin_models(transformers.BertModel, config, kernel_device)
    ids, mask = padded_batch([11, 4, 7], kernel_device, seed=3)

    def run(model):
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()]
        return hidden, (hidden**2).mean()

    assert_same_loss_and_gradients(ours, reference, run)


def marian_config():
    return transformers.MarianConfig(
        vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=2, dropout=0.0, attention_dropout=0.0,
    )  # fmt: skip


def test_marian_encoder_decoder_with_padding_and_cross_attention_matches_sdpa(kernel_device):
    ours, reference = twin_models(transformers.MarianMTModel, marian_config(), kernel_device)
    src, src_mask = padded_batch([8, 5], kernel_device, seed=4)
    tgt, tgt_mask = padded_batch([6, 3], kernel_device, seed=5)

    def run(model):
        logits = model(
            input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt,
            decoder_attention_mask=tgt_mask,
        ).logits[tgt_mask.bool()]  # fmt: skip
        return logits, (logits**2).mean()

    assert_same_loss_and_gradients(ours, reference, run)


def test_marian_cached_generation_gives_the_same_tokens(kernel_device):
    ours, reference = twin_models(transformers.MarianMTModel, marian_config(), kernel_device)
    src, src_mask = padded_batch([7, 4], kernel_device, seed=6)
    kwargs = dict(max_new_tokens=6, do_sample=False, num_beams=1, use_cache=True)
    with torch.no_grad():
        got = ours.eval().generate(input_ids=src, attention_mask=src_mask, **kwargs)
        want = reference.eval().generate(input_ids=src, attention_mask=src_mask, **kwargs)
    assert torch.equal(got, want)


def test_t5_learnt_relative_bias_trains_through_the_kernel_as_on_sdpa(kernel_device):
    config = transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
        num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0,
        decoder_start_token_id=0, pad_token_id=0,
    )  # fmt: skip
    ours, reference = twin_models(transformers.T5ForConditionalGeneration, config, kernel_device)
    src, src_mask = padded_batch([7, 4], kernel_device, seed=7)
    tgt, tgt_mask = padded_batch([5, 5], kernel_device, seed=8)

    def run(model):
        logits = model(
            input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt,
            decoder_attention_mask=tgt_mask,
        ).logits[tgt_mask.bool()]  # fmt: skip
        return logits, (logits**2).mean()

    assert_same_loss_and_gradients(ours, reference, run)
    bias = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    assert dict(ours.named_parameters())[bias].grad.abs().sum() > 0
