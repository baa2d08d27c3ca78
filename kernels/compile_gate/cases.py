"""What the gate compiles: calls (cases) of the public kernel functions, as a CI subset and as
the full sweep of dtypes, head dims and maskings."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

ARCH_NAMES = {80: "A100", 86: "RTX 30xx / A10", 89: "RTX 40xx / L4", 90: "H100 / H200"}
DTYPES = ("float16", "bfloat16", "float32")
HEAD_DIMS = (16, 40, 64, 80, 96, 128, 160, 192, 256)
ADDITIVE_HEAD_DIMS = HEAD_DIMS[:6]  # the additive kernel takes feature sizes up to 128
# (head dim, value head dim) pairs where they differ: narrower and wider values, across widths
VALUE_HEAD_DIMS = ((64, 128), (128, 64), (40, 256), (256, 96))
MASKINGS = ("none", "key_mask", "causal", "causal+key_mask", "full_mask", "causal+bias",
            "causal+key_mask+dropout", "causal+bias+dropout",
            "varlen+causal", "varlen+dropout")  # fmt: skip
ADDITIVE_MASKINGS = MASKINGS[:4]  # the additive kernel reads key masks only, has no dropout
# The score options as the models combine them (see score_option_cases), in the full sweep in
# the models' 16-bit dtypes at every head dim: float32 only warns when it spills.
SCORE_OPTION_MASKINGS = ("causal+window", "causal+window+softcap", "causal+window+sinks",
                         "causal+key_mask+alibi", "window+bottom_right")  # fmt: skip
# "varlen": packed sequences (flash_attn_varlen_func): q (batch * len_q, h, d), k and v
# (batch * len_k, h_kv, d), len_q and len_k the longest sequences (VARLEN=True).
# A masking with "dropout" runs flash attention with this dropout (any p > 0 compiles the same;
# seed and offset are not specialised on).
GATE_DROPOUT = (0.1, 12345, 678)
# The score options a masking may name ("window", "bottom_right", "softcap", "alibi",
# "sinks"; compile_gate.capture reads them): their values are run-time arguments, so any
# compiles the same; only whether each is on is specialised.
GATE_WINDOW = (64, 16)
GATE_SOFTCAP = 30.0


@dataclass(frozen=True)
class Case:
    """One call of a public kernel function, forward and backward."""

    workload: str
    dtype: str
    head_dim: int
    masking: str
    len_q: int = 200
    len_k: int = 333
    batch: int = 2  # batch and heads matter to a build only through H's and the strides'
    heads: int = 3  # divisibility by 16 (Triton specialises integers on it)
    heads_kv: int | None = None  # of the query heads (None: as many); fewer: grouped-query
    value_head_dim: int | None = None  # v's (None: head_dim); flash attention only

    def label(self) -> str:
        gqa = "" if self.kv_heads == self.heads else f" gqa {self.heads}/{self.kv_heads}"
        if self.v_dim != self.head_dim:
            gqa += f" d_v={self.v_dim}"
        shape = f"{self.len_q}x{self.len_k}"
        if (self.batch, self.heads) != (2, 3):
            shape = f"{self.batch}x{self.heads}x{shape}"
        return f"{self.workload} {self.dtype} d={self.head_dim} {self.masking}{gqa} ({shape})"

    @property
    def v_dim(self) -> int:
        return self.head_dim if self.value_head_dim is None else self.value_head_dim

    @property
    def kv_heads(self) -> int:
        return self.heads if self.heads_kv is None else self.heads_kv


def ci_cases() -> tuple[list[Case], list[Case]]:
    """(cases tried with every config, cases tried with the launcher's first choice only).

    Every config is tried where it matters most: flash attention in bf16 (the models' dtype) at
    head dims 64 and 128, masked and causal at once (both masking code paths compiled). The
    other dtypes, head dims and maskings (a full boolean mask read with its own strides, a
    float bias with its gradient), grouped-query attention, the one-query decoding shape,
    dropout (with a key mask, with a float bias and its gradient, and grouped-query) and the
    additive kernels compile in the launcher's order until one config compiles without spills.
    """
    every = [Case("flash_attention", "bfloat16", d, "causal+key_mask") for d in (64, 128)]
    first = [
        Case("flash_attention", "float16", d, masking)
        for d, masking in ((16, "none"), (40, "causal"), (80, "full_mask"), (96, "causal+bias"))
    ]
    first.append(Case("flash_attention", "bfloat16", 64, "causal+key_mask", len_q=1, len_k=77))
    first.append(Case("flash_attention", "bfloat16", 128, "causal+key_mask", heads_kv=1))
    # head dims past 128 and a value head dim of its own: first choices only, a few builds
    first.append(Case("flash_attention", "bfloat16", 256, "causal+key_mask"))
    first.append(Case("flash_attention", "float16", 192, "causal+bias"))
    first.append(Case("flash_attention", "bfloat16", 64, "causal", value_head_dim=160))
    first += [
        Case("flash_attention", "bfloat16", 128, "causal+key_mask+dropout"),
        Case("flash_attention", "float16", 64, "causal+bias+dropout"),
        Case("flash_attention", "bfloat16", 64, "causal+key_mask+dropout", heads_kv=1),
    ]
    first += [Case("flash_attention", "float32", d, "causal+key_mask") for d in (64, 128)]
    first += score_option_cases()
    first += large_offset_cases()
    first += varlen_cases()
    first += [
        Case("additive_attention", dtype, d, masking)
        for dtype, d, masking in (
            ("bfloat16", 64, "causal+key_mask"),
            ("bfloat16", 128, "causal+key_mask"),
            ("float16", 16, "none"),
            ("float16", 40, "causal"),
            ("float16", 96, "key_mask"),
            ("float32", 64, "causal+key_mask"),
            ("float32", 128, "causal+key_mask"),
        )
    ]
    return every, first


def score_option_cases() -> list[Case]:
    """Each of flash attention's score options at least once, forward and backward, as the
    models that use them combine them: Gemma 2 (a causal sliding window and softcapping),
    GPT-OSS (a causal window and sinks, grouped-query), BLOOM (ALiBi with a padding mask), and
    FlashAttention-2's non-causal window with both edges, bottom-right."""
    return [
        Case("flash_attention", "bfloat16", 128, "causal+window+softcap"),
        Case("flash_attention", "bfloat16", 64, "causal+window+sinks", heads=4, heads_kv=1),
        Case("flash_attention", "float16", 128, "causal+key_mask+alibi"),
        Case("flash_attention", "bfloat16", 64, "window+bottom_right"),
    ]


def large_offset_cases() -> list[Case]:
    """Calls whose (len_q, len_k) slices are past 2^31 elements (46,341 tokens), which the
    kernels run with int64 offsets (LARGE_OFFSETS, kernels.common.jit): a full boolean mask,
    and a float bias with its gradient and dropout. (Meta tensors: nothing is allocated.)"""
    n = 46341
    return [
        Case("flash_attention", "bfloat16", 128, "full_mask", n, n, batch=1, heads=1),
        Case("flash_attention", "float16", 64, "causal+bias+dropout", n, n, batch=1, heads=1),
    ]


def varlen_cases() -> list[Case]:
    """Packed sequences (VARLEN), first choices: each kernel with causality per sequence,
    grouped-query heads and the widest head dims, with dropout (its per-sequence counters),
    with FlashAttention-2's window, softcap and ALiBi (anchored in each sequence), and with
    GPT-OSS's window and sinks (the Hugging Face backend's packed batches)."""
    return [
        Case("flash_attention", "bfloat16", 128, "varlen+causal", heads_kv=1),
        Case("flash_attention", "float16", 64, "varlen+dropout"),
        Case("flash_attention", "bfloat16", 256, "varlen+causal"),
        Case("flash_attention", "float32", 64, "varlen+causal"),
        Case("flash_attention", "bfloat16", 64, "varlen+causal+window+softcap+alibi", heads_kv=1),
        Case("flash_attention", "bfloat16", 64, "varlen+causal+window+sinks", heads_kv=1),
    ]


def full_cases() -> list[Case]:
    dims = [(d, None) for d in HEAD_DIMS] + list(VALUE_HEAD_DIMS)  # (head dim, value head dim)
    flash = [
        Case("flash_attention", dtype, d, masking, value_head_dim=d_v)
        for dtypes, maskings in ((DTYPES, MASKINGS), (DTYPES[:2], SCORE_OPTION_MASKINGS))
        for dtype, (d, d_v), masking in itertools.product(dtypes, dims, maskings)
    ]
    additive = [
        Case("additive_attention", dtype, d, masking)
        for dtype, d, masking in itertools.product(DTYPES, ADDITIVE_HEAD_DIMS, ADDITIVE_MASKINGS)
    ]
    return flash + additive
