"""Packed (variable-length) sequences: their description, its checks, and the views the kernels read.

A batch of sequences of different lengths is packed, without padding, into (total, heads, d)
tensors, sequence s taking tokens ``cu_seqlens[s]`` to ``cu_seqlens[s + 1]`` (FlashAttention-2's
``flash_attn_varlen_func``). The kernels read them through (batch, heads, total, d) views whose
batch stride is 0: every program starts at token 0 of the packed tensor, reads its sequence's
first token and length from the cumulative lengths (``tiles._packed_sequence``), and returns at
once when its block lies past its sequence's end. The grid covers (batch x heads,
ceil(max_seqlen / block)); the log-sum-exp and the backward's per-row buffers are packed
(heads, total) rows, and dQ, dK, dV packed like their inputs. Nothing is padded or copied, and
there is no loop over sequences in Python.
"""

import numbers
from typing import NamedTuple

import torch

from kernels.common import runtime
from kernels.common.checks import check_rank


class Packed(NamedTuple):
    """Where each sequence lies in the packed tensors: int32 cumulative lengths (batch + 1,)
    of the queries and of the keys, and the longest of each (the grid's length)."""

    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int

    @property
    def batch(self) -> int:
        return self.cu_seqlens_q.shape[0] - 1

    def view(self, packed: torch.Tensor) -> torch.Tensor:
        """(total, h, d) -> (batch, h, total, d), a view with batch stride 0."""
        total, heads, dim = packed.shape
        return packed.unsqueeze(0).expand(self.batch, total, heads, dim).transpose(1, 2)


def rows_view(packed: torch.Tensor) -> torch.Tensor:
    """(total, h, d) -> (1, h, total, d): the packed tokens as one long sequence (a view), as the
    backward's delta pass reads them: its rows are the packed (h, total) rows."""
    return packed.unsqueeze(0).transpose(1, 2)


def check_packed(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, name):
    """Packed q (total_q, h, d), k and v (total_k, h_k, d|d_v) and their cumulative lengths,
    or a clear error naming the argument. The values of cu_seqlens are read (a device
    synchronisation on a GPU) except while torch.compile traces and while a CUDA graph is
    captured, where reading them back would break the graph or fail the capture."""
    check_rank(name, 3, "(total_tokens, heads, head_dim)", q=q, k=k, v=v)
    for arg, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if not isinstance(cu, torch.Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(cu).__name__}")
        if cu.dtype != torch.int32:
            raise TypeError(f"{name}: {arg} must be int32 (as FlashAttention-2's), got {cu.dtype}")
        if cu.dim() != 1 or cu.shape[0] < 1:
            raise ValueError(
                f"{name}: {arg} must be 1-D, batch + 1 cumulative lengths, got shape "
                f"{tuple(cu.shape)}"
            )
        if cu.device != q.device:
            raise ValueError(f"{name}: {arg} is on {cu.device}, q on {q.device}")
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError(
            f"{name}: cu_seqlens_q and cu_seqlens_k must both hold batch + 1 values, got "
            f"{cu_seqlens_q.shape[0]} and {cu_seqlens_k.shape[0]}"
        )
    for arg, n in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if isinstance(n, bool) or not isinstance(n, numbers.Integral | torch.SymInt) or n < 0:
            raise ValueError(f"{name}: {arg} must be an int >= 0, got {n!r}")
    if not (torch.compiler.is_compiling() or runtime.capturing()):
        values_q, values_k = _read_both(cu_seqlens_q, cu_seqlens_k)
        _check_lengths(values_q, q.shape[0], max_seqlen_q, "q", name)
        _check_lengths(values_k, k.shape[0], max_seqlen_k, "k", name)


def _read_both(cu_seqlens_q, cu_seqlens_k) -> tuple[list[int], list[int]]:
    """Both cumulative lengths as Python lists, read back in one transfer (one synchronisation
    on a GPU, not one each; self-attention usually passes one tensor twice)."""
    if cu_seqlens_k is cu_seqlens_q:
        values = cu_seqlens_q.tolist()
        return values, values
    values = torch.cat([cu_seqlens_q, cu_seqlens_k]).tolist()
    return values[: len(cu_seqlens_q)], values[len(cu_seqlens_q) :]


def _check_lengths(values, total, max_seqlen, which, name):
    """Cumulative lengths ``values`` start at 0, never decrease, end at the packed total, and
    no sequence is longer than max_seqlen (the grid covers max_seqlen tokens per sequence)."""
    arg = f"cu_seqlens_{which}"
    if values[0] != 0:
        raise ValueError(f"{name}: {arg} must start at 0, got {values[0]}")
    lengths = [b - a for a, b in zip(values, values[1:], strict=False)]
    if any(n < 0 for n in lengths):
        raise ValueError(f"{name}: {arg} must not decrease, got {values}")
    if values[-1] != total:
        raise ValueError(
            f"{name}: {arg} must end at the packed total ({which}.shape[0] = {total}), "
            f"got {values[-1]}"
        )
    longest = max(lengths, default=0)
    if longest > max_seqlen:
        raise ValueError(
            f"{name}: max_seqlen_{which} = {max_seqlen} is shorter than sequence "
            f"{lengths.index(longest)} ({longest} tokens)"
        )
