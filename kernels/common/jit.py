"""The Triton device code both kernels share: constants, products and rounding, the program's
place in the grid and its pointers, the key mask, the online-softmax step, the saved softmax
statistics, and the ``delta = rowsum(dO * O)`` kernel of both backward passes.

``@triton.jit`` functions are inlined into the kernels that call them, so sharing them costs
nothing in the compiled code. Module globals read inside jitted code must be ``tl.constexpr``
objects: the compiler refuses plain Python globals (the interpreter would accept them, and hide
the bug).

**Offsets.** Every kernel offsets its batch and head in int64 (``b * stride_b`` overflows int32 for
large tensors) and, for speed, each row and lane within one (batch, head) slice in int32. Past
2^31 elements in one slice -- a full (len_q, len_k) mask at ~47k tokens, a float mask's gradient
there, a (b, n, h, d) view at long lengths -- those int32 products wrap. A launch where that can
happen (:func:`needs_int64_offsets`) compiles with ``LARGE_OFFSETS=True``: the kernel widens its
row and lane strides to int64 (:func:`widen`) before any product, so every offset is int64. With
``LARGE_OFFSETS=False`` :func:`widen` returns its argument and the compiled code is unchanged.
"""

import torch
import triton
import triton.language as tl

# exp(x) == exp2(x * log2(e)): the kernels work in base 2 (exp2 is the native instruction) and
# fold log2(e) into the softmax scale, so each score costs one multiply and one exp2.
LOG2_E = tl.constexpr(1.4426950408889634)
LN_2 = tl.constexpr(0.6931471805599453)

DELTA_ROWS = 64  # query rows per program of the small delta pass (not worth tuning)
INT32_MAX = 2**31 - 1  # the largest offset the kernels compute in int32


@triton.jit
def dot(a, b, EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr):
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
def round_to(x, dtype: tl.constexpr, EMULATE_BF16: tl.constexpr):
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
def widen(stride, LARGE_OFFSETS: tl.constexpr):
    """A row or lane stride as the kernels multiply by it: int64 under LARGE_OFFSETS (so every
    product with it, and every offset built from those, is int64), else unchanged."""
    if LARGE_OFFSETS:
        stride = tl.cast(stride, tl.int64)
    return stride


@triton.jit
def program_tile(H, BLOCK: tl.constexpr):
    """(off_bh, off_b, off_h, start) of this program: grid axis 0 is batch * heads (see
    kernels.common.runtime.grid), its batch and head as int64 (b * stride_b overflows int32 for large
    tensors); axis 1 is the tile, whose first row (query or key) is ``start``."""
    off_bh = tl.program_id(0)
    start = tl.program_id(1) * BLOCK
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    return off_bh, off_b, off_h, start


@triton.jit
def head_rows(
    Base, off_b, off_h, stride_b, stride_h, stride_row, lanes, stride_lane,
    LARGE_OFFSETS: tl.constexpr,
):  # fmt: skip
    """(base, stride_row) of one (batch, head)'s (rows, lanes) matrix: (1, lanes) pointers to its
    row 0, and the row stride, widened (:func:`widen`) as the lane stride is: a tile of it is
    ``base + rows[:, None] * stride_row``."""
    base = Base + off_b * stride_b + off_h * stride_h
    base += lanes[None, :] * widen(stride_lane, LARGE_OFFSETS)
    return base, widen(stride_row, LARGE_OFFSETS)


@triton.jit
def head_tile(
    Base, off_b, off_h, stride_b, stride_h, rows, stride_row, lanes, stride_lane,
    LARGE_OFFSETS: tl.constexpr,
):  # fmt: skip
    """(rows, lanes) pointers of a tile of one (batch, head)'s (rows, lanes) matrix, its strides
    widened (:func:`widen`)."""
    head = Base + off_b * stride_b + off_h * stride_h
    rows_offsets = rows[:, None] * widen(stride_row, LARGE_OFFSETS)
    return head + rows_offsets + lanes[None, :] * widen(stride_lane, LARGE_OFFSETS)


@triton.jit
def key_is_valid(Mask, mask_base, stride_mn, cols, LEN_K, HAS_MASK: tl.constexpr):
    """(BLOCK_N,) bool: the key exists (col < len_k) and, with a key mask, takes part."""
    valid = cols < LEN_K
    if HAS_MASK:
        takes_part = tl.load(Mask + mask_base + cols * stride_mn, mask=valid, other=0)
        valid = valid & (takes_part != 0)
    return valid


@triton.jit
def online_softmax_step(s, m_i, l_i):
    """One key block of the online softmax: (p, alpha, l_i, m_new) for scores s (i, j) in log2
    units, the running row max m_i and row sum l_i. p = exp2(s - m_new) (i, j); alpha rescales
    what was summed under the old max (the output accumulator too: acc * alpha + p V)."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # While a row has seen no valid key its max is -inf, and -inf - -inf would be NaN;
    # subtracting 0 instead keeps p = exp2(-inf) = 0 and alpha = 0 for such rows.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    return p, alpha, l_i, m_new


@triton.jit
def normalise(acc, l_i, m_i, keep_scale, HAS_DROPOUT: tl.constexpr):
    """(out, lse) at the end of the online softmax: out = acc / l (times keep_scale = 1 / (1 - p)
    with dropout: the kept probabilities, rescaled) and lse in natural log.

    A row with no valid key has l = 0 and acc = 0: it gets zeros and lse = -inf (log of an empty
    sum), never 0/0. (m + log2 l) is in log2 units of the scaled scores, times ln 2.
    """
    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]
    if HAS_DROPOUT:
        out = out * keep_scale
    lse = tl.where(seen, (m_i + tl.log2(l_safe)) * LN_2, float("-inf"))
    return out, lse


@triton.jit
def softmax_stats(Lse, Delta, row_ptrs, rows, LEN_Q, PARTIAL: tl.constexpr):
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
def attn_bwd_delta(
    Out, DOut, DLse, Delta,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_gb, stride_gh, stride_gm, stride_gd,
    H, LEN_Q, HEAD_DIM,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, LARGE_OFFSETS: tl.constexpr = False,
):  # fmt: skip
    """delta_i = sum_d dO_id * O_id - dlse_i, one value per query row (both kernels' backward).

    From dS = P * (dP - rowsum(dO * O)) for the output, plus dS += P * dlse for the
    log-sum-exp (d lse_i / d s_ij = P_ij): folding -dlse into delta covers both at no cost.
    """
    off_bh, off_b, off_h, start_m = program_tile(H, BLOCK_M)
    stride_om, stride_od = widen(stride_om, LARGE_OFFSETS), widen(stride_od, LARGE_OFFSETS)
    stride_gm, stride_gd = widen(stride_gm, LARGE_OFFSETS), widen(stride_gd, LARGE_OFFSETS)
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (rows[:, None] < LEN_Q) & (offs_d[None, :] < HEAD_DIM)

    o_ptrs = Out + off_b * stride_ob + off_h * stride_oh
    o = tl.load(
        o_ptrs + rows[:, None] * stride_om + offs_d[None, :] * stride_od, mask=ok, other=0.0
    )
    g_ptrs = DOut + off_b * stride_gb + off_h * stride_gh
    do = tl.load(
        g_ptrs + rows[:, None] * stride_gm + offs_d[None, :] * stride_gd, mask=ok, other=0.0
    )
    row_ptrs = off_bh.to(tl.int64) * LEN_Q + rows
    dlse = tl.load(DLse + row_ptrs, mask=rows < LEN_Q, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1) - dlse
    tl.store(Delta + row_ptrs, delta, mask=rows < LEN_Q)


# Triton decides at @triton.jit time (that is, when this module was imported) whether kernels
# are compiled or interpreted, from TRITON_INTERPRET as it was then.
INTERPRETED = type(dot).__name__ == "InterpretedFunction"


def slice_extent(tensor: torch.Tensor) -> int:
    """The largest offset, in elements, of an element of ``tensor`` from the start of its
    (batch, head) slice: the kernels index a (b, h, rows, lanes) tensor as b * stride_b +
    h * stride_h (int64) plus rows * stride_rows + lanes * stride_lanes, and this is the largest
    value of that second part. Over its last two axes (all of them when it has fewer); 0 when
    it holds no element."""
    if tensor.numel() == 0:
        return 0
    shape, strides = tensor.shape[-2:], tensor.stride()[-2:]
    return sum((size - 1) * abs(stride) for size, stride in zip(shape, strides, strict=True))


def needs_int64_offsets(*tensors: torch.Tensor | None) -> bool:
    """Whether a launch reading or writing these (b, h, rows, lanes) tensors (None skipped) needs
    ``LARGE_OFFSETS=True``: some element's offset within its (batch, head) slice is past int32
    (:func:`slice_extent` > 2^31 - 1). Rows of a tile past the tensor's end (padding) may still
    wrap in int32, but they are masked and never read or written. Shapes and strides only: meta
    tensors and views work, nothing is read."""
    return any(t is not None and slice_extent(t) > INT32_MAX for t in tensors)
