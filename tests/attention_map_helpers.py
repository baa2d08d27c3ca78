"""What the attention-map and translate tests share (tests/test_attention_map_*.py,
tests/test_bad_input.py): a tiny model, the token ids it reserves, a tokenizer trained on a few
sentences, and a run directory holding them as training writes one."""

import json
from dataclasses import asdict
from pathlib import Path

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


def save_untrained_run(
    directory: Path, tokenizer, max_length: int | None = None, seed: int = 0
) -> Path:
    """``directory`` made a run directory as training writes one (checkpoint, tokenizer and,
    with ``max_length``, a config.json saying it), holding an untrained :func:`tiny_model`.

    Untrained, the model's output hardly depends on its input: with seed 0 it stops at once
    (every translation is empty), with seed 1 it writes a few different words over and over."""
    from transformer.translation.checkpoint import save_checkpoint
    from transformer.translation.tokenizer import save_tokenizer

    model = tiny_model(vocab=tokenizer.get_vocab_size(), seed=seed)
    save_tokenizer(tokenizer, directory / "tokenizer.json")
    meta = {"step": 1, "model_config": asdict(model.config), "tokenizer": "tokenizer.json"}
    save_checkpoint(directory, model, {}, meta)
    if max_length is not None:
        (directory / "config.json").write_text(json.dumps({"max_length": max_length}))
    return directory
