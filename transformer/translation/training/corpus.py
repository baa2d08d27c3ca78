"""The corpus of a run: its splits read from disk, the shared BPE vocabulary trained on the
training split, and each split as token ids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.distributed as dist

from transformer.translation.data import load_split
from transformer.translation.tokenizer import (
    encode,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from transformer.translation.training.config import TOKENIZER_FILE

if TYPE_CHECKING:
    from transformer.translation.training.config import TrainConfig


def read_corpus(config: TrainConfig, is_main: bool) -> tuple[Any, Any, Any]:
    """The train, val and (rank 0, if it will be scored) test splits, read before training so
    that a bad split fails before the run starts."""
    train_ds = load_split(config.data, "train", config.src_lang, config.tgt_lang)
    val_ds = load_split(config.data, "val", config.src_lang, config.tgt_lang)
    test_ds = None
    if is_main and config.final_test:
        test_ds = load_split(config.data, config.test_split, config.src_lang, config.tgt_lang)
    return train_ds, val_ds, test_ds


@dataclass
class Corpus:
    """Token ids of one split; targets wrapped in BOS/EOS."""

    src: list[list[int]]
    tgt: list[list[int]]
    tgt_text: list[str]

    def lengths(self) -> list[int]:
        return [max(len(s), len(t) - 1) for s, t in zip(self.src, self.tgt, strict=True)]


def encode_split(
    tokenizer, ds, config: TrainConfig, limit: int | None, filter_long: bool
) -> Corpus:
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    src_text, tgt_text = list(ds[config.src_lang]), list(ds[config.tgt_lang])
    src, tgt = encode(tokenizer, src_text), encode(tokenizer, tgt_text, add_bos_eos=True)
    if filter_long:
        keep = [
            i
            for i in range(len(src))
            if len(src[i]) <= config.max_length and len(tgt[i]) - 1 <= config.max_length
        ]
        src, tgt, tgt_text = (
            [src[i] for i in keep],
            [tgt[i] for i in keep],
            [tgt_text[i] for i in keep],
        )
    return Corpus(src, tgt, tgt_text)


def setup_tokenizer(config: TrainConfig, run_dir: Path, train_ds, dist_info, resume: bool):
    """Rank 0 of a new run trains the BPE vocabulary and saves it; everyone else loads it."""
    path = run_dir / TOKENIZER_FILE
    tokenizer = None
    if dist_info.is_main and not resume:
        texts = train_ds
        if config.train_limit is not None:
            texts = train_ds.select(range(min(config.train_limit, len(train_ds))))
        sentences = list(texts[config.src_lang]) + list(texts[config.tgt_lang])
        tokenizer = train_tokenizer(sentences, config.vocab_size)
        save_tokenizer(tokenizer, path)
    if dist_info.enabled:
        dist.barrier()
    return tokenizer if tokenizer is not None else load_tokenizer(path)
