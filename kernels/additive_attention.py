"""Bahdanau's additive attention, fused: forward and backward in Triton at flash-attention memory.

Einops legend used in comments: ``b`` batch, ``h`` heads, ``i`` query positions (``len_q``),
``j`` key positions (``len_k``), ``a`` the additive score's feature size, ``e`` the value head
dim (``E`` its power-of-two padding in the kernel, ``A`` that of ``a``).

The score of query i and key j is ``s_ij = sum_c w_c tanh(qf_ic + kf_jc)``, where the features
``qf = q W_q`` and ``kf = k W_k + bias`` are ordinary matmuls done outside (autograd handles
them) and ``w`` is the per-head score vector. Written naively that is a (b, h, i, j, a) tensor;
here a program keeps a (BLOCK_M, BLOCK_N) tile of scores on chip and sums the ``a`` channels into
it one at a time, so nothing of size len_q x len_k (let alone x a) is ever stored.

Forward: as in ``flash_attention``, a program owns a tile of queries, streams the keys and values
through with an online softmax, and saves the row-wise log-sum-exp. Backward (FlashAttention-2
layout, no atomics): ``delta = rowsum(dO * O)`` (the flash kernel's own pass), one pass per key
block for dV, dKf and the score vector's gradient, one pass per query block for dQf. Each
recomputes its score tiles from the features and the saved log-sum-exp. With
``dS = P * (dP - delta)`` and ``t = tanh(qf_ic + kf_jc)``:

    dQf_ic = w_c sum_j dS_ij (1 - t^2)     dKf_jc = w_c sum_i dS_ij (1 - t^2)
    dw_c = sum_ij dS_ij t                   dV = P^T dO

The tanh work is elementwise over a 3-D (i, j, a) tile, so it runs on CUDA cores, not tensor
cores: a score tile costs ``a`` passes of add, exp2, divide and multiply-add over BLOCK_M x
BLOCK_N elements (the forward once; the backward recomputes it twice per pass, once for P and
once for the feature gradients, because dS needs the whole score first). Only P V and its
gradients are ``tl.dot`` products.

Supported
    * query_features (b, h, len_q, a), key_features (b, h, len_k, a), score_weight (h, a),
      v (b, h, len_k, e); any strides (nothing is copied). Any ``a`` >= 1 (the kernel loops over
      it, keeping a (BLOCK, A) accumulator in each backward pass, so ``a`` <= 128); ``e`` from
      1 to 128.
    * float16, bfloat16 and float32. The features and v share one dtype; score_weight may be
      any of the three (e.g. a float32 parameter under autocast). Scores, softmax and all
      accumulation are float32; tanh is computed as ``1 - 2 / (1 + exp(2x))`` in float32.
    * ``attn_mask``: a boolean key mask, True = this key takes part, shaped exactly
      (b or 1, h or 1, 1, len_k), read inside the kernel one value per key.
    * ``is_causal``, alone or with ``attn_mask``, aligned bottom-right as in
      ``flash_attention``: query i sees keys j <= i + len_k - len_q.
    * Any len_q and len_k >= 0, not necessarily equal or multiples of the block size.
    * Gradients for query_features, key_features, score_weight and v through one
      PyTorch operator (kernels.ops: torch.compile sees it as one node); also through the
      log-sum-exp with ``return_lse=True``.
    * A query that sees no key gets zeros, zero gradients and a log-sum-exp of -inf.
    * Runs compiled on a CUDA GPU, or on the CPU under the Triton interpreter
      (``TRITON_INTERPRET=1`` set before triton is first imported).

Caution -- not supported
    * Full (len_q, len_k) masks, float masks, 2-D masks; dropout; a softmax scale (the score
      vector carries any scale); float64; a score vector per batch row.
    * The score vector's gradient is summed on the host from per-key-block partials
      (b, h, cdiv(len_k, BLOCK_N), a), linear in len_k.
    * Block sizes are fixed, not autotuned, and no GPU has timed this kernel yet.
"""

import torch
import triton
import triton.language as tl

# Shared with the dot-product kernel: the interpreter's bf16 emulation, the key-mask read and
# the rowsum(dO * O) pass of the backward are the same here.
from kernels import launch, ops
from kernels.flash_attention.backward import _attn_bwd_delta
from kernels.flash_attention.checks import _check_runnable, _kernel_key_mask, _key_mask_strides
from kernels.flash_attention.tiles import DELTA_ROWS, _dot, _key_is_valid, _round
from kernels.launch import LaunchConfig

# Module globals read inside @triton.jit code must be tl.constexpr objects: the compiler
# refuses plain Python globals (the interpreter would accept them, and hide the bug).
LOG2_E = tl.constexpr(1.4426950408889634)
LN_2 = tl.constexpr(0.6931471805599453)
# tanh(x) = 1 - 2 / (1 + e^(2x)) = 1 - 2 / (1 + 2^(x * 2 log2 e)): each channel of features is
# multiplied by 2 log2(e) as a vector, so each (i, j, c) element costs one add and one exp2.
TWO_LOG2_E = tl.constexpr(2.8853900817779268)

MAX_VALUE_DIM = 128
MAX_FEATURES = 128


@triton.jit
def _additive_scores(
    q_ptrs, k_ptrs, w_ptr, row_ok, col_ok, stride_qa, stride_ka, stride_wa, A,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """(BLOCK_M, BLOCK_N) float32 scores s_ij = sum_c w_c tanh(qf_ic + kf_jc).

    One channel at a time: only the 2-D tile is ever live, whatever ``a`` is.
    """
    s = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for c in range(0, A):
        # The channel loops call no @triton.jit helper: the interpreter pays for every call.
        qc = tl.load(q_ptrs + c * stride_qa, mask=row_ok, other=0.0).to(tl.float32)  # (i,)
        kc = tl.load(k_ptrs + c * stride_ka, mask=col_ok, other=0.0).to(tl.float32)  # (j,)
        wc = tl.load(w_ptr + c * stride_wa).to(tl.float32)
        # tanh(x) = 1 - 2 / (1 + 2^(x * 2 log2 e)). exp2 overflows to inf for large x (giving
        # 1) and underflows to 0 for very negative x (giving -1): no input makes it NaN.
        e2x = tl.exp2((qc * TWO_LOG2_E)[:, None] + (kc * TWO_LOG2_E)[None, :])  # (i, j)
        s += wc * (1.0 - 2.0 / (1.0 + e2x))
    return s


@triton.jit
def _probabilities(s, lse_log2, valid):
    """P = exp(s - lse) where valid, else 0, from the saved log-sum-exp (log2 units)."""
    return tl.exp2(tl.where(valid, s * LOG2_E, float("-inf")) - lse_log2[:, None])


@triton.jit
def _additive_fwd(
    QF, KF, W, V, Mask, Out, Lse,
    stride_qb, stride_qh, stride_qm, stride_qa,
    stride_kb, stride_kh, stride_kn, stride_ka,
    stride_wh, stride_wa,
    stride_vb, stride_vh, stride_vn, stride_ve,
    stride_ob, stride_oh, stride_om, stride_oe,
    stride_mb, stride_mh, stride_mn,
    H, LEN_Q, LEN_K, A, VALUE_DIM,
    HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr,
    EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    off_bh = tl.program_id(0)  # batch * heads on axis 0: see kernels.launch.grid
    start_m = tl.program_id(1) * BLOCK_M
    # int64 batch/head offsets: b * stride_b overflows int32 for large tensors.
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)

    rows = start_m + tl.arange(0, BLOCK_M)
    row_ok = rows < LEN_Q
    offs_n = tl.arange(0, BLOCK_N)
    offs_e = tl.arange(0, BLOCK_E)
    e_ok = offs_e < VALUE_DIM  # the padded value lanes load as 0 and are never stored

    q_ptrs = QF + off_b * stride_qb + off_h * stride_qh + rows * stride_qm  # (i,), channel 0
    k_base = KF + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh + offs_e[None, :] * stride_ve
    w_ptr = W + off_h * stride_wh
    mask_base = off_b * stride_mb + off_h * stride_mh

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)  # running max, log2 units
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)  # running sum of exp2(s - m_i)
    acc = tl.zeros((BLOCK_M, BLOCK_E), dtype=tl.float32)  # unnormalised output

    # Bottom-right causal: row i sees keys j <= i + (len_k - len_q); key blocks past the last
    # row's horizon are skipped (hi may be <= 0: then no key is visible at all).
    hi = LEN_K
    if IS_CAUSAL:
        hi = tl.minimum(LEN_K, start_m + BLOCK_M + LEN_K - LEN_Q)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < LEN_K
        s = _additive_scores(
            q_ptrs, k_base + cols * stride_kn, w_ptr, row_ok, col_ok,
            stride_qa, stride_ka, stride_wa, A, BLOCK_M, BLOCK_N,
        ) * LOG2_E  # (i, j), log2 units  # fmt: skip
        valid = _key_is_valid(Mask, mask_base, stride_mn, cols, LEN_K, HAS_MASK)[None, :]
        if IS_CAUSAL:
            valid = valid & (cols[None, :] <= rows[:, None] + (LEN_K - LEN_Q))
        s = tl.where(valid, s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, 1))
        # While a row has seen no valid key its max is -inf, and -inf - -inf would be NaN;
        # subtracting 0 instead keeps p = 0 and alpha = 0 for such rows.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)  # rescales what was summed under the old max
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            v_base + cols[:, None] * stride_vn, mask=col_ok[:, None] & e_ok[None, :], other=0.0
        )
        # p is rounded to the value dtype so the product runs on 16-bit tensor cores.
        acc = acc * alpha[:, None] + _dot(
            _round(p, v.dtype, EMULATE_BF16), v, EMULATE_BF16, PRECISION
        )
        m_i = m_new

    # A row with no valid key has l = 0 and acc = 0: it gets zeros and lse = -inf, never 0/0.
    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(seen, (m_i + tl.log2(l_safe)) * LN_2, float("-inf"))  # natural log

    o_ptrs = Out + off_b * stride_ob + off_h * stride_oh
    o_ptrs += rows[:, None] * stride_om + offs_e[None, :] * stride_oe
    tl.store(
        o_ptrs,
        _round(out, Out.dtype.element_ty, EMULATE_BF16),
        mask=row_ok[:, None] & e_ok[None, :],
    )
    tl.store(Lse + off_bh.to(tl.int64) * LEN_Q + rows, lse, mask=row_ok)


@triton.jit
def _additive_bwd_dkdv(
    QF, KF, W, V, Mask, DOut, Lse, Delta, DKF, DV, DWPartial,
    stride_qb, stride_qh, stride_qm, stride_qa,
    stride_kb, stride_kh, stride_kn, stride_ka,
    stride_wh, stride_wa,
    stride_vb, stride_vh, stride_vn, stride_ve,
    stride_gb, stride_gh, stride_gm, stride_ge,
    stride_mb, stride_mh, stride_mn,
    H, LEN_Q, LEN_K, A, VALUE_DIM,
    HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_A: tl.constexpr,
    EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """One program per key block: accumulates dV_j, dKf_j and this block's share of dw.

    DKF (b, h, len_k, a) and DV (b, h, len_k, e) are contiguous; DWPartial is a contiguous
    float32 (b, h, cdiv(len_k, BLOCK_N), a) buffer that the host sums over key blocks and batch.
    """
    off_bh = tl.program_id(0)  # batch * heads on axis 0: see kernels.launch.grid
    pid_n = tl.program_id(1)
    start_n = pid_n * BLOCK_N
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)

    cols = start_n + tl.arange(0, BLOCK_N)
    col_ok = cols < LEN_K
    offs_m = tl.arange(0, BLOCK_M)
    offs_e = tl.arange(0, BLOCK_E)
    offs_a = tl.arange(0, BLOCK_A)
    e_ok = offs_e < VALUE_DIM
    v_ok = col_ok[:, None] & e_ok[None, :]

    k_ptrs = KF + off_b * stride_kb + off_h * stride_kh + cols * stride_kn  # (j,), channel 0
    v_ptrs = V + off_b * stride_vb + off_h * stride_vh
    v = tl.load(
        v_ptrs + cols[:, None] * stride_vn + offs_e[None, :] * stride_ve, mask=v_ok, other=0.0
    )
    w_ptr = W + off_h * stride_wh
    # The key mask is per key, so this block's slice of it is read once, outside the loop.
    key_valid = _key_is_valid(
        Mask, off_b * stride_mb + off_h * stride_mh, stride_mn, cols, LEN_K, HAS_MASK
    )
    q_base = QF + off_b * stride_qb + off_h * stride_qh
    g_base = DOut + off_b * stride_gb + off_h * stride_gh + offs_e[None, :] * stride_ge
    row_base = off_bh.to(tl.int64) * LEN_Q

    dv = tl.zeros((BLOCK_N, BLOCK_E), dtype=tl.float32)
    dkf = tl.zeros((BLOCK_N, BLOCK_A), dtype=tl.float32)
    dw = tl.zeros((BLOCK_A,), dtype=tl.float32)

    # Bottom-right causal: key j is seen by rows i >= j - (len_k - len_q); earlier query
    # blocks contribute nothing and are skipped.
    lo = 0
    if IS_CAUSAL:
        lo = tl.maximum(0, start_n - (LEN_K - LEN_Q)) // BLOCK_M * BLOCK_M
    for start_m in range(lo, LEN_Q, BLOCK_M):
        rows = start_m + offs_m
        row_ok = rows < LEN_Q
        q_ptrs = q_base + rows * stride_qm
        do = tl.load(
            g_base + rows[:, None] * stride_gm, mask=row_ok[:, None] & e_ok[None, :], other=0.0
        )
        lse = tl.load(Lse + row_base + rows, mask=row_ok, other=0.0)
        delta = tl.load(Delta + row_base + rows, mask=row_ok, other=0.0)
        # Rows that saw no key saved lse = -inf and have no valid pair either; any finite
        # stand-in gives p = 0 rather than exp2(-inf + inf) = NaN.
        lse_log2 = tl.where(lse == float("-inf"), 0.0, lse * LOG2_E)

        s = _additive_scores(
            q_ptrs, k_ptrs, w_ptr, row_ok, col_ok,
            stride_qa, stride_ka, stride_wa, A, BLOCK_M, BLOCK_N,
        )  # fmt: skip
        valid = row_ok[:, None] & key_valid[None, :]
        if IS_CAUSAL:
            valid = valid & (cols[None, :] <= rows[:, None] + (LEN_K - LEN_Q))
        p = _probabilities(s, lse_log2, valid)  # (i, j)

        dv += _dot(tl.trans(_round(p, do.dtype, EMULATE_BF16)), do, EMULATE_BF16, PRECISION)
        dp = _dot(do, tl.trans(v), EMULATE_BF16, PRECISION)  # (i, j)
        ds = p * (dp - delta[:, None])  # gradient w.r.t. the scores

        # The feature gradients need tanh per channel again: recompute it channel by channel
        # and put each channel's column into its lane of the (j, A) accumulator.
        for c in range(0, A):
            qc = tl.load(q_ptrs + c * stride_qa, mask=row_ok, other=0.0).to(tl.float32)
            kc = tl.load(k_ptrs + c * stride_ka, mask=col_ok, other=0.0).to(tl.float32)
            wc = tl.load(w_ptr + c * stride_wa).to(tl.float32)
            e2x = tl.exp2((qc * TWO_LOG2_E)[:, None] + (kc * TWO_LOG2_E)[None, :])
            t = 1.0 - 2.0 / (1.0 + e2x)  # tanh, as in _additive_scores  # (i, j)
            lane = offs_a == c
            dkf += tl.where(lane[None, :], (wc * tl.sum(ds * (1.0 - t * t), 0))[:, None], 0.0)
            dw += tl.where(lane, tl.sum(tl.sum(ds * t, 1), 0), 0.0)

    a_ok = offs_a < A
    dkf_ptrs = DKF + off_bh.to(tl.int64) * LEN_K * A + cols[:, None] * A + offs_a[None, :]
    tl.store(
        dkf_ptrs,
        _round(dkf, DKF.dtype.element_ty, EMULATE_BF16),
        mask=col_ok[:, None] & a_ok[None, :],
    )
    dv_ptrs = DV + off_bh.to(tl.int64) * LEN_K * VALUE_DIM + cols[:, None] * VALUE_DIM
    tl.store(dv_ptrs + offs_e[None, :], _round(dv, DV.dtype.element_ty, EMULATE_BF16), mask=v_ok)
    dw_ptrs = DWPartial + (off_bh.to(tl.int64) * tl.num_programs(1) + pid_n) * A + offs_a
    tl.store(dw_ptrs, dw, mask=a_ok)


@triton.jit
def _additive_bwd_dq(
    QF, KF, W, V, Mask, DOut, Lse, Delta, DQF,
    stride_qb, stride_qh, stride_qm, stride_qa,
    stride_kb, stride_kh, stride_kn, stride_ka,
    stride_wh, stride_wa,
    stride_vb, stride_vh, stride_vn, stride_ve,
    stride_gb, stride_gh, stride_gm, stride_ge,
    stride_mb, stride_mh, stride_mn,
    H, LEN_Q, LEN_K, A, VALUE_DIM,
    HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_A: tl.constexpr,
    EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """One program per query block: accumulates dQf_i over key blocks. DQF is a contiguous
    (b, h, len_q, a) buffer."""
    off_bh = tl.program_id(0)  # batch * heads on axis 0: see kernels.launch.grid
    start_m = tl.program_id(1) * BLOCK_M
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)

    rows = start_m + tl.arange(0, BLOCK_M)
    row_ok = rows < LEN_Q
    offs_n = tl.arange(0, BLOCK_N)
    offs_e = tl.arange(0, BLOCK_E)
    offs_a = tl.arange(0, BLOCK_A)
    e_ok = offs_e < VALUE_DIM

    q_ptrs = QF + off_b * stride_qb + off_h * stride_qh + rows * stride_qm
    g_ptrs = DOut + off_b * stride_gb + off_h * stride_gh
    do = tl.load(
        g_ptrs + rows[:, None] * stride_gm + offs_e[None, :] * stride_ge,
        mask=row_ok[:, None] & e_ok[None, :],
        other=0.0,
    )
    row_base = off_bh.to(tl.int64) * LEN_Q
    lse = tl.load(Lse + row_base + rows, mask=row_ok, other=0.0)
    delta = tl.load(Delta + row_base + rows, mask=row_ok, other=0.0)
    lse_log2 = tl.where(lse == float("-inf"), 0.0, lse * LOG2_E)  # see _additive_bwd_dkdv

    k_base = KF + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh + offs_e[None, :] * stride_ve
    w_ptr = W + off_h * stride_wh
    mask_base = off_b * stride_mb + off_h * stride_mh

    dqf = tl.zeros((BLOCK_M, BLOCK_A), dtype=tl.float32)
    hi = LEN_K
    if IS_CAUSAL:
        hi = tl.minimum(LEN_K, start_m + BLOCK_M + LEN_K - LEN_Q)  # as in the forward
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < LEN_K
        k_ptrs = k_base + cols * stride_kn
        v = tl.load(
            v_base + cols[:, None] * stride_vn, mask=col_ok[:, None] & e_ok[None, :], other=0.0
        )

        s = _additive_scores(
            q_ptrs, k_ptrs, w_ptr, row_ok, col_ok,
            stride_qa, stride_ka, stride_wa, A, BLOCK_M, BLOCK_N,
        )  # fmt: skip
        valid = (
            row_ok[:, None]
            & _key_is_valid(Mask, mask_base, stride_mn, cols, LEN_K, HAS_MASK)[None, :]
        )
        if IS_CAUSAL:
            valid = valid & (cols[None, :] <= rows[:, None] + (LEN_K - LEN_Q))
        p = _probabilities(s, lse_log2, valid)
        dp = _dot(do, tl.trans(v), EMULATE_BF16, PRECISION)  # (i, j)
        ds = p * (dp - delta[:, None])

        for c in range(0, A):  # as in _additive_bwd_dkdv, summing over keys instead
            qc = tl.load(q_ptrs + c * stride_qa, mask=row_ok, other=0.0).to(tl.float32)
            kc = tl.load(k_ptrs + c * stride_ka, mask=col_ok, other=0.0).to(tl.float32)
            wc = tl.load(w_ptr + c * stride_wa).to(tl.float32)
            e2x = tl.exp2((qc * TWO_LOG2_E)[:, None] + (kc * TWO_LOG2_E)[None, :])
            t = 1.0 - 2.0 / (1.0 + e2x)  # tanh, as in _additive_scores
            column = wc * tl.sum(ds * (1.0 - t * t), 1)  # (i,)
            dqf += tl.where((offs_a == c)[None, :], column[:, None], 0.0)

    dqf_ptrs = DQF + row_base * A + rows[:, None] * A + offs_a[None, :]
    tl.store(
        dqf_ptrs,
        _round(dqf, DQF.dtype.element_ty, EMULATE_BF16),
        mask=row_ok[:, None] & (offs_a < A)[None, :],
    )


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
CALLER = "additive_attention"  # how errors name this kernel

# Triton decides at @triton.jit time (when this module was imported) whether kernels are
# compiled or interpreted, from TRITON_INTERPRET as it was then.
_INTERPRETED = type(_additive_fwd).__name__ == "InterpretedFunction"


def _empty(shape, dtype, device):
    """Every buffer the launchers hand to a kernel comes from here (tests poison it with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


C = LaunchConfig  # (BLOCK_M query rows, BLOCK_N key rows, warps, stages)
# Configurations to try, best guess first, by kernel name and whether the inputs are 16-bit;
# measured with the compile gate (python -m kernels.compile_gate) on sm_80/86/89/90. The live set
# is a few (BLOCK_M, BLOCK_N) float32 tiles, the output or dV accumulator and, in the backward,
# a (BLOCK, A) feature-gradient accumulator; ptxas spills a few bytes in some of these on some
# architectures, and the launcher passes over a config that spills. float32 runs its P V
# products on FMA units (IEEE, no tensor cores), which needs smaller tiles. The channel loops
# are not software-pipelined (one stage): per channel they load two vectors, while the exp2 and
# division over the whole tile are the work -- which is also why these kernels do not need
# Hopper's wgmma (their products are a small part of the work).
CONFIGS = {
    ("_additive_fwd", True): [C(32, 32, 4, 1), C(32, 32, 8, 1), C(64, 32, 4, 1)],
    ("_additive_fwd", False): [C(32, 32, 8, 1), C(32, 32, 4, 1), C(16, 32, 4, 1)],
    ("_additive_bwd_dq", True): [C(32, 32, 4, 1), C(32, 32, 8, 1), C(64, 32, 4, 1)],
    ("_additive_bwd_dq", False): [C(32, 32, 4, 1), C(16, 32, 4, 1), C(32, 16, 4, 1)],
    ("_additive_bwd_dkdv", True): [C(32, 64, 8, 1), C(32, 32, 4, 1), C(32, 32, 8, 1)],
    ("_additive_bwd_dkdv", False): [C(16, 16, 4, 1), C(16, 32, 4, 1), C(32, 16, 4, 1)],
}


def _configs(kernel, dtype):
    """The launch configurations to choose from for one of this module's kernels."""
    if _INTERPRETED:
        return [launch.INTERPRETER_CONFIG]  # numpy: fewer, larger blocks run faster
    return CONFIGS[kernel.__name__, dtype != torch.float32]


def _tuned_launch(kernel, run, v, block_a, block_e, meta, len_q, len_k, rows):
    """Launch with the best config (kernels.launch.pick); run(config) launches. The config, or
    None for an empty grid (``rows``, the length the grid tiles, or batch * heads is 0), which
    has nothing to run and must not tune (its length bucket is a one-token call's)."""
    if rows == 0 or v.shape[0] * v.shape[1] == 0:
        return None
    key = (kernel.__name__, v.device.index, v.dtype, block_a, block_e,
           tuple(sorted(meta.items())), launch.length_bucket(len_q),
           launch.length_bucket(len_k))  # fmt: skip
    config = launch.pick(key, _configs(kernel, v.dtype), run)
    run(config)
    return config


def _check_inputs(query_features, key_features, score_weight, v, attn_mask):
    """Validate everything before a launch; returns (BLOCK_A, BLOCK_E), the paddings."""
    named = (
        ("query_features", query_features, 4, "(batch, heads, len_q, a)"),
        ("key_features", key_features, 4, "(batch, heads, len_k, a)"),
        ("score_weight", score_weight, 2, "(heads, a)"),
        ("v", v, 4, "(batch, heads, len_k, value_dim)"),
    )
    for name, t, rank, layout in named:
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"additive_attention: {name} must be a torch.Tensor, got {type(t).__name__}"
            )
        if t.dim() != rank:
            raise ValueError(
                f"additive_attention: {name} must have rank {rank} {layout}, "
                f"got shape {tuple(t.shape)}"
            )
    qf, kf, w = query_features, key_features, score_weight
    if not (qf.dtype == kf.dtype == v.dtype):
        raise TypeError(
            "additive_attention: query_features, key_features and v must share one dtype, "
            f"got {qf.dtype}, {kf.dtype}, {v.dtype}"
        )
    for name, dtype in (("the inputs' dtype", qf.dtype), ("score_weight's dtype", w.dtype)):
        if dtype not in _DTYPES:
            raise TypeError(
                f"additive_attention: {name} {dtype} is not supported; use one of {_DTYPES}"
            )
    devices = {t.device for t in (qf, kf, w, v)}
    if len(devices) > 1:
        raise ValueError(
            "additive_attention: query_features, key_features, score_weight and v must be on "
            f"one device, got {qf.device}, {kf.device}, {w.device}, {v.device}"
        )
    b, h, _, a = qf.shape
    if kf.shape[:2] != (b, h) or v.shape[:2] != (b, h):
        raise ValueError(
            "additive_attention: query_features, key_features and v must share (batch, heads); "
            f"got {tuple(qf.shape)}, {tuple(kf.shape)}, {tuple(v.shape)}"
        )
    if kf.shape[3] != a:
        raise ValueError(
            f"additive_attention: query and key feature sizes differ ({a} vs {kf.shape[3]})"
        )
    if not 1 <= a <= MAX_FEATURES:
        raise ValueError(
            f"additive_attention: feature size {a} is not supported (1 to {MAX_FEATURES})"
        )
    if kf.shape[2] != v.shape[2]:
        raise ValueError(
            "additive_attention: key_features and v must have the same length, "
            f"got {kf.shape[2]} and {v.shape[2]}"
        )
    if tuple(w.shape) != (h, a):
        raise ValueError(
            f"additive_attention: score_weight must be (heads, a) = ({h}, {a}), "
            f"got {tuple(w.shape)}"
        )
    if not 1 <= v.shape[3] <= MAX_VALUE_DIM:
        raise ValueError(
            f"additive_attention: value head dim {v.shape[3]} is not supported "
            f"(1 to {MAX_VALUE_DIM})"
        )
    if attn_mask is not None:
        _key_mask_strides(attn_mask, qf, kf, CALLER)  # raises on a bad mask
    _check_runnable(qf.device, CALLER)
    # tl.dot wants every dimension >= 16; the (BLOCK, A) accumulators only a power of two.
    return triton.next_power_of_2(a), max(16, triton.next_power_of_2(v.shape[3]))


def _launch(kernel, grid, *args, **meta):
    """Every kernel launch of this module goes through here (the compile gate captures them);
    returns Triton's compiled kernel, which kernels.launch.pick reads for spills (None for an
    empty grid, which is not launchable and has nothing to do)."""
    if not launch.is_empty(grid):
        return kernel[grid](*args, **meta)
    return None


def _meta(attn_mask, is_causal, block_e, dtype):
    """The constexprs every additive kernel takes, apart from its block sizes."""
    return dict(
        HAS_MASK=attn_mask is not None,
        IS_CAUSAL=bool(is_causal),
        BLOCK_E=block_e,
        EMULATE_BF16=_INTERPRETED and dtype == torch.bfloat16,
        # fp32 inputs get exact products (TF32 would be far less accurate than PyTorch's fp32).
        PRECISION="ieee" if dtype == torch.float32 else "tf32",
    )


def _forward(qf, kf, w, v, attn_mask, is_causal, block_a, block_e):
    b, h, len_q, _ = qf.shape
    len_k, value_dim = v.shape[2], v.shape[3]
    out = _empty((b, h, len_q, value_dim), v.dtype, v.device)
    lse = _empty((b, h, len_q), torch.float32, v.device)
    mask, mask_strides = _kernel_key_mask(attn_mask, qf, kf, CALLER)
    meta = _meta(attn_mask, is_causal, block_e, v.dtype)
    args = (
        qf, kf, w, v, mask, out, lse,
        *qf.stride(), *kf.stride(), *w.stride(), *v.stride(), *out.stride(), *mask_strides,
        h, len_q, len_k, qf.shape[3], value_dim,
    )  # fmt: skip

    def run(config):
        grid = launch.grid(b * h, triton.cdiv(len_q, config.block_m))
        return _launch(_additive_fwd, grid, *args, **meta, **config.meta())

    _tuned_launch(_additive_fwd, run, v, block_a, block_e, meta, len_q, len_k, rows=len_q)
    return out, lse


def _backward(qf, kf, w, v, attn_mask, is_causal, block_a, block_e, out, lse, dout, dlse):
    b, h, len_q, a = qf.shape
    len_k, value_dim = v.shape[2], v.shape[3]
    mask, mask_strides = _kernel_key_mask(attn_mask, qf, kf, CALLER)
    if dlse is None:
        dlse = torch.zeros((b, h, len_q), dtype=torch.float32, device=v.device)
    dlse = dlse.to(torch.float32).contiguous()
    common = (
        *qf.stride(), *kf.stride(), *w.stride(), *v.stride(), *dout.stride(), *mask_strides,
        h, len_q, len_k, a, value_dim,
    )  # fmt: skip

    meta = _meta(attn_mask, is_causal, block_e, v.dtype)
    delta = _empty((b, h, len_q), torch.float32, v.device)
    _launch(
        _attn_bwd_delta, launch.grid(b * h, triton.cdiv(len_q, DELTA_ROWS)),
        out, dout, dlse, delta, *out.stride(), *dout.stride(), h, len_q, value_dim,
        BLOCK_M=DELTA_ROWS, BLOCK_D=block_e,
    )  # fmt: skip
    dqf = _empty((b, h, len_q, a), qf.dtype, v.device)

    def run_dq(config):
        return _launch(
            _additive_bwd_dq, launch.grid(b * h, triton.cdiv(len_q, config.block_m)),
            qf, kf, w, v, mask, dout, lse, delta, dqf, *common,
            **meta, BLOCK_A=block_a, **config.meta(),
        )  # fmt: skip

    _tuned_launch(_additive_bwd_dq, run_dq, v, block_a, block_e, meta, len_q, len_k, rows=len_q)

    dkf = _empty((b, h, len_k, a), kf.dtype, v.device)
    dv = _empty((b, h, len_k, value_dim), v.dtype, v.device)
    partials = {}  # per config: dw summed over each key block, (b, h, key blocks, a)

    def run_dkdv(config):
        key_blocks = triton.cdiv(len_k, config.block_n)
        partials[config] = _empty((b, h, key_blocks, a), torch.float32, v.device)
        return _launch(
            _additive_bwd_dkdv, launch.grid(b * h, key_blocks),
            qf, kf, w, v, mask, dout, lse, delta, dkf, dv, partials[config], *common,
            **meta, BLOCK_A=block_a, **config.meta(),
        )  # fmt: skip

    config = _tuned_launch(
        _additive_bwd_dkdv, run_dkdv, v, block_a, block_e, meta, len_q, len_k, rows=len_k
    )
    if config is None:  # no keys (or no batch): dw is an empty sum
        return dqf, dkf, torch.zeros_like(w), dv
    dw_partial = partials[config]
    dw = dw_partial.sum(dim=(0, 2)).to(w.dtype)  # (h, a): summed over batch and key blocks
    return dqf, dkf, dw, dv


def _blocks(qf, v):
    """(BLOCK_A, BLOCK_E): the feature size and value head dim padded to powers of two."""
    return triton.next_power_of_2(qf.shape[3]), max(16, triton.next_power_of_2(v.shape[3]))


def _fake_forward(qf, kf, w, v, attn_mask, is_causal):
    """What _forward returns, as empty tensors: out (b, h, len_q, value_dim), lse (b, h, len_q)."""
    out = v.new_empty((*qf.shape[:3], v.shape[3]))
    return out, qf.new_empty(qf.shape[:3], dtype=torch.float32)


def _fake_backward(qf, kf, w, v, attn_mask, is_causal, out, lse, dout, dlse):
    """What _backward returns, as empty tensors: contiguous dqf, dkf, dw, dv."""
    return (
        qf.new_empty(qf.shape),
        kf.new_empty(kf.shape),
        w.new_empty(w.shape),
        v.new_empty(v.shape),
    )


@ops.kernel_op("additive_attention_backward", fake=_fake_backward)
def _backward_op(
    qf: torch.Tensor, kf: torch.Tensor, w: torch.Tensor, v: torch.Tensor,
    attn_mask: torch.Tensor | None, is_causal: bool, out: torch.Tensor, lse: torch.Tensor,
    dout: torch.Tensor, dlse: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    block_a, block_e = _blocks(qf, v)
    return _backward(qf, kf, w, v, attn_mask, is_causal, block_a, block_e, out, lse, dout, dlse)


# The one autograd definition (kernels.ops): gradients of the features, the score vector and
# the values from the backward operator above.
@ops.kernel_op(
    "additive_attention", fake=_fake_forward, backward=_backward_op, wrt=("qf", "kf", "w", "v")
)
def _forward_op(
    qf: torch.Tensor, kf: torch.Tensor, w: torch.Tensor, v: torch.Tensor,
    attn_mask: torch.Tensor | None, is_causal: bool,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    return _forward(qf, kf, w, v, attn_mask, is_causal, *_blocks(qf, v))


def additive_attention(
    query_features,
    key_features,
    score_weight,
    v,
    attn_mask=None,
    is_causal=False,
    *,
    return_lse=False,
):
    """Additive (Bahdanau) attention ``softmax_j(sum_c w_c tanh(qf_ic + kf_jc)) v``, fused.

    Args:
        query_features: (batch, heads, len_q, a), the queries' features ``q W_q``; float16,
            bfloat16 or float32.
        key_features: (batch, heads, len_k, a), the keys' features ``k W_k + bias``.
        score_weight: (heads, a), the score vector ``w`` of each head; float16, bfloat16 or
            float32 (its gradient comes back in its own dtype).
        v: (batch, heads, len_k, value_dim), same dtype and device as the features.
        attn_mask: optional boolean key mask, True = this key takes part, shaped
            (batch or 1, heads or 1, 1, len_k).
        is_causal: causal masking aligned to the **bottom-right** corner: query i sees keys
            j <= i + len_k - len_q. May be combined with attn_mask.
        return_lse: also return the row-wise log-sum-exp of the masked scores.

    Returns:
        out (batch, heads, len_q, value_dim) in v's dtype; with ``return_lse`` also lse
        (batch, heads, len_q) in float32 (natural log). A query that sees no key gets zeros
        in out (and zero gradients) and -inf in lse.

    Raises:
        TypeError / ValueError: on a bad input, naming it, before anything is launched.
        RuntimeError: for CPU tensors when Triton was imported without TRITON_INTERPRET=1.
    """
    _check_inputs(query_features, key_features, score_weight, v, attn_mask)
    out, lse = _forward_op(
        query_features, key_features, score_weight, v, attn_mask, bool(is_causal)
    )
    return (out, lse) if return_lse else out
