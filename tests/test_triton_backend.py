"""The model with backend="triton" (our flash kernel, or the fused additive kernel for the
additive score) agrees with backend="naive".

Without CUDA the kernels run under the Triton interpreter (see tests/conftest.py).
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from transformer.config import ModelConfig
from transformer.decoding import greedy_decode
from transformer.layers import DecoderCache
from transformer.model import Transformer

PAD, BOS, EOS = 0, 1, 2


SCORES = ["scaled_dot", "additive"]
SLOW = pytest.mark.slow  # the long sweeps: python -m pytest -m slow


def twin_models(device, score="scaled_dot"):
    """The same weights twice, on ``device``: one on the naive backend, one on the triton
    backend. (The additive kernel loops over its a = head_dim channels, slow under the
    interpreter: a = 8.)"""
    config = ModelConfig(
        src_vocab_size=37, tgt_vocab_size=37, d_model=24 if score == "additive" else 48,
        heads=3, encoder_layers=2,
        decoder_layers=2, d_ff=64, dropout=0.0, score=score, backend="naive",
    )  # fmt: skip
    torch.manual_seed(0)
    naive = Transformer(config)
    triton = Transformer(dataclasses.replace(config, backend="triton"))
    triton.load_state_dict(naive.state_dict())
    return naive.to(device), triton.to(device)


def padded_batch(device):
    gen = torch.Generator().manual_seed(1)
    src = torch.randint(3, 37, (3, 11), generator=gen)
    src[1, 7:] = PAD  # ragged source lengths exercise the key mask
    src[2, 4:] = PAD
    tgt = torch.randint(3, 37, (3, 9), generator=gen)
    tgt[:, 0] = BOS
    return src.to(device), tgt.to(device)


@pytest.mark.parametrize("score", ["scaled_dot", pytest.param("additive", marks=SLOW)])
def test_training_step_loss_and_gradients_match_naive_backend(score, kernel_device):
    src, tgt = padded_batch(kernel_device)
    results = []
    for model in twin_models(kernel_device, score):
        logits = model(src, tgt[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=PAD)
        loss.backward()
        results.append((loss, {n: p.grad for n, p in model.named_parameters()}))
    (loss_naive, grads_naive), (loss_triton, grads_triton) = results
    assert torch.allclose(loss_triton, loss_naive, atol=1e-5)
    assert grads_naive.keys() == grads_triton.keys()
    for name, grad in grads_naive.items():
        assert torch.allclose(grads_triton[name], grad, atol=1e-5, rtol=1e-4), name


@SLOW  # minutes under the interpreter: a kernel launch per layer and token
@pytest.mark.parametrize("score", SCORES)
@torch.no_grad()
def test_cached_decoding_with_triton_matches_full_decoding_and_naive_greedy(score, kernel_device):
    naive, triton = (m.eval() for m in twin_models(kernel_device, score))
    src, tgt = padded_batch(kernel_device)
    memory, src_key_mask = triton.encode(src)
    full, _ = triton.decode(tgt, memory, src_key_mask)
    cache, steps = DecoderCache(), []
    for t in range(tgt.shape[1]):  # one token at a time: len_q = 1 against a growing cache
        logits, cache = triton.decode(tgt[:, t : t + 1], memory, src_key_mask, cache)
        steps.append(logits)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
    # two tokens at a time: len_q = 2 < len_k, where bottom-right causal alignment matters
    cache, chunks = DecoderCache(), []
    for t in range(0, tgt.shape[1], 2):
        logits, cache = triton.decode(tgt[:, t : t + 2], memory, src_key_mask, cache)
        chunks.append(logits)
    assert torch.allclose(torch.cat(chunks, dim=1), full, atol=1e-5)
    assert greedy_decode(triton, src, BOS, EOS, max_len=8) == greedy_decode(
        naive, src, BOS, EOS, max_len=8
    )


def test_attend_on_triton_reads_a_mask_of_any_rank_and_shape_as_sdpa_does(kernel_device):
    """attend broadcasts a mask from the right, as SDPA does; the triton backend hands it to
    the kernel as it is: key masks of every rank, full (len_q, len_k) and per-head masks."""
    from transformer.attention import attend

    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 3, n, 16, generator=gen).to(kernel_device) for n in (4, 9, 9))
    keys = torch.rand(9, generator=gen) < 0.6
    keys[0] = True
    full = torch.rand(2, 3, 4, 9, generator=gen) < 0.5
    full[0, 0, 0] = False  # a query that sees no key: zeros
    keys, full = keys.to(kernel_device), full.to(kernel_device)
    for mask in (keys, keys[None], keys[None, None], keys[None, None, None], full, full[0, 0]):
        for is_causal in (False, True):
            expected = attend(q, k, v, attn_mask=mask, is_causal=is_causal, backend="naive")
            got = attend(q, k, v, attn_mask=mask, is_causal=is_causal, backend="triton")
            assert torch.allclose(got, expected, atol=1e-5), (tuple(mask.shape), is_causal)
