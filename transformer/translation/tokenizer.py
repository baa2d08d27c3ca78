"""Subword vocabulary: a BPE model trained with ``tokenizers``, shared by source and target.

Words are marked with the SentencePiece metaspace (``▁``) so that decoding restores the spacing
exactly (``"Ein Hund."`` → ``▁Ein ▁Hund .`` → ``"Ein Hund."``), which sacreBLEU needs: it scores
detokenized text. Text is normalized to Unicode NFKC first, so a decode gives back the NFKC form
(a non-breaking space comes back as a space, ``ﬁ`` as ``fi``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from transformer.translation.checkpoint import atomic_write_bytes

# The special tokens, defined once. Their ids are their positions: pad must be 0 (ModelConfig.pad_id).
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(len(SPECIAL_TOKENS))
WORD_MARK = "▁"  # the Metaspace marker of a word's first piece


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2
) -> Tokenizer:
    """Train a BPE tokenizer on ``texts`` (for a shared vocabulary: both languages' sentences)."""
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    check_special_tokens(tokenizer)
    return tokenizer


def check_special_tokens(tokenizer: Tokenizer) -> None:
    """Raise ``ValueError`` unless the special tokens have the ids this package assumes."""
    for token, expected in zip(SPECIAL_TOKENS, range(len(SPECIAL_TOKENS)), strict=True):
        if tokenizer.token_to_id(token) != expected:
            raise ValueError(
                f"tokenizer maps {token!r} to {tokenizer.token_to_id(token)}, expected {expected}"
            )


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a ``tokenizer.json`` written by :func:`save_tokenizer` and check its special tokens."""
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception on a bad file
        raise ValueError(f"{path}: not a readable tokenizer.json ({err})") from None
    check_special_tokens(tokenizer)
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> None:
    """Write ``tokenizer.json`` atomically (a full disk leaves no partial file, and an
    ``OSError`` naming it)."""
    atomic_write_bytes(path, tokenizer.to_str(pretty=True).encode())


def encode(
    tokenizer: Tokenizer, texts: Sequence[str], add_bos_eos: bool = False
) -> list[list[int]]:
    """Token ids of each text; with ``add_bos_eos`` wrapped as ``[BOS, ..., EOS]``."""
    encoded = [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]
    if add_bos_eos:
        encoded = [[BOS_ID, *ids, EOS_ID] for ids in encoded]
    return encoded


def decode(tokenizer: Tokenizer, ids: Sequence[Sequence[int]]) -> list[str]:
    """Detokenized text of each id list (special tokens dropped)."""
    return tokenizer.decode_batch([list(x) for x in ids], skip_special_tokens=True)
