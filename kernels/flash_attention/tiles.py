"""Tile-level helpers shared by the flash-attention kernels (and the additive kernel).

``@triton.jit`` functions inlined into the forward and backward kernels: the products, the
rounding to the input dtype, bounds-checked tile loads, the key-mask read, the saved softmax
statistics and the dropout keep-mask. Module globals read inside jitted code are ``tl.constexpr`` objects.
"""

import triton
import triton.language as tl

# exp(x) == exp2(x * log2(e)): the kernels work in base 2 (exp2 is the native instruction) and
# fold log2(e) into the softmax scale, so each score costs one multiply and one exp2.
LOG2_E = tl.constexpr(1.4426950408889634)
LN_2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _dot(a, b, EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr):
    """a @ b with float32 accumulation.

    The Triton interpreter multiplies bfloat16 blocks as their raw uint16 bits, so under it the
    operands -- whose values are already bfloat16 -- are widened to float32 first: the same
    products as a bfloat16 tensor-core dot accumulating in float32.
    """
    if EMULATE_BF16:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _round(x, dtype: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """float32 x rounded to dtype, to nearest even as compiled Triton does.

    The interpreter narrows float32 to bfloat16 by truncation, a bias that adds up over a row
    of probabilities; there we round the float32 bits ourselves first (add half an ulp of
    bfloat16 plus the tie-to-even bit, then clear the low 16 bits), so the narrowing is exact.
    """
    if EMULATE_BF16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _key_is_valid(Mask, mask_base, stride_mn, cols, LEN_K, HAS_MASK: tl.constexpr):
    """(BLOCK_N,) bool: the key exists (col < len_k) and, with a key mask, takes part."""
    valid = cols < LEN_K
    if HAS_MASK:
        takes_part = tl.load(Mask + mask_base + cols * stride_mn, mask=valid, other=0)
        valid = valid & (takes_part != 0)
    return valid


@triton.jit
def _load_rows(ptrs, rows, n_rows, d_ok, PARTIAL: tl.constexpr, EVEN_D: tl.constexpr):
    """A (rows, D) tile. Rows are bounds-checked only in a PARTIAL block, head-dim lanes only
    when the head dim is padded (not EVEN_D); padding loads as 0."""
    if PARTIAL:
        ok = rows[:, None] < n_rows
        if not EVEN_D:
            ok = ok & d_ok[None, :]
        tile = tl.load(ptrs, mask=ok, other=0.0)
    elif EVEN_D:
        tile = tl.load(ptrs)
    else:
        tile = tl.load(ptrs, mask=d_ok[None, :], other=0.0)
    return tile


@triton.jit
def _softmax_stats(Lse, Delta, row_ptrs, rows, LEN_Q, PARTIAL: tl.constexpr):
    """(lse in log2 units, delta) for a block of query rows, as the backward passes need them.

    Rows that saw no key saved lse = -inf; all their scores are -inf as well, so any finite
    stand-in gives p = 0 rather than exp2(-inf + inf) = NaN.
    """
    if PARTIAL:
        lse = tl.load(Lse + row_ptrs, mask=rows < LEN_Q, other=0.0)
        delta = tl.load(Delta + row_ptrs, mask=rows < LEN_Q, other=0.0)
    else:
        lse = tl.load(Lse + row_ptrs)
        delta = tl.load(Delta + row_ptrs)
    return tl.where(lse == float("-inf"), 0.0, lse * LOG2_E), delta


@triton.jit
def _apply_mask(
    s, M, stride_mm, stride_mn, rows, cols, LEN_Q, LEN_K,
    MASK_FLOAT: tl.constexpr, MASK_ROWS: tl.constexpr,
):  # fmt: skip
    """Scores s (i, j), in log2 units, with the attention mask of this tile applied.

    ``M`` points at this batch's and head's mask, read with its own strides (0 on an axis it
    broadcasts over). A boolean mask (read as bytes) sets the pairs that take no part to -inf;
    a float mask is added to the scores (times log2 e: s is in log2 units). Without MASK_ROWS
    the mask broadcasts over queries and one value per key is read; with it, an (i, j) tile.
    Reads past len_q or len_k give 0 (a pair there is hidden or never stored anyway).
    """
    if MASK_ROWS:
        ptrs = M + rows[:, None] * stride_mm + cols[None, :] * stride_mn
        m = tl.load(ptrs, mask=(rows[:, None] < LEN_Q) & (cols[None, :] < LEN_K), other=0)
    else:
        m = tl.load(M + cols * stride_mn, mask=cols < LEN_K, other=0)[None, :]
    if MASK_FLOAT:
        s = s + m.to(tl.float32) * LOG2_E
    else:
        s = tl.where(m != 0, s, float("-inf"))
    return s


@triton.jit
def _mask_key_block(
    s, M, stride_mm, stride_mn, rows, cols, LEN_Q, LEN_K, causal_shift,
    MASKED: tl.constexpr, HAS_MASK: tl.constexpr, MASK_FLOAT: tl.constexpr,
    MASK_ROWS: tl.constexpr, IS_CAUSAL: tl.constexpr,
):  # fmt: skip
    """Scores (i, j) of one key block with the mask applied and hidden pairs set to -inf.

    A MASKED block may run past len_k or cross the causal diagonal, so it checks bounds and
    builds the causal mask; any other block is whole and wholly visible to every query of the
    tile, and only the attention mask, when given, is read.
    """
    if HAS_MASK:
        s = _apply_mask(s, M, stride_mm, stride_mn, rows, cols, LEN_Q, LEN_K, MASK_FLOAT, MASK_ROWS)
    if MASKED:
        valid = (cols < LEN_K)[None, :]
        if IS_CAUSAL:
            valid = valid & (cols[None, :] <= rows[:, None] + causal_shift)
        s = tl.where(valid, s, float("-inf"))
    return s


@triton.jit
def _dropout_keep(seed, rng_offset, row_ids, cols, LEN_K, dropout_p):
    """(i, j) bool: which (query, key) pairs of this tile dropout keeps, each with chance 1 - p.

    One uniform number per pair from Philox, ``tl.rand(seed, counter)``, where the counter is
    the call's ``rng_offset`` plus the pair's place in the whole (b * h, len_q, len_k) score
    tensor: ``row_ids`` (BLOCK_M,) are b * h * len_q + i, so the counter is
    rng_offset + row_id * len_k + j. It is computed in int64 (tl.rand takes 64-bit counters:
    their high 32 bits become Philox's second counter word), so it cannot overflow at any size
    the launch grid allows (b * h * len_q * len_k < 2^62). Every kernel that touches a pair
    (the forward, both backward passes, and the test helper dropout.dropout_keep_mask) computes
    its keep bit here, from the same counter, so the backward sees exactly the forward's mask.
    Pairs past len_q or len_k get numbers too; they are hidden (p = 0) or never stored.
    """
    counters = rng_offset + row_ids.to(tl.int64)[:, None] * LEN_K + cols[None, :]
    return tl.rand(seed, counters) >= dropout_p
