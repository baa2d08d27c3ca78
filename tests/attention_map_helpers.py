"""What the attention-map tests share (tests/test_attention_map_*.py): a tiny model, the
token ids it reserves, and a tokenizer trained on a few sentences."""

import torch

from transformer import ModelConfig, Transformer

PAD, BOS, EOS = 0, 1, 2
SENTENCES = [
    "Ein Mann fährt Fahrrad.",
    "A man rides a bike.",
    "Zwei Hunde spielen im Schnee.",
    "Two dogs play in the snow.",
    "Eine Frau liest ein Buch.",
    "A woman reads a book.",
]


def tiny_model(score="scaled_dot", backend="naive", vocab=40, seed=0) -> Transformer:
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab, vocab, d_model=32, heads=4, encoder_layers=2, decoder_layers=2, d_ff=64,
        dropout=0.0, score=score, backend=backend,
    )  # fmt: skip
    return Transformer(config).eval()


def train_small_tokenizer():
    """A tokenizer trained on SENTENCES (the tests' ``tokenizer`` fixture, module-scoped)."""
    from transformer.translation.tokenizer import train_tokenizer

    return train_tokenizer(SENTENCES, vocab_size=80, min_frequency=1)
