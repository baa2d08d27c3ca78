"""FlashAttention-2 forward and backward in Triton, behind an SDPA-shaped function.

Einops legend used in comments: ``b`` batch, ``h`` heads, ``i`` query positions (``len_q``),
``j`` key positions (``len_k``), ``d`` head dim (``D`` its power-of-two padding in the kernel).

Forward: a program owns one tile of queries, keeps it on chip, and streams the keys and values
through block by block with an online softmax (a running row max ``m`` and running row sum ``l``);
the output is divided by ``l`` once at the end, and the row-wise log-sum-exp is saved. Backward
(FlashAttention-2): ``delta = rowsum(dO * O)`` in a small pass, then one pass per key block that
accumulates dK and dV, and one pass per query block that accumulates dQ. Both recompute the
probabilities from the saved log-sum-exp, so nothing of size len_q x len_k is ever stored, and
neither needs atomics.

Each loop runs in two stages, as in Triton's fused-attention tutorial: blocks that are whole and
wholly visible (under causal masking: entirely left of the diagonal) load without bounds checks
and build no causal mask; only the partial and diagonal blocks do. Launch configurations (tile
sizes, warps, pipeline stages) come per kernel, head dim and GPU architecture from the tables
below, pruned to the architecture's shared memory and autotuned on first use
(:mod:`kernels.launch`); ``python -m kernels.compile_gate`` compiles every one of them for
sm_80/86/89/90 on a machine without a GPU.

Supported
    * q (b, h, len_q, d), k and v (b, h, len_k, d), as in ``F.scaled_dot_product_attention``;
      any strides (they are passed to the kernel, nothing is copied).
    * float16, bfloat16 and float32; the three tensors share one dtype and one device.
    * Any len_q and len_k >= 0, not necessarily equal or multiples of the block size.
    * Head dims 1 to 128 (not only powers of two: the kernel pads to the next power of two with
      masked loads).
    * ``attn_mask``: a boolean *key* mask, True = this key takes part (SDPA's convention), shaped
      (b or 1, h or 1, 1, len_k) -- a shape that means the same to SDPA. It is read inside the
      kernel, one value per key; nothing of size len_q x len_k is built.
    * ``is_causal``, alone or together with ``attn_mask``. Causal masking is aligned to the
      **bottom-right** corner: query i sees keys j <= i + len_k - len_q. This is what a decoder
      with a key/value cache needs (the new queries are the *last* len_q positions).
      ``F.scaled_dot_product_attention`` aligns top-left instead; the two agree when
      len_q == len_k.
    * Gradients for q, k and v; also through the log-sum-exp when ``return_lse=True`` and it
      takes part in the loss.
    * ``torch.compile`` (``fullgraph=True`` too): forward and backward are PyTorch operators,
      ``torch.ops.flash_transformer.flash_attention`` and ``..._backward``, registered with
      ``torch.library.custom_op`` (see :mod:`kernels.ops` for why not ``triton_op``); a compiled
      graph calls them as opaque nodes, with fake implementations giving their output shapes.
    * A query that sees no key at all (all its keys masked) gets an output of zeros, zero
      gradients, and a log-sum-exp of -inf.
    * Runs compiled on a CUDA GPU, or on the CPU under the Triton interpreter
      (``TRITON_INTERPRET=1`` set before triton is first imported).

Caution -- not supported
    * Full (len_q, len_k) or additive float masks: only boolean key masks. A mask of any rank
      but 4 is refused, a 2-D one in particular: SDPA reads it as (len_q, len_k), so a
      (batch, len_k) key padding mask must be passed as ``mask[:, None, None, :]``.
    * Dropout, grouped-query attention (k/v heads must equal q heads), a value head dim that
      differs from the query/key head dim, head dims above 128, float64.
    * float32 on a GPU multiplies as three TF32 products ("tf32x3", about float32 accuracy) in
      small tiles whose backward spills registers at head dims >= 64: correct, not fast. Use
      bfloat16 or float16 for speed.
    * GPUs before sm_80 (Ampere) are not claimed: nothing is compiled or tested for them.
"""

import math

import torch
import triton
import triton.language as tl

from kernels import launch, ops
from kernels.launch import LaunchConfig, TileShape

# exp(x) == exp2(x * log2(e)): the kernels work in base 2 (exp2 is the native instruction) and
# fold log2(e) into the softmax scale, so each score costs one multiply and one exp2.
LOG2_E = tl.constexpr(1.4426950408889634)
LN_2 = tl.constexpr(0.6931471805599453)

MAX_HEAD_DIM = 128
DELTA_ROWS = 64  # query rows per program of the small delta pass (not worth tuning)


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
def _mask_key_block(
    s, Mask, mask_base, stride_mn, rows, cols, LEN_K, causal_shift,
    MASKED: tl.constexpr, HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr,
):  # fmt: skip
    """Scores (i, j) of one key block with hidden pairs set to -inf.

    A MASKED block may run past len_k or cross the causal diagonal, so it checks bounds and
    builds the causal mask; any other block is whole and wholly visible to every query of the
    tile, and only a key mask, when given, is read (it is per key).
    """
    if MASKED:
        valid = _key_is_valid(Mask, mask_base, stride_mn, cols, LEN_K, HAS_MASK)[None, :]
        if IS_CAUSAL:
            valid = valid & (cols[None, :] <= rows[:, None] + causal_shift)
        s = tl.where(valid, s, float("-inf"))
    elif HAS_MASK:
        takes_part = tl.load(Mask + mask_base + cols * stride_mn)
        s = tl.where((takes_part != 0)[None, :], s, float("-inf"))
    return s


@triton.jit
def _fwd_key_blocks(
    acc, l_i, m_i, q, K, V, Mask, mask_base,
    stride_kn, stride_vn, stride_mn,
    rows, offs_n, d_ok, start, stop, LEN_K, causal_shift, qk_scale_log2,
    MASKED: tl.constexpr, HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr,
    EVEN_D: tl.constexpr, BLOCK_N: tl.constexpr,
    EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """The online softmax over key blocks [start, stop) for one tile of queries; MASKED blocks
    check bounds and causality (see _mask_key_block), the others load without any check."""
    for start_n in range(start, stop, BLOCK_N):
        cols = start_n + offs_n
        k = _load_rows(K + cols[:, None] * stride_kn, cols, LEN_K, d_ok, MASKED, EVEN_D)  # (j, D)
        v = _load_rows(V + cols[:, None] * stride_vn, cols, LEN_K, d_ok, MASKED, EVEN_D)  # (j, D)

        s = _dot(q, tl.trans(k), EMULATE_BF16, PRECISION) * qk_scale_log2  # (i, j), log2 units
        s = _mask_key_block(
            s, Mask, mask_base, stride_mn, rows, cols, LEN_K, causal_shift,
            MASKED, HAS_MASK, IS_CAUSAL,
        )  # fmt: skip

        m_new = tl.maximum(m_i, tl.max(s, 1))
        # While a row has seen no valid key its max is -inf, and -inf - -inf would be NaN;
        # subtracting 0 instead keeps p = exp2(-inf) = 0 and alpha = 0 for such rows.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)  # rescales what was summed under the old max
        l_i = l_i * alpha + tl.sum(p, 1)
        # p is rounded to the value dtype so the second product runs on 16-bit tensor cores.
        acc = acc * alpha[:, None] + _dot(
            _round(p, v.dtype, EMULATE_BF16), v, EMULATE_BF16, PRECISION
        )
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _visible_key_blocks(start_m, LEN_Q, LEN_K, IS_CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr):  # fmt: skip
    """(n_whole, n_stop) for the query tile at start_m: key blocks [0, n_whole) are whole and
    visible to every query of the tile; [n_whole, n_stop) need masking; later ones are unseen.

    Bottom-right causal: query i sees keys j <= i + (len_k - len_q), so every query of the
    tile sees keys j <= start_m + len_k - len_q, and none sees j >= start_m + BLOCK_M + ...
    (n_stop may be <= 0: then no key is visible at all).
    """
    n_whole = LEN_K // BLOCK_N * BLOCK_N
    n_stop = LEN_K
    if IS_CAUSAL:
        seen_by_all = tl.maximum(0, tl.minimum(start_m + LEN_K - LEN_Q + 1, LEN_K))
        n_whole = tl.minimum(n_whole, seen_by_all // BLOCK_N * BLOCK_N)
        n_stop = tl.minimum(LEN_K, start_m + BLOCK_M + LEN_K - LEN_Q)
    return n_whole, n_stop


@triton.jit
def _attn_fwd(
    Q, K, V, Mask, Out, Lse,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_mb, stride_mh, stride_mn,
    H, LEN_Q, LEN_K, HEAD_DIM, qk_scale_log2,
    HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    off_bh = tl.program_id(0)  # batch * heads on axis 0: see kernels.launch.grid
    start_m = tl.program_id(1) * BLOCK_M
    # int64 batch/head offsets: b * stride_b overflows int32 for large tensors.
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)

    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM  # the padded head-dim lanes load as 0 and are never stored

    q_ptrs = Q + off_b * stride_qb + off_h * stride_qh
    q_ptrs += rows[:, None] * stride_qm + offs_d[None, :] * stride_qd
    q = _load_rows(q_ptrs, rows, LEN_Q, d_ok, True, EVEN_D)  # (i, D)
    k_base = K + off_b * stride_kb + off_h * stride_kh + offs_d[None, :] * stride_kd
    v_base = V + off_b * stride_vb + off_h * stride_vh + offs_d[None, :] * stride_vd
    mask_base = off_b * stride_mb + off_h * stride_mh

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)  # running max, log2 units
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)  # running sum of exp2(s - m_i)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)  # unnormalised output

    # Two stages, as in Triton's fused-attention tutorial: whole, fully visible key blocks
    # first, without bounds checks or a causal mask; then the partial or diagonal ones.
    n_whole, n_stop = _visible_key_blocks(start_m, LEN_Q, LEN_K, IS_CAUSAL, BLOCK_M, BLOCK_N)
    causal_shift = LEN_K - LEN_Q
    acc, l_i, m_i = _fwd_key_blocks(
        acc, l_i, m_i, q, k_base, v_base, Mask, mask_base, stride_kn, stride_vn, stride_mn,
        rows, offs_n, d_ok, 0, n_whole, LEN_K, causal_shift, qk_scale_log2,
        False, HAS_MASK, IS_CAUSAL, EVEN_D, BLOCK_N, EMULATE_BF16, PRECISION,
    )  # fmt: skip
    acc, l_i, m_i = _fwd_key_blocks(
        acc, l_i, m_i, q, k_base, v_base, Mask, mask_base, stride_kn, stride_vn, stride_mn,
        rows, offs_n, d_ok, n_whole, n_stop, LEN_K, causal_shift, qk_scale_log2,
        True, HAS_MASK, IS_CAUSAL, EVEN_D, BLOCK_N, EMULATE_BF16, PRECISION,
    )  # fmt: skip

    # Normalise once at the end. A row with no valid key has l = 0 and acc = 0: it gets zeros
    # and lse = -inf (log of an empty sum), never 0/0.
    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]
    # lse in natural log of the scaled scores: (m + log2 l) is in log2 units, times ln 2.
    lse = tl.where(seen, (m_i + tl.log2(l_safe)) * LN_2, float("-inf"))

    o_ptrs = Out + off_b * stride_ob + off_h * stride_oh
    o_ptrs += rows[:, None] * stride_om + offs_d[None, :] * stride_od
    tl.store(
        o_ptrs,
        _round(out, Out.dtype.element_ty, EMULATE_BF16),
        mask=(rows[:, None] < LEN_Q) & d_ok[None, :],
    )
    tl.store(Lse + off_bh.to(tl.int64) * LEN_Q + rows, lse, mask=rows < LEN_Q)


@triton.jit
def _attn_bwd_delta(
    Out, DOut, DLse, Delta,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_gb, stride_gh, stride_gm, stride_gd,
    H, LEN_Q, HEAD_DIM,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """delta_i = sum_d dO_id * O_id - dlse_i, one value per query row.

    From dS = P * (dP - rowsum(dO * O)) for the output, plus dS += P * dlse for the
    log-sum-exp (d lse_i / d s_ij = P_ij): folding -dlse into delta covers both at no cost.
    """
    off_bh = tl.program_id(0)  # batch * heads on axis 0: see kernels.launch.grid
    start_m = tl.program_id(1) * BLOCK_M
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
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


@triton.jit
def _dkdv_query_blocks(
    dk, dv, k, v, key_valid, Q, DOut, Lse, Delta, row_base,
    stride_qm, stride_gm,
    cols, offs_m, d_ok, start, stop, LEN_Q, causal_shift, qk_scale_log2,
    MASKED: tl.constexpr, HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr,
    EVEN_D: tl.constexpr, BLOCK_M: tl.constexpr,
    EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Accumulate dK, dV of one key block over query blocks [start, stop).

    MASKED blocks may run past len_q or cross the causal diagonal. In the others every query
    sees every key of the block; a key past len_k (a partial last key block) then gets a
    finite or infinite stand-in p, but it touches only its own row of dK and dV, which is
    never stored.
    """
    for start_m in range(start, stop, BLOCK_M):
        rows = start_m + offs_m
        q = _load_rows(Q + rows[:, None] * stride_qm, rows, LEN_Q, d_ok, MASKED, EVEN_D)  # (i, D)
        do = _load_rows(DOut + rows[:, None] * stride_gm, rows, LEN_Q, d_ok, MASKED, EVEN_D)
        lse_log2, delta = _softmax_stats(Lse, Delta, row_base + rows, rows, LEN_Q, MASKED)

        s = _dot(q, tl.trans(k), EMULATE_BF16, PRECISION) * qk_scale_log2  # (i, j)
        if MASKED:
            valid = (rows < LEN_Q)[:, None] & key_valid[None, :]
            if IS_CAUSAL:
                valid = valid & (cols[None, :] <= rows[:, None] + causal_shift)
            s = tl.where(valid, s, float("-inf"))
        elif HAS_MASK:
            s = tl.where(key_valid[None, :], s, float("-inf"))
        # Recompute P from the saved log-sum-exp: P = exp(s - lse), already normalised.
        p = tl.exp2(s - lse_log2[:, None])

        dv += _dot(tl.trans(_round(p, do.dtype, EMULATE_BF16)), do, EMULATE_BF16, PRECISION)
        dp = _dot(do, tl.trans(v), EMULATE_BF16, PRECISION)  # (i, j)
        ds = p * (dp - delta[:, None])  # gradient w.r.t. the scaled scores
        dk += _dot(tl.trans(_round(ds, q.dtype, EMULATE_BF16)), q, EMULATE_BF16, PRECISION)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv(
    Q, K, V, Mask, DOut, Lse, Delta, DK, DV,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_gb, stride_gh, stride_gm, stride_gd,
    stride_mb, stride_mh, stride_mn,
    H, LEN_Q, LEN_K, HEAD_DIM, sm_scale, qk_scale_log2,
    HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """One program per key block: holds K_j, V_j and accumulates dK_j, dV_j over query blocks.

    DK and DV are contiguous (b, h, len_k, d) buffers; their strides are computed here.
    """
    off_bh = tl.program_id(0)  # batch * heads on axis 0: see kernels.launch.grid
    start_n = tl.program_id(1) * BLOCK_N
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)

    cols = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    kv_ok = (cols[:, None] < LEN_K) & d_ok[None, :]

    k_ptrs = K + off_b * stride_kb + off_h * stride_kh
    k = tl.load(
        k_ptrs + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=kv_ok, other=0.0
    )
    v_ptrs = V + off_b * stride_vb + off_h * stride_vh
    v = tl.load(
        v_ptrs + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=kv_ok, other=0.0
    )
    # The key mask is per key, so this block's slice of it is read once, outside the loop.
    key_valid = _key_is_valid(
        Mask, off_b * stride_mb + off_h * stride_mh, stride_mn, cols, LEN_K, HAS_MASK
    )

    q_base = Q + off_b * stride_qb + off_h * stride_qh + offs_d[None, :] * stride_qd
    g_base = DOut + off_b * stride_gb + off_h * stride_gh + offs_d[None, :] * stride_gd
    row_base = off_bh.to(tl.int64) * LEN_Q

    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)

    # Query blocks [lo, m_whole) cross the causal diagonal (bottom-right: key j is seen by rows
    # i >= j - (len_k - len_q), so earlier blocks contribute nothing and are skipped); blocks
    # [m_whole, m_even) see the whole key block and are whole; a partial last block follows.
    causal_shift = LEN_K - LEN_Q
    m_even = LEN_Q // BLOCK_M * BLOCK_M
    lo = 0
    m_whole = 0
    if IS_CAUSAL:
        lo = tl.maximum(0, start_n - causal_shift) // BLOCK_M * BLOCK_M
        last_col = tl.maximum(0, start_n + BLOCK_N - 1 - causal_shift)
        m_whole = (last_col + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    dk, dv = _dkdv_query_blocks(
        dk, dv, k, v, key_valid, q_base, g_base, Lse, Delta, row_base, stride_qm, stride_gm,
        cols, offs_m, d_ok, lo, tl.minimum(m_whole, LEN_Q), LEN_Q, causal_shift, qk_scale_log2,
        True, HAS_MASK, IS_CAUSAL, EVEN_D, BLOCK_M, EMULATE_BF16, PRECISION,
    )  # fmt: skip
    dk, dv = _dkdv_query_blocks(
        dk, dv, k, v, key_valid, q_base, g_base, Lse, Delta, row_base, stride_qm, stride_gm,
        cols, offs_m, d_ok, m_whole, m_even, LEN_Q, causal_shift, qk_scale_log2,
        False, HAS_MASK, IS_CAUSAL, EVEN_D, BLOCK_M, EMULATE_BF16, PRECISION,
    )  # fmt: skip
    dk, dv = _dkdv_query_blocks(
        dk, dv, k, v, key_valid, q_base, g_base, Lse, Delta, row_base, stride_qm, stride_gm,
        cols, offs_m, d_ok, tl.maximum(m_whole, m_even), LEN_Q, LEN_Q, causal_shift,
        qk_scale_log2, True, HAS_MASK, IS_CAUSAL, EVEN_D, BLOCK_M, EMULATE_BF16, PRECISION,
    )  # fmt: skip

    dk *= sm_scale  # s = scale * q k^T, so dK = scale * dS^T Q
    out_off = off_bh.to(tl.int64) * LEN_K * HEAD_DIM + cols[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(DK + out_off, _round(dk, DK.dtype.element_ty, EMULATE_BF16), mask=kv_ok)
    tl.store(DV + out_off, _round(dv, DV.dtype.element_ty, EMULATE_BF16), mask=kv_ok)


@triton.jit
def _dq_key_blocks(
    dq, q, do, lse_log2, delta, K, V, Mask, mask_base,
    stride_kn, stride_vn, stride_mn,
    rows, offs_n, d_ok, start, stop, LEN_K, causal_shift, qk_scale_log2,
    MASKED: tl.constexpr, HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr,
    EVEN_D: tl.constexpr, BLOCK_N: tl.constexpr,
    EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Accumulate dQ of one query tile over key blocks [start, stop); MASKED as in the forward."""
    for start_n in range(start, stop, BLOCK_N):
        cols = start_n + offs_n
        k = _load_rows(K + cols[:, None] * stride_kn, cols, LEN_K, d_ok, MASKED, EVEN_D)  # (j, D)
        v = _load_rows(V + cols[:, None] * stride_vn, cols, LEN_K, d_ok, MASKED, EVEN_D)  # (j, D)

        s = _dot(q, tl.trans(k), EMULATE_BF16, PRECISION) * qk_scale_log2  # (i, j)
        s = _mask_key_block(
            s, Mask, mask_base, stride_mn, rows, cols, LEN_K, causal_shift,
            MASKED, HAS_MASK, IS_CAUSAL,
        )  # fmt: skip
        p = tl.exp2(s - lse_log2[:, None])

        dp = _dot(do, tl.trans(v), EMULATE_BF16, PRECISION)  # (i, j)
        ds = p * (dp - delta[:, None])
        dq += _dot(_round(ds, k.dtype, EMULATE_BF16), k, EMULATE_BF16, PRECISION)
    return dq


@triton.jit
def _attn_bwd_dq(
    Q, K, V, Mask, DOut, Lse, Delta, DQ,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_gb, stride_gh, stride_gm, stride_gd,
    stride_mb, stride_mh, stride_mn,
    H, LEN_Q, LEN_K, HEAD_DIM, sm_scale, qk_scale_log2,
    HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """One program per query block: holds Q_i, dO_i and accumulates dQ_i over key blocks.

    DQ is a contiguous (b, h, len_q, d) buffer. Query rows past len_q load q = dO = 0 and
    lse = delta = 0, so their dS is 0 and they add nothing; they are never stored.
    """
    off_bh = tl.program_id(0)  # batch * heads on axis 0: see kernels.launch.grid
    start_m = tl.program_id(1) * BLOCK_M
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)

    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM

    q_ptrs = Q + off_b * stride_qb + off_h * stride_qh
    q = _load_rows(
        q_ptrs + rows[:, None] * stride_qm + offs_d[None, :] * stride_qd,
        rows, LEN_Q, d_ok, True, EVEN_D,
    )  # fmt: skip
    g_ptrs = DOut + off_b * stride_gb + off_h * stride_gh
    do = _load_rows(
        g_ptrs + rows[:, None] * stride_gm + offs_d[None, :] * stride_gd,
        rows, LEN_Q, d_ok, True, EVEN_D,
    )  # fmt: skip
    row_base = off_bh.to(tl.int64) * LEN_Q
    lse_log2, delta = _softmax_stats(Lse, Delta, row_base + rows, rows, LEN_Q, True)

    k_base = K + off_b * stride_kb + off_h * stride_kh + offs_d[None, :] * stride_kd
    v_base = V + off_b * stride_vb + off_h * stride_vh + offs_d[None, :] * stride_vd
    mask_base = off_b * stride_mb + off_h * stride_mh

    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    n_whole, n_stop = _visible_key_blocks(start_m, LEN_Q, LEN_K, IS_CAUSAL, BLOCK_M, BLOCK_N)
    causal_shift = LEN_K - LEN_Q
    dq = _dq_key_blocks(
        dq, q, do, lse_log2, delta, k_base, v_base, Mask, mask_base, stride_kn, stride_vn,
        stride_mn, rows, offs_n, d_ok, 0, n_whole, LEN_K, causal_shift, qk_scale_log2,
        False, HAS_MASK, IS_CAUSAL, EVEN_D, BLOCK_N, EMULATE_BF16, PRECISION,
    )  # fmt: skip
    dq = _dq_key_blocks(
        dq, q, do, lse_log2, delta, k_base, v_base, Mask, mask_base, stride_kn, stride_vn,
        stride_mn, rows, offs_n, d_ok, n_whole, n_stop, LEN_K, causal_shift, qk_scale_log2,
        True, HAS_MASK, IS_CAUSAL, EVEN_D, BLOCK_N, EMULATE_BF16, PRECISION,
    )  # fmt: skip

    dq *= sm_scale  # dQ = scale * dS K
    out_off = row_base * HEAD_DIM + rows[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(
        DQ + out_off,
        _round(dq, DQ.dtype.element_ty, EMULATE_BF16),
        mask=(rows[:, None] < LEN_Q) & d_ok[None, :],
    )


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Triton decides at @triton.jit time (that is, when this module was imported) whether kernels
# are compiled or interpreted, from TRITON_INTERPRET as it was then.
_INTERPRETED = type(_attn_fwd).__name__ == "InterpretedFunction"


def _empty(shape, dtype, device):
    """Every buffer the launchers hand to a kernel comes from here (tests poison it with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _check_inputs(q, k, v, attn_mask, scale):
    """Validate everything before a launch; returns the head dim's padding BLOCK_D."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"flash_attention: {name} must be a torch.Tensor, got {type(t).__name__}"
            )
        if t.dim() != 4:
            raise ValueError(
                f"flash_attention: {name} must have rank 4 (batch, heads, len, head_dim), "
                f"got shape {tuple(t.shape)}"
            )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(
            f"flash_attention: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if q.dtype not in _DTYPES:
        raise TypeError(f"flash_attention: dtype {q.dtype} is not supported; use one of {_DTYPES}")
    if not (q.device == k.device == v.device):
        raise ValueError(
            f"flash_attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}"
        )
    b, h, _, d = q.shape
    if k.shape[:2] != (b, h) or v.shape[:2] != (b, h):
        raise ValueError(
            "flash_attention: q, k, v must share (batch, heads); got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if k.shape[2] != v.shape[2]:
        raise ValueError(
            f"flash_attention: k and v must have the same length, got {k.shape[2]} and {v.shape[2]}"
        )
    if k.shape[3] != d:
        raise ValueError(f"flash_attention: q and k head dims differ ({d} vs {k.shape[3]})")
    if v.shape[3] != d:
        raise ValueError(
            f"flash_attention: v's head dim ({v.shape[3]}) must equal q's ({d}); "
            "a different value head dim is not supported"
        )
    if not 1 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"flash_attention: head dim {d} is not supported (1 to {MAX_HEAD_DIM})")
    if scale is not None and not math.isfinite(float(scale)):
        raise ValueError(f"flash_attention: scale must be finite, got {scale}")
    if attn_mask is not None:
        _mask_strides(attn_mask, q, k)  # raises on a bad mask
    _check_runnable(q.device)
    return _block_d(d)


def _check_runnable(device, caller="flash_attention"):
    """CPU tensors need the Triton interpreter, which is chosen when triton is imported."""
    if device.type == "cpu" and not _INTERPRETED:
        raise RuntimeError(
            f"{caller}: the tensors are on the CPU but Triton was imported without its "
            "interpreter. Set TRITON_INTERPRET=1 in the environment before triton (or kernels) "
            "is first imported, or move the tensors to a CUDA device."
        )


def _block_d(head_dim):
    """The head dim padded to a power of two, at least 16 (tl.dot wants every dimension >= 16)."""
    return max(16, triton.next_power_of_2(head_dim))


def _mask_strides(attn_mask, q, k, caller="flash_attention"):
    """(batch, head, key) strides of a boolean (b|1, h|1, 1, len_k) key mask; 0 where a
    dimension broadcasts. Raises, naming ``caller``, on any other mask (both kernels use it)."""
    if not isinstance(attn_mask, torch.Tensor):
        raise TypeError(f"{caller}: attn_mask must be a torch.Tensor, got {type(attn_mask)}")
    if attn_mask.dtype != torch.bool:
        raise TypeError(
            f"{caller}: attn_mask must be torch.bool (True = key takes part), got {attn_mask.dtype}"
        )
    if attn_mask.device != q.device:
        raise ValueError(f"{caller}: attn_mask is on {attn_mask.device}, the inputs on {q.device}")
    b, h, len_q, _ = q.shape
    len_k = k.shape[2]
    shape = tuple(attn_mask.shape)
    if not (
        attn_mask.dim() == 4
        and shape[0] in (1, b)
        and shape[1] in (1, h)
        and shape[2] == 1
        and shape[3] == len_k
    ):
        raise ValueError(
            f"{caller}: attn_mask must be a key mask shaped (batch or 1, heads or 1, 1, "
            f"len_k) = ({b}|1, {h}|1, 1, {len_k}); got {tuple(attn_mask.shape)}. "
            + _MASK_HINTS.get(attn_mask.dim(), "")
            + ("" if attn_mask.dim() != 4 or shape[2] == 1 else _MASK_HINTS["full"])
        )
    # A dimension of size 1 broadcasts: stride 0 makes every batch/head read the same row.
    return (
        0 if shape[0] == 1 else attn_mask.stride(0),
        0 if shape[1] == 1 else attn_mask.stride(1),
        attn_mask.stride(3),
    )


# Why a mask of another rank or shape is refused, in the error message.
_MASK_HINTS = {
    2: "A 2-D mask means (len_q, len_k) in F.scaled_dot_product_attention, a full mask, which "
    "the kernel does not read (it reads key masks only); a (batch, len_k) key padding mask "
    "is passed as mask[:, None, None, :].",
    "full": "Full (len_q x len_k) masks are not supported: the kernel reads key masks only; "
    "pass causality with is_causal=True.",
}


def _launch(kernel, grid, *args, **meta):
    """Every kernel launch goes through here (the compile gate captures them); returns Triton's
    compiled kernel (None for an empty grid, which is not launchable and has nothing to do)."""
    if not launch.is_empty(grid):
        return kernel[grid](*args, **meta)
    return None


# What one program of each kernel keeps in shared memory (see kernels.launch.TileShape): the
# forward and the dQ pass hold a query tile (and dO) and stream key/value blocks; the dK/dV pass
# holds a key/value block and streams query/dO blocks.
TILES = {
    "fwd": TileShape(resident=1, streamed=2, resident_is_query=True),
    "dkdv": TileShape(resident=2, streamed=2, resident_is_query=False),
    "dq": TileShape(resident=2, streamed=2, resident_is_query=True),
}

C = LaunchConfig  # (BLOCK_M query rows, BLOCK_N key rows, warps, stages)
# Configurations to tune over, best guess first, by (kernel, head dim <= 64, Hopper), for 16-bit
# inputs. Measured with the compile gate (Triton 3.9, two-stage loops): the forward and dQ take
# FlashAttention-2's wide tiles; the dK/dV pass, which keeps two (BLOCK_N, d) tiles and two
# float32 accumulators per key block, spills registers on sm_80-89 with 64-key blocks at d = 64
# and with anything wider than 32x64 at d = 128, so it keeps narrower key blocks there.
CONFIGS_16BIT = {
    ("fwd", True, False): [C(128, 64, 8, 3), C(128, 128, 8, 3), C(64, 64, 4, 3), C(64, 32, 4, 3)],
    ("fwd", True, True): [C(128, 64, 8, 3), C(128, 128, 8, 3), C(64, 64, 4, 3), C(64, 32, 4, 3)],
    ("fwd", False, False): [C(128, 32, 8, 3), C(64, 64, 8, 3), C(64, 128, 8, 2), C(64, 32, 4, 3)],
    ("fwd", False, True): [C(64, 128, 8, 3), C(128, 32, 8, 3), C(64, 64, 8, 3), C(64, 32, 4, 3)],
    ("dq", True, False): [C(128, 32, 8, 2), C(64, 64, 4, 2), C(64, 64, 8, 2), C(64, 32, 4, 2)],
    ("dq", True, True): [C(128, 32, 8, 2), C(64, 64, 4, 2), C(64, 64, 8, 2), C(64, 32, 4, 2)],
    ("dq", False, False): [C(64, 64, 8, 2), C(128, 32, 8, 2), C(64, 32, 4, 2), C(64, 32, 8, 2)],
    ("dq", False, True): [C(64, 64, 8, 2), C(128, 32, 8, 2), C(64, 32, 8, 2), C(64, 32, 4, 2)],
    ("dkdv", True, False): [C(32, 32, 4, 2), C(64, 32, 4, 2), C(64, 32, 8, 2)],
    ("dkdv", True, True): [C(64, 64, 8, 2), C(64, 32, 4, 2), C(64, 32, 8, 2)],
    ("dkdv", False, False): [C(32, 64, 8, 2), C(32, 32, 4, 2), C(16, 64, 4, 2)],
    ("dkdv", False, True): [C(32, 64, 8, 2), C(16, 64, 4, 2)],
}
# float32 multiplies as three TF32 products (see _precision) and holds twice the bytes per tile:
# small tiles only. Its backward still spills at head dims >= 64 (the gate reports it): float32
# on a GPU is for checking results, not for speed (FlashAttention has no float32 at all).
CONFIGS_FLOAT32 = {
    "fwd": [C(32, 32, 4, 2), C(64, 32, 4, 2), C(16, 32, 4, 2)],
    "dq": [C(32, 32, 4, 2), C(16, 32, 4, 2)],
    "dkdv": [C(16, 32, 4, 2), C(32, 32, 8, 2), C(32, 16, 4, 2)],
}


def _configs(kernel_name, q, block_d):
    """The launch configurations to choose from for one kernel on q's device."""
    if _INTERPRETED:
        return [launch.INTERPRETER_CONFIG]
    arch = launch.capability(q.device)
    if q.dtype == torch.float32:
        table = CONFIGS_FLOAT32[kernel_name]
    else:
        table = CONFIGS_16BIT[kernel_name, block_d <= 64, arch >= 90]
    return launch.candidates(TILES[kernel_name], table, arch, block_d, q.dtype)


def _tuned_launch(kernel, name, q, k, block_d, meta, grid_rows, args):
    """Launch ``kernel`` with the best config for this shape; grid_rows(config) = the blocks of
    rows (grid axis 1). An empty grid returns at once: nothing to run, nothing to tune (its
    length bucket is a one-token call's)."""
    b, h, len_q, _ = q.shape
    configs = _configs(name, q, block_d)
    if launch.is_empty((b * h, grid_rows(configs[0]))):
        return

    def run(config):
        grid = launch.grid(b * h, grid_rows(config))
        return _launch(kernel, grid, *args, **meta, **config.meta())

    key = (name, q.device.index, q.dtype, block_d, tuple(sorted(meta.items())),
           launch.length_bucket(len_q), launch.length_bucket(k.shape[2]))  # fmt: skip
    run(launch.pick(key, configs, run))


def _forward(q, k, v, attn_mask, is_causal, scale, block_d):
    b, h, len_q, d = q.shape
    len_k = k.shape[2]
    out = _empty((b, h, len_q, d), q.dtype, q.device)
    lse = _empty((b, h, len_q), torch.float32, q.device)
    mask, mask_strides = _kernel_mask(attn_mask, q, k)
    args = (
        q, k, v, mask, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *mask_strides,
        h, len_q, len_k, d, scale * LOG2_E.value,
    )  # fmt: skip
    meta = _meta(attn_mask, is_causal, block_d, d, q.dtype)
    _tuned_launch(
        _attn_fwd, "fwd", q, k, block_d, meta, lambda c: triton.cdiv(len_q, c.block_m), args
    )
    return out, lse


def _backward(q, k, v, attn_mask, is_causal, scale, block_d, out, lse, dout, dlse):
    b, h, len_q, d = q.shape
    len_k = k.shape[2]
    mask, mask_strides = _kernel_mask(attn_mask, q, k)
    meta = _meta(attn_mask, is_causal, block_d, d, q.dtype)
    if dlse is None:
        dlse = torch.zeros((b, h, len_q), dtype=torch.float32, device=q.device)
    dlse = dlse.to(torch.float32).contiguous()

    delta = _empty((b, h, len_q), torch.float32, q.device)
    _launch(
        _attn_bwd_delta, launch.grid(b * h, triton.cdiv(len_q, DELTA_ROWS)),
        out, dout, dlse, delta, *out.stride(), *dout.stride(), h, len_q, d,
        BLOCK_M=DELTA_ROWS, BLOCK_D=block_d,
    )  # fmt: skip
    dk = _empty((b, h, len_k, d), q.dtype, q.device)
    dv = _empty((b, h, len_k, d), q.dtype, q.device)
    common = (*q.stride(), *k.stride(), *v.stride(), *dout.stride(), *mask_strides)
    sizes = (h, len_q, len_k, d, scale, scale * LOG2_E.value)
    args = (q, k, v, mask, dout, lse, delta, dk, dv, *common, *sizes)
    _tuned_launch(
        _attn_bwd_dkdv, "dkdv", q, k, block_d, meta, lambda c: triton.cdiv(len_k, c.block_n), args
    )
    dq = _empty((b, h, len_q, d), q.dtype, q.device)
    args = (q, k, v, mask, dout, lse, delta, dq, *common, *sizes)
    _tuned_launch(
        _attn_bwd_dq, "dq", q, k, block_d, meta, lambda c: triton.cdiv(len_q, c.block_m), args
    )
    return dq, dk, dv


def _kernel_mask(attn_mask, q, k, caller="flash_attention"):
    """The mask as uint8 (Triton reads bytes) with its strides, or a dummy when absent."""
    if attn_mask is None:
        return torch.empty(1, dtype=torch.uint8, device=q.device), (0, 0, 0)
    return attn_mask.view(torch.uint8), _mask_strides(attn_mask, q, k, caller)


def _precision(dtype):
    """How tl.dot multiplies: for float32, "tf32x3" on a GPU (three TF32 tensor-core products
    that recover float32 accuracy; plain FMA products ("ieee") need too many registers to tile
    well and spilled in every configuration the compile gate tried) and "ieee" under the
    interpreter, whose numpy products are exact anyway; for 16-bit inputs the setting does not
    apply ("tf32" is Triton's default)."""
    if dtype != torch.float32:
        return "tf32"
    return "ieee" if _INTERPRETED else "tf32x3"


def _meta(attn_mask, is_causal, block_d, head_dim, dtype):
    """The constexprs every attention kernel takes, apart from its block sizes."""
    return dict(
        HAS_MASK=attn_mask is not None,
        IS_CAUSAL=bool(is_causal),
        EVEN_D=block_d == head_dim,
        BLOCK_D=block_d,
        EMULATE_BF16=_INTERPRETED and dtype == torch.bfloat16,
        PRECISION=_precision(dtype),
    )


def _fake_forward(q, k, v, attn_mask, is_causal, scale):
    """What _forward returns, as empty tensors: out like a contiguous q, lse (b, h, len_q)."""
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


def _fake_backward(q, k, v, attn_mask, is_causal, scale, out, lse, dout, dlse):
    """What _backward returns, as empty tensors: contiguous dq, dk, dv."""
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


@ops.kernel_op("flash_attention_backward", fake=_fake_backward)
def _backward_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
    is_causal: bool, scale: float, out: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor,
    dlse: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    block_d = _block_d(q.shape[-1])
    return _backward(q, k, v, attn_mask, is_causal, scale, block_d, out, lse, dout, dlse)


# The one autograd definition: gradients of q, k and v from the backward operator above, given
# the inputs, (out, lse) and their gradients (dlse is zeros when lse took no part in the loss).
@ops.kernel_op("flash_attention", fake=_fake_forward, backward=_backward_op, wrt=("q", "k", "v"))
def _forward_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
    is_causal: bool, scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    return _forward(q, k, v, attn_mask, is_causal, scale, _block_d(q.shape[-1]))


def flash_attention(q, k, v, attn_mask=None, is_causal=False, scale=None, *, return_lse=False):
    """Scaled dot-product attention, a drop-in for ``F.scaled_dot_product_attention``.

    Args:
        q: (batch, heads, len_q, head_dim), float16, bfloat16 or float32.
        k, v: (batch, heads, len_k, head_dim), same dtype and device as q.
        attn_mask: optional boolean key mask, True = this key takes part (SDPA's convention),
            shaped (batch or 1, heads or 1, 1, len_k), as SDPA would read it; any other shape
            (a 2-D mask, which SDPA reads as (len_q, len_k), included) is refused.
        is_causal: causal masking aligned to the **bottom-right** corner: query i sees keys
            j <= i + len_k - len_q, as a decoder with a key/value cache needs (SDPA aligns
            top-left; the two agree when len_q == len_k). May be combined with attn_mask.
        scale: the softmax scale; defaults to 1 / sqrt(head_dim).
        return_lse: also return the row-wise log-sum-exp of the scaled, masked scores.

    Returns:
        out (batch, heads, len_q, head_dim) in q's dtype; with ``return_lse`` also
        lse (batch, heads, len_q) in float32 (natural log). A query that sees no key gets
        zeros in out (and zero gradients) and -inf in lse.

    Raises:
        TypeError / ValueError: on a bad input, naming it, before anything is launched.
        RuntimeError: for CPU tensors when Triton was imported without TRITON_INTERPRET=1.
    """
    _check_inputs(q, k, v, attn_mask, scale)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    out, lse = _forward_op(q, k, v, attn_mask, bool(is_causal), scale)
    return (out, lse) if return_lse else out
