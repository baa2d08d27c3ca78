"""Greedy and beam-search decoding (transformer.decoding): what they never emit, their edge
cases, and that they leave the model in the mode they found it in."""

import pytest
import torch

from transformer.config import ModelConfig
from transformer.decoding import beam_search, greedy_decode
from transformer.model import Transformer

PAD, BOS, EOS = 0, 1, 2
VOCAB = 30


def tiny_model(seed=0, **kw) -> Transformer:
    torch.manual_seed(seed)
    config = dict(
        src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, d_model=32, heads=4, d_ff=64,
        encoder_layers=1, decoder_layers=1, dropout=0.0,
    )  # fmt: skip
    return Transformer(ModelConfig(**{**config, **kw})).eval()


def random_tokens(batch, length, seed=0):
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def favouring(model, *token_ids, by=100.0):
    """Make model.decode's logits prefer token_ids over every other token by a wide margin."""
    decode = model.decode

    def biased(*args, **kwargs):
        logits, cache = decode(*args, **kwargs)
        logits = logits.clone()
        for rank, token in enumerate(token_ids):
            logits[..., token] += by * (len(token_ids) - rank)
        return logits, cache

    model.decode = biased
    return model


DECODERS = {
    "greedy": lambda model, src, **kw: greedy_decode(model, src, BOS, EOS, **kw),
    "beam3": lambda model, src, **kw: beam_search(model, src, BOS, EOS, beam_size=3, **kw),
}


@pytest.mark.parametrize("decode", DECODERS.values(), ids=DECODERS.keys())
def test_decoding_never_emits_padding_or_bos_even_when_the_model_favours_them(decode):
    model = favouring(tiny_model(), PAD, BOS, 7)  # PAD first, BOS second, 7 third
    out = decode(model, random_tokens(3, 5), max_len=6)
    assert out == [[7] * 6] * 3  # the best token that is neither, at every step


@pytest.mark.parametrize("decode", DECODERS.values(), ids=DECODERS.keys())
def test_max_len_zero_gives_empty_outputs_without_decoding(decode):
    model = tiny_model()
    calls = []
    decode_step = model.decode
    model.decode = lambda *a, **kw: calls.append(1) or decode_step(*a, **kw)
    assert decode(model, random_tokens(2, 4), max_len=0) == [[], []]
    assert not calls


@pytest.mark.parametrize("decode", DECODERS.values(), ids=DECODERS.keys())
def test_max_len_caps_the_output_when_eos_never_comes(decode):
    model = favouring(tiny_model(), 9)
    assert decode(model, random_tokens(2, 4), max_len=3) == [[9] * 3] * 2


@pytest.mark.parametrize("beam_size", [0, -1])
def test_beam_size_below_one_is_refused(beam_size):
    with pytest.raises(ValueError, match=f"beam_size must be >= 1, got {beam_size}"):
        beam_search(tiny_model(), random_tokens(1, 4), BOS, EOS, beam_size=beam_size)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("decode", DECODERS.values(), ids=DECODERS.keys())
def test_decoding_runs_in_eval_mode_and_restores_the_models_mode(decode, training):
    model = tiny_model(dropout=0.5)
    src = random_tokens(2, 5)
    expected = decode(model, src, max_len=5)  # eval mode: no dropout
    model.train(training)
    assert decode(model, src, max_len=5) == expected  # dropout off while decoding
    assert model.training is training
    assert all(m.training is training for m in model.modules())


@pytest.mark.parametrize("decode", DECODERS.values(), ids=DECODERS.keys())
def test_a_decoding_that_raises_still_restores_training_mode(decode):
    model = tiny_model().train()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        decode(model, torch.full((1, 3), VOCAB + 5), max_len=3)
    assert model.training


@pytest.mark.parametrize("decode", DECODERS.values(), ids=DECODERS.keys())
def test_a_sentence_decodes_the_same_alone_and_beside_a_longer_padded_one(decode):
    """The default length cap is each row's own (1.5x its unpadded length + 10), not the
    batch's padded width's: without eos, the short row stops at 1.5 * 4 + 10 = 16 tokens."""
    model = favouring(tiny_model(), 7)  # eos never comes
    short, long = random_tokens(1, 4, seed=1), random_tokens(1, 30, seed=2)
    batch = torch.full((2, 30), PAD)
    batch[0, :4], batch[1] = short[0], long[0]
    alone = decode(model, short)
    together = decode(model, batch)
    assert alone == [[7] * 16] and together[0] == alone[0]
    assert together[1] == decode(model, long)[0] == [7] * 55


@pytest.mark.parametrize("decode", DECODERS.values(), ids=DECODERS.keys())
@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_len": -1}, "max_len must be >= 0"),
        ({"max_len": 2.5}, "max_len must be an int"),
    ],
)
def test_a_bad_max_len_is_refused(decode, options, message):
    with pytest.raises((TypeError, ValueError), match=message):
        decode(tiny_model(), random_tokens(1, 3), **options)


@pytest.mark.parametrize("eos_id", [VOCAB, -1, 2.0])
def test_an_eos_outside_the_target_vocabulary_is_refused(eos_id):
    model, src = tiny_model(), random_tokens(1, 3)
    for decode in (greedy_decode, beam_search):
        with pytest.raises(ValueError, match=r"eos_id must be a target token id in \[0, 30\)"):
            decode(model, src, BOS, eos_id)


@pytest.mark.parametrize("alpha", [float("nan"), float("inf")])
def test_a_length_penalty_that_is_not_finite_is_refused(alpha):
    with pytest.raises(ValueError, match="length_penalty_alpha must be a finite number"):
        beam_search(tiny_model(), random_tokens(1, 3), BOS, EOS, length_penalty_alpha=alpha)


@pytest.mark.parametrize("bos_id", [VOCAB, -1, 2.0, True])
def test_a_bos_id_outside_the_target_vocabulary_or_not_an_int_is_refused_naming_it(bos_id):
    """bos_id was never checked: True (read as an index) hid every logit, so decoding emitted
    padding; an id out of range was refused as 'tgt_in holds ids outside the vocabulary'."""
    model, src = tiny_model(), random_tokens(1, 3)
    for decode in (greedy_decode, beam_search):
        with pytest.raises(ValueError, match=r"bos_id must be a target token id in \[0, 30\)"):
            decode(model, src, bos_id, EOS, max_len=3)


@pytest.mark.parametrize("beam_size", [2.0, True, None])
def test_a_beam_size_that_is_not_an_int_is_refused_naming_it(beam_size):
    with pytest.raises(TypeError, match="beam_size must be an int"):
        beam_search(tiny_model(), random_tokens(1, 3), BOS, EOS, beam_size=beam_size, max_len=3)
