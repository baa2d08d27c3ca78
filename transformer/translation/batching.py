"""Token-count batches with length bucketing, in an order fixed by ``(seed, epoch)``.

Sentences of similar length go together so that little of a batch is padding; a batch holds as
many pairs as fit in ``max_tokens`` *padded* tokens (``rows × longest side``). The batch order of
an epoch is a pure function of ``(seed, epoch)``, which is what lets a resumed run replay exactly
the batches an uninterrupted run would have seen: the checkpoint stores only the epoch and the
index of the next batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from transformer.translation.tokenizer import PAD_ID


@dataclass(frozen=True)
class Batch:
    """One training batch, right-padded with ``PAD_ID``.

    ``src`` (b, s); ``tgt_in`` (b, t) starts with BOS; ``tgt_out`` (b, t) is ``tgt_in`` shifted
    left, ending with EOS.
    """

    src: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor

    @property
    def num_tgt_tokens(self) -> int:
        """Non-pad target tokens: the number of predictions the loss averages over."""
        return int((self.tgt_out != PAD_ID).sum())

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            *(t.to(device, non_blocking=True) for t in (self.src, self.tgt_in, self.tgt_out))
        )


def pad(sequences: Sequence[Sequence[int]], pad_id: int = PAD_ID) -> torch.Tensor:
    """Right-pad id lists into a LongTensor (len(sequences), longest)."""
    longest = max(len(s) for s in sequences)
    out = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return out


def make_batch(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]]) -> Batch:
    """A :class:`Batch` from source ids and target ids that include BOS and EOS."""
    tgt_padded = pad(tgt)
    return Batch(src=pad(src), tgt_in=tgt_padded[:, :-1], tgt_out=tgt_padded[:, 1:])


def batch_indices(
    lengths: Sequence[int],
    max_tokens: int,
    seed: int,
    epoch: int,
    shuffle: bool = True,
) -> list[list[int]]:
    """Group example indices into batches of at most ``max_tokens`` padded tokens.

    Args:
        lengths: cost of each example, e.g. ``max(len(src), len(tgt))``.
        max_tokens: budget of ``rows × longest`` per batch; an example longer than the budget
            gets a batch of its own.
        seed, epoch: the order is a deterministic function of these two.
        shuffle: if false, batches follow length order and ``seed``/``epoch`` are ignored
            (for evaluation).
    """
    lengths = np.asarray(lengths)
    if shuffle:
        rng = np.random.default_rng([seed, epoch])
        # Random tie-breaking among equal lengths, so batches differ from epoch to epoch.
        order = np.lexsort((rng.random(len(lengths)), lengths))
    else:
        order = np.argsort(lengths, kind="stable")
    batches, current, longest = [], [], 0
    for index in order.tolist():
        new_longest = max(longest, int(lengths[index]))
        if current and new_longest * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, new_longest = [], int(lengths[index])
        current.append(index)
        longest = new_longest
    if current:
        batches.append(current)
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def shard(batches: list[list[int]], rank: int, world_size: int) -> list[list[int]]:
    """The batches of one data-parallel rank: every ``world_size``-th, all ranks the same count.

    The last ``len(batches) % world_size`` batches are dropped so that no rank waits on a
    gradient all-reduce that the others never start.
    """
    usable = len(batches) - len(batches) % world_size
    return batches[rank:usable:world_size]
