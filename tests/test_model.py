"""The encoder-decoder: causality and padding through the whole model, overfitting, decoding.

Tolerances: float32 comparisons of two computations of the same logits use 1e-5 absolute.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from transformer.config import ModelConfig
from transformer.decoding import beam_search, greedy_decode
from transformer.layers import DecoderCache
from transformer.model import Transformer

ATOL = 1e-5
PAD, BOS, EOS = 0, 1, 2


def tiny_model(seed=0, **kw) -> Transformer:
    torch.manual_seed(seed)
    base = dict(
        src_vocab_size=30,
        tgt_vocab_size=30,
        d_model=32,
        heads=4,
        d_ff=64,
        encoder_layers=2,
        decoder_layers=2,
        dropout=0.0,
    )
    base.update(kw)
    return Transformer(ModelConfig(**base)).eval()


def random_tokens(batch, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 30, (batch, length), generator=g)


def half_trained_model(seed=0, steps=30):
    """A model part-way through learning to reverse sequences: uncertain, but not degenerate,
    so that beams overtake one another."""
    model = tiny_model(seed=seed).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(steps):
        src = random_tokens(16, 5, seed=100 + step)
        tgt = src.flip(1)
        tgt_in = torch.cat([torch.full((16, 1), BOS), tgt], dim=1)
        tgt_out = torch.cat([tgt, torch.full((16, 1), EOS)], dim=1)
        loss = F.cross_entropy(model(src, tgt_in).flatten(0, 1), tgt_out.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("norm_first", [True, False])
def test_changing_a_future_target_token_changes_no_earlier_logit(norm_first):
    model = tiny_model(norm_first=norm_first)
    src, tgt = random_tokens(2, 7), random_tokens(2, 6, seed=1)
    changed = tgt.clone()
    changed[:, 4] = (changed[:, 4] + 5) % 27 + 3
    before, after = model(src, tgt), model(src, changed)
    torch.testing.assert_close(after[:, :4], before[:, :4], atol=ATOL, rtol=0)
    assert not torch.allclose(after[:, 4:], before[:, 4:], atol=1e-3)


def test_source_padding_changes_no_real_position_output():
    model = tiny_model(seed=1)
    src, tgt = random_tokens(2, 5), random_tokens(2, 4, seed=1)
    padded = torch.cat([src, torch.full((2, 4), PAD)], dim=1)
    memory, _ = model.encode(src)
    padded_memory, _ = model.encode(padded)
    torch.testing.assert_close(padded_memory[:, :5], memory, atol=ATOL, rtol=0)
    torch.testing.assert_close(model(padded, tgt), model(src, tgt), atol=ATOL, rtol=0)


def test_rows_of_a_batch_do_not_leak_into_each_other():
    model = tiny_model(seed=2)
    src, tgt = random_tokens(3, 6), random_tokens(3, 5, seed=1)
    alone = model(src[1:2], tgt[1:2])
    other = src.clone()
    other[0] = random_tokens(1, 6, seed=9)
    torch.testing.assert_close(model(other, tgt)[1:2], alone, atol=ATOL, rtol=0)


def test_backends_naive_and_sdpa_give_the_same_logits_and_gradients():
    naive = tiny_model(seed=3)
    sdpa = tiny_model(seed=3, backend="sdpa")
    src, tgt = random_tokens(2, 7), random_tokens(2, 6, seed=1)
    src[1, 4:] = PAD
    losses = []
    for model in (naive, sdpa):
        logits = model(src, tgt)
        loss = F.cross_entropy(logits.flatten(0, 1), tgt.flatten())
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], atol=ATOL, rtol=0)
    for (name, a), (_, b) in zip(naive.named_parameters(), sdpa.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("score", ["scaled_dot", "general", "additive"])
def test_model_overfits_a_tiny_batch_to_near_zero_loss(score):
    layers = 1 if score == "additive" else 2  # the additive score's (b,h,i,j,a) tensor is slow
    model = tiny_model(seed=4, score=score, encoder_layers=layers, decoder_layers=layers).train()
    src, tgt = random_tokens(4, 6, seed=2), random_tokens(4, 7, seed=3)
    tgt_in = torch.cat([torch.full((4, 1), BOS), tgt], dim=1)
    tgt_out = torch.cat([tgt, torch.full((4, 1), EOS)], dim=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = F.cross_entropy(model(src, tgt_in).flatten(0, 1), tgt_out.flatten())
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert first > 2.5
    assert loss.item() < 0.05
    assert greedy_decode(model, src, BOS, EOS, max_len=10) == tgt.tolist()


def test_cached_decoding_equals_full_recomputation():
    model = tiny_model(seed=5)
    src, tgt = random_tokens(2, 7), random_tokens(2, 6, seed=1)
    src[0, 5:] = PAD
    memory, src_key_mask = model.encode(src)
    full, _ = model.decode(tgt, memory, src_key_mask)
    cache, steps = DecoderCache(), []
    for t in range(tgt.shape[1]):
        logits, cache = model.decode(tgt[:, t : t + 1], memory, src_key_mask, cache)
        steps.append(logits)
    assert cache.length == tgt.shape[1]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=ATOL, rtol=0)


def uncached_greedy(model, src, max_len):
    tokens = torch.full((src.shape[0], 1), BOS)
    for _ in range(max_len):
        logits = model(src, tokens)[:, -1]
        logits[:, [PAD, BOS]] = float("-inf")
        tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    rows = []
    for row in tokens[:, 1:].tolist():
        rows.append(row[: row.index(EOS)] if EOS in row else row)
    return rows


def test_greedy_decoding_with_cache_equals_uncached_greedy():
    model = tiny_model(seed=6)
    src = random_tokens(3, 6)
    assert greedy_decode(model, src, BOS, EOS, max_len=8) == uncached_greedy(model, src, 8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_search_with_beam_one_equals_greedy(seed):
    model = half_trained_model(seed)
    src = random_tokens(4, 6, seed=seed)
    greedy = greedy_decode(model, src, BOS, EOS, max_len=9)
    assert beam_search(model, src, BOS, EOS, beam_size=1, max_len=9) == greedy


def sequence_log_prob(model, src, hypothesis):
    tgt = torch.tensor([[BOS, *hypothesis]])
    gold = torch.tensor([[*hypothesis, EOS]])
    log_probs = model(src, tgt).log_softmax(-1)
    return log_probs.gather(-1, gold[..., None]).sum().item()


def test_beam_search_finds_a_hypothesis_at_least_as_likely_as_greedy():
    model = half_trained_model(seed=7)
    src = random_tokens(1, 6, seed=4)
    greedy = greedy_decode(model, src, BOS, EOS, max_len=12)[0]
    beam = beam_search(model, src, BOS, EOS, beam_size=6, length_penalty_alpha=0.0, max_len=12)[0]
    assert sequence_log_prob(model, src, beam) >= sequence_log_prob(model, src, greedy) - 1e-5


def test_beam_search_returns_one_hypothesis_per_source_row_in_order():
    model = half_trained_model(seed=8)
    src = random_tokens(3, 6)
    batched = beam_search(model, src, BOS, EOS, beam_size=3, max_len=7)
    one_by_one = [beam_search(model, src[i : i + 1], BOS, EOS, 3, max_len=7)[0] for i in range(3)]
    assert batched == one_by_one


def test_untied_embeddings_with_different_vocabularies_work():
    model = tiny_model(tie_embeddings=False, tgt_vocab_size=23)
    src = torch.tensor([[29, 25, 24, 3, 7]])  # ids that only the source vocabulary holds
    tgt_in = torch.tensor([[BOS, 22, 5, 9]])
    logits = model(src, tgt_in)
    assert logits.shape == (1, 4, 23)
    src_table, tgt_table = model.src_embed.embedding.weight, model.tgt_embed.embedding.weight
    generator = model.generator.weight
    assert src_table.shape == (30, 32) and tgt_table.shape == generator.shape == (23, 32)
    assert len({src_table.data_ptr(), tgt_table.data_ptr(), generator.data_ptr()}) == 3
    logits.logsumexp(-1).sum().backward()
    used_src, used_tgt = src_table.grad.abs().sum(-1) > 0, tgt_table.grad.abs().sum(-1) > 0
    assert used_src.nonzero().flatten().tolist() == [3, 7, 24, 25, 29]  # each table its own rows
    assert used_tgt.nonzero().flatten().tolist() == [1, 5, 9, 22]
    assert (generator.grad.abs().sum(-1) > 0).all()  # every target token scored
    with pytest.raises(ValueError, match=r"tgt_in holds ids outside the vocabulary \[0, 23\)"):
        model(src, torch.tensor([[BOS, 23]]))


def test_config_refuses_bad_values_with_clear_errors():
    good = tiny_model().config
    with pytest.raises(ValueError, match="divisible by heads"):
        dataclasses.replace(good, heads=5)
    with pytest.raises(ValueError, match="shared vocabulary"):
        dataclasses.replace(good, tgt_vocab_size=20)
    with pytest.raises(ValueError, match="dropout"):
        dataclasses.replace(good, dropout=1.5)


def test_model_refuses_token_ids_outside_the_vocabulary():
    model = tiny_model()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[3, 31]]), torch.tensor([[3]]))
    for not_ids in (torch.rand(1, 3), torch.tensor([[3, 4]], dtype=torch.int16)):
        with pytest.raises(TypeError, match="int64 or int32 token ids, got torch"):
            model(not_ids, torch.tensor([[3]]))


def test_model_config_refuses_sizes_that_are_not_ints():
    """heads=2.0 was accepted (and reached einops as h=2.0); a string vocabulary size failed
    with a bare comparison TypeError."""
    from transformer.config import ModelConfig

    for bad in (dict(heads=2.0), dict(src_vocab_size="50"), dict(d_model=True)):
        name, value = next(iter(bad.items()))
        with pytest.raises(TypeError, match=f"{name} must be an int, got {value!r}"):
            ModelConfig(**{"src_vocab_size": 50, "tgt_vocab_size": 50, **bad})


def reference_beam_search(model, src, beam_size, alpha, max_len):
    """One sentence, no cache, plain Python: the model recomputed on every prefix."""
    from transformer.decoding import length_penalty

    beams = [([], 0.0, False)]  # (tokens, log-prob, finished)
    for _ in range(max_len):
        candidates = []
        for tokens, score, done in beams:
            if done:
                candidates.append((tokens, score, True))
                continue
            logits = model(src, torch.tensor([[BOS, *tokens]]))[0, -1]
            logits[[PAD, BOS]] = float("-inf")
            for token, log_prob in enumerate(logits.log_softmax(-1).tolist()):
                candidates.append((tokens + [token], score + log_prob, token == EOS))

        def rank(candidate):
            length = torch.tensor(float(len(candidate[0])))
            return candidate[1] / length_penalty(length, alpha).item()

        beams = sorted(candidates, key=rank, reverse=True)[:beam_size]
        if all(done for _, _, done in beams):
            break
    best = beams[0][0]
    return best[: best.index(EOS)] if EOS in best else best


@pytest.mark.parametrize("seed", [0, 1])
def test_batched_cached_beam_search_equals_an_uncached_reference(seed):
    model = half_trained_model(seed)
    src = random_tokens(2, 5, seed=seed)
    got = beam_search(model, src, BOS, EOS, beam_size=3, length_penalty_alpha=0.6, max_len=6)
    expected = [reference_beam_search(model, src[i : i + 1], 3, 0.6, 6) for i in range(2)]
    assert got == expected


def test_the_library_beam_search_has_no_length_penalty_unless_given_one():
    # The Multi30K-tuned alpha belongs to the application (its default), not to the library.
    import inspect

    from transformer.translation.evaluation import DEFAULT_LENGTH_PENALTY, translate_ids

    model, src = tiny_model(seed=3), random_tokens(3, 7, seed=3)
    default = beam_search(model, src, BOS, EOS, beam_size=4, max_len=8)
    assert default == beam_search(model, src, BOS, EOS, 4, length_penalty_alpha=0.0, max_len=8)
    assert inspect.signature(beam_search).parameters["length_penalty_alpha"].default == 0.0
    assert inspect.signature(translate_ids).parameters["length_penalty"].default == 1.2
    assert DEFAULT_LENGTH_PENALTY == 1.2


@pytest.mark.parametrize(
    ("key_mask", "message"),
    [
        (torch.ones(2, 5, dtype=torch.long), r"key padding mask must be torch\.bool"),
        (
            torch.ones(2, 1, 5, dtype=torch.bool),
            r"key padding mask must have shape \(batch, len_k\)",
        ),
    ],
    ids=["not-bool", "not-2d"],
)
def test_attention_lifts_its_key_mask_through_the_checked_boundary(key_mask, message):
    from transformer.attention import MultiHeadAttention

    attention = MultiHeadAttention(ModelConfig(30, 30, d_model=32, heads=4))
    with pytest.raises((TypeError, ValueError), match=message):
        attention(torch.randn(2, 5, 32), key_mask=key_mask)
