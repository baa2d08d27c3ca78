"""The backward kernels (FlashAttention-2): delta = rowsum(dO * O), then dK/dV per key block and
dQ per query block, both recomputing the probabilities from the saved log-sum-exp.

Dropout (HAS_DROPOUT). The forward computed O = (P * Z) V, P = softmax(S) row by row, with
Z_ij = keep_ij / (1 - p) (elementwise products; keep regenerated here from the same seed and
counters by tiles._dropout_keep). Then, with dO the output's gradient:

    dV = (P * Z)^T dO                                   the dropped, rescaled probabilities
    d(P * Z) = dO V^T,  so  dP = (dO V^T) * Z           dropout's own backward
    dS_ij = P_ij (dP_ij - sum_k P_ik dP_ik)             softmax's backward, on the undropped P
    sum_k P_ik dP_ik = sum_k P_ik Z_ik (dO_i . V_k) = dO_i . O_i

so delta = rowsum(dO * O) with the (dropped) output O, exactly as without dropout, and the
log-sum-exp term (d lse_i / d S_ij = P_ij, undropped: dropout does not touch the normaliser)
still folds into delta as -dlse. dK = scale * dS^T Q and dQ = scale * dS K are unchanged; dS
is also the gradient of a float mask. With p = 1 (Z = 0, keep_scale = 0) every gradient but
the log-sum-exp's is zero, as SDPA's.

In the dQ pass, query rows past len_q (in a partial last block) load q = dO = 0 and
lse = delta = 0, so their dS is 0 and they add nothing; they are never stored.

LARGE_OFFSETS: every row and lane offset in int64 (see :mod:`kernels.common.jit`). The delta pass
(``rowsum(dO * O)``) is both kernels' own: :func:`kernels.common.jit.attn_bwd_delta`.
"""

import triton
import triton.language as tl

from kernels.common.jit import (
    dot,
    head_rows,
    head_tile,
    program_tile,
    round_to,
    softmax_stats,
    widen,
)
from kernels.flash_attention.forward import _visible_key_blocks
from kernels.flash_attention.tiles import (
    _apply_mask,
    _block_ranges,
    _dropout_keep,
    _head_dim_lanes,
    _in_window,
    _load_rows,
    _mask_key_block,
    _modify_scores,
    _packed_row,
    _packed_sequence,
    _stage_blocks,
    alibi_slope,
)


@triton.jit
def _drop(x, keep, keep_scale):
    """x * Z for an (i, j) tile: Z = keep / (1 - p), keep_scale = 1 / (1 - p) (0 when p = 1)."""
    return tl.where(keep, x * keep_scale, 0.0)


@triton.jit
def _softcap_grad(ds, capped, softcap_log2, HAS_SOFTCAP: tl.constexpr):
    """dS with respect to the scaled scores before the softcap: times 1 - tanh^2, tanh =
    capped / c (both in log2 units)."""
    if HAS_SOFTCAP:
        t = capped / softcap_log2
        ds = ds * (1.0 - t * t)
    return ds


@triton.jit
def _dkdv_query_blocks(
    dk, dv, k, v, M, Q, DOut, Lse, Delta, row_base,
    stride_qm, stride_gm, stride_mm, stride_mn,
    cols, offs_m, dqk_ok, dv_ok, start, stop, LEN_Q, LEN_K, qk_scale_log2,
    anchor_shift, window_left, window_right, softcap_log2, slope_log2,
    seed, rng_offset, dropout_p, keep_scale,
    MASKED: tl.constexpr, HAS_MASK: tl.constexpr, MASK_FLOAT: tl.constexpr,
    MASK_ROWS: tl.constexpr, WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    EVEN_DQK: tl.constexpr, EVEN_DV: tl.constexpr, BLOCK_M: tl.constexpr,
    EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Accumulate dK, dV of one key block over query blocks [start, stop).

    MASKED blocks may run past len_q or straddle a window edge. In the others every query
    sees every key of the block; a key past len_k (a partial last key block) then gets a
    finite or infinite stand-in p, but it touches only its own row of dK and dV, which is
    never stored.
    """
    for start_m in range(start, stop, BLOCK_M):
        rows = start_m + offs_m
        q = _load_rows(Q + rows[:, None] * stride_qm, rows, LEN_Q, dqk_ok, MASKED, EVEN_DQK)
        do = _load_rows(DOut + rows[:, None] * stride_gm, rows, LEN_Q, dv_ok, MASKED, EVEN_DV)
        lse_log2, delta = softmax_stats(Lse, Delta, row_base + rows, rows, LEN_Q, MASKED)

        s = dot(q, tl.trans(k), EMULATE_BF16, PRECISION) * qk_scale_log2  # (i, j)
        s, capped = _modify_scores(
            s, rows, cols, anchor_shift, softcap_log2, slope_log2, HAS_SOFTCAP, HAS_ALIBI
        )
        if HAS_MASK:
            s = _apply_mask(
                s, M, stride_mm, stride_mn, rows, cols, LEN_Q, LEN_K, MASK_FLOAT, MASK_ROWS
            )
        if MASKED:
            valid = _in_window(
                (rows < LEN_Q)[:, None], rows, cols, anchor_shift, window_left, window_right,
                WINDOW_LEFT, WINDOW_RIGHT,
            )  # fmt: skip
            s = tl.where(valid, s, float("-inf"))
        # Recompute P from the saved log-sum-exp: P = exp(s - lse), already normalised.
        p = tl.exp2(s - lse_log2[:, None])

        p_out = p  # the probabilities the output was made of
        if HAS_DROPOUT:
            keep = _dropout_keep(seed, rng_offset, row_base + rows, cols, LEN_K, dropout_p)
            p_out = _drop(p, keep, keep_scale)
        dv += dot(tl.trans(round_to(p_out, do.dtype, EMULATE_BF16)), do, EMULATE_BF16, PRECISION)
        dp = dot(do, tl.trans(v), EMULATE_BF16, PRECISION)  # (i, j)
        if HAS_DROPOUT:
            dp = _drop(dp, keep, keep_scale)
        ds = p * (dp - delta[:, None])  # gradient w.r.t. the (capped, biased) scores
        ds = _softcap_grad(ds, capped, softcap_log2, HAS_SOFTCAP)  # w.r.t. the scaled scores
        dk += dot(tl.trans(round_to(ds, q.dtype, EMULATE_BF16)), q, EMULATE_BF16, PRECISION)
    return dk, dv


@triton.jit
def _seen_query_blocks(start_n, LEN_Q, LEN_K, anchor_shift, window_left, window_right,
                       WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """(start, whole_start, whole_stop, stop) of the query blocks that see the key block at
    start_n (see tiles._block_ranges). Query i sees key j iff j - shift - right <= i <=
    j - shift + left: the window seen from the key side, its edges swapped (causality's
    diagonal is the lower edge here)."""
    last = tl.minimum(start_n + BLOCK_N, LEN_K) - 1
    return _block_ranges(
        start_n, last, LEN_Q, -anchor_shift, window_right, window_left,
        WINDOW_RIGHT, WINDOW_LEFT, BLOCK_M,
    )  # fmt: skip


@triton.jit
def _key_program(H, GROUP, BLOCK_N: tl.constexpr):
    """(off_bkv, off_b, off_hk, start_n): program_tile's set-up over key/value heads (h_kv =
    H // GROUP, taken after the ids): grid axis 0 is batch * h_kv + key/value head (see
    runtime.grid), its batch and head as int64; axis 1 the key block starting at start_n."""
    off_bkv = tl.program_id(0)
    start_n = tl.program_id(1) * BLOCK_N
    H_KV = H // GROUP
    off_b = (off_bkv // H_KV).to(tl.int64)
    off_hk = (off_bkv % H_KV).to(tl.int64)
    return off_bkv, off_b, off_hk, start_n


@triton.jit
def _store_rows(Buffer, x, row0, HEAD_DIM, lanes, ok, EMULATE_BF16: tl.constexpr):
    """Store the float32 tile x (rows, lanes) at rows row0 (rows, 1) of a contiguous
    (rows, HEAD_DIM) buffer, in the buffer's dtype, where ``ok``."""
    offsets = row0 * HEAD_DIM + lanes[None, :]
    tl.store(Buffer + offsets, round_to(x, Buffer.dtype.element_ty, EMULATE_BF16), mask=ok)


@triton.jit(do_not_specialize=["seed", "rng_offset"])
def _attn_bwd_dkdv(
    Q, K, V, Mask, DOut, Lse, Delta, DK, DV,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_gb, stride_gh, stride_gm, stride_gd,
    stride_mb, stride_mh, stride_mm, stride_mn,
    H, GROUP, LEN_Q, LEN_K, HEAD_DIM_QK, HEAD_DIM_V, sm_scale, qk_scale_log2,
    anchor_shift, window_left, window_right, softcap_log2, Slopes, stride_sb, stride_sh, Sinks,
    seed, rng_offset, dropout_p, keep_scale, CuSeqlensQ, CuSeqlensK,
    HAS_MASK: tl.constexpr, MASK_FLOAT: tl.constexpr, MASK_ROWS: tl.constexpr,
    WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    HAS_ALIBI: tl.constexpr, HAS_SINKS: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    EVEN_DQK: tl.constexpr, EVEN_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr, LARGE_OFFSETS: tl.constexpr = False,
    VARLEN: tl.constexpr = False,
):  # fmt: skip
    """One program per key block of one key/value head: holds K_j, V_j and accumulates dK_j,
    dV_j over the query blocks of every query head that reads this key/value head (GROUP of
    them with grouped-query attention, one otherwise), so nothing is repeated in memory. DK
    and DV: contiguous (b, h_kv, len_k, d|d_v) buffers (packed: (h_kv, total_k, d|d_v))."""
    off_bkv, off_b, off_hk, start_n = _key_program(H, GROUP, BLOCK_N)
    total_q, total_k, q0, k0 = LEN_Q, LEN_K, 0, 0  # VARLEN: packed totals, first tokens
    if VARLEN:  # packed sequences: from here on LEN_Q, LEN_K are sequence off_b's own
        Q, K, V, DOut, LEN_Q, LEN_K, anchor_shift, _, rng_offset, q0, k0 = _packed_sequence(
            Q, K, V, DOut, stride_qm, stride_kn, stride_vn, stride_gm, CuSeqlensQ, CuSeqlensK,
            off_b, 0, H, LEN_Q, LEN_K, rng_offset,
        )  # fmt: skip
        if start_n >= LEN_K:
            return
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_dqk, offs_dv, dqk_ok, dv_ok = _head_dim_lanes(HEAD_DIM_QK, HEAD_DIM_V, BLOCK_DQK, BLOCK_DV)
    k_ok = (cols[:, None] < LEN_K) & dqk_ok[None, :]
    v_ok = (cols[:, None] < LEN_K) & dv_ok[None, :]

    k_ptrs = head_tile(
        K, off_b, off_hk, stride_kb, stride_kh, cols, stride_kn, offs_dqk, stride_kd, LARGE_OFFSETS
    )
    k = tl.load(k_ptrs, mask=k_ok, other=0.0)  # (j, DQK)
    v_ptrs = head_tile(
        V, off_b, off_hk, stride_vb, stride_vh, cols, stride_vn, offs_dv, stride_vd, LARGE_OFFSETS
    )
    v = tl.load(v_ptrs, mask=v_ok, other=0.0)  # (j, DV)
    stride_mm, stride_mn = widen(stride_mm, LARGE_OFFSETS), widen(stride_mn, LARGE_OFFSETS)

    dk = tl.zeros((BLOCK_N, BLOCK_DQK), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_DV), dtype=tl.float32)
    ranges = _seen_query_blocks(start_n, LEN_Q, LEN_K, anchor_shift, window_left, window_right,
                                WINDOW_LEFT, WINDOW_RIGHT, BLOCK_M, BLOCK_N)  # fmt: skip
    for g in range(0, GROUP):
        off_h = off_hk * GROUP + g  # a query head reading this key/value head
        q_base, q_row = head_rows(
            Q, off_b, off_h, stride_qb, stride_qh, stride_qm, offs_dqk, stride_qd, LARGE_OFFSETS
        )
        g_base, g_row = head_rows(
            DOut, off_b, off_h, stride_gb, stride_gh, stride_gm, offs_dv, stride_gd,
            LARGE_OFFSETS,
        )  # fmt: skip
        m_base = Mask + off_b * stride_mb + off_h * stride_mh  # this (batch, head)'s mask
        slope_log2 = alibi_slope(Slopes, off_b, off_h, stride_sb, stride_sh, HAS_ALIBI)
        row_base = _packed_row(off_h, total_q, q0, (off_b * H + off_h) * LEN_Q, VARLEN)
        for stage in tl.static_range(0 if WINDOW_RIGHT else 1, 3):  # see _block_ranges
            start, stop = _stage_blocks(stage, ranges)
            dk, dv = _dkdv_query_blocks(
                dk, dv, k, v, m_base, q_base, g_base, Lse, Delta, row_base, q_row, g_row,
                stride_mm, stride_mn, cols, offs_m, dqk_ok, dv_ok, start, stop, LEN_Q, LEN_K,
                qk_scale_log2, anchor_shift, window_left, window_right, softcap_log2,
                slope_log2, seed, rng_offset, dropout_p, keep_scale,
                stage != 1, HAS_MASK, MASK_FLOAT, MASK_ROWS, WINDOW_LEFT, WINDOW_RIGHT,
                HAS_SOFTCAP, HAS_ALIBI, HAS_DROPOUT, EVEN_DQK, EVEN_DV, BLOCK_M, EMULATE_BF16,
                PRECISION,
            )  # fmt: skip

    dk *= sm_scale  # s = scale * q k^T, so dK = scale * dS^T Q
    row0 = _packed_row(off_hk, total_k, k0, off_bkv.to(tl.int64) * LEN_K, VARLEN)
    row0 += cols[:, None]  # rows of the (b * h_kv * len_k) buffers, or packed (h_kv * total_k)
    _store_rows(DK, dk, row0, HEAD_DIM_QK, offs_dqk, k_ok, EMULATE_BF16)
    _store_rows(DV, dv, row0, HEAD_DIM_V, offs_dv, v_ok, EMULATE_BF16)


@triton.jit
def _dq_key_blocks(
    dq, q, do, lse_log2, delta, K, V, M, DBias,
    stride_kn, stride_vn, stride_mm, stride_mn, stride_dbm,
    rows, offs_n, dqk_ok, dv_ok, start, stop, LEN_Q, LEN_K, qk_scale_log2,
    anchor_shift, window_left, window_right, softcap_log2, slope_log2,
    seed, rng_offset, dropout_p, keep_scale, row_ids,
    MASKED: tl.constexpr, HAS_MASK: tl.constexpr, MASK_FLOAT: tl.constexpr,
    MASK_ROWS: tl.constexpr, MASK_GRAD: tl.constexpr, WINDOW_LEFT: tl.constexpr,
    WINDOW_RIGHT: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    EVEN_DQK: tl.constexpr, EVEN_DV: tl.constexpr, BLOCK_N: tl.constexpr,
    EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Accumulate dQ of one query tile over key blocks [start, stop); MASKED as in the forward."""
    for start_n in range(start, stop, BLOCK_N):
        cols = start_n + offs_n
        k = _load_rows(K + cols[:, None] * stride_kn, cols, LEN_K, dqk_ok, MASKED, EVEN_DQK)
        v = _load_rows(V + cols[:, None] * stride_vn, cols, LEN_K, dv_ok, MASKED, EVEN_DV)

        s = dot(q, tl.trans(k), EMULATE_BF16, PRECISION) * qk_scale_log2  # (i, j)
        s, capped = _modify_scores(
            s, rows, cols, anchor_shift, softcap_log2, slope_log2, HAS_SOFTCAP, HAS_ALIBI
        )
        s = _mask_key_block(
            s, M, stride_mm, stride_mn, rows, cols, LEN_Q, LEN_K,
            anchor_shift, window_left, window_right,
            MASKED, HAS_MASK, MASK_FLOAT, MASK_ROWS, WINDOW_LEFT, WINDOW_RIGHT,
        )  # fmt: skip
        p = tl.exp2(s - lse_log2[:, None])

        dp = dot(do, tl.trans(v), EMULATE_BF16, PRECISION)  # (i, j)
        if HAS_DROPOUT:
            keep = _dropout_keep(seed, rng_offset, row_ids, cols, LEN_K, dropout_p)
            dp = _drop(dp, keep, keep_scale)
        ds = p * (dp - delta[:, None])  # gradient w.r.t. the scores, and so the float mask's
        if MASK_GRAD:  # DBias: this (batch, head)'s contiguous (len_q, len_k) float32 slice
            ok = (rows[:, None] < LEN_Q) & (cols[None, :] < LEN_K)
            tl.store(DBias + rows[:, None] * stride_dbm + cols[None, :], ds, mask=ok)
        ds = _softcap_grad(ds, capped, softcap_log2, HAS_SOFTCAP)  # w.r.t. the scaled scores
        dq += dot(round_to(ds, k.dtype, EMULATE_BF16), k, EMULATE_BF16, PRECISION)
    return dq


@triton.jit(do_not_specialize=["seed", "rng_offset"])
def _attn_bwd_dq(
    Q, K, V, Mask, DOut, Lse, Delta, DQ, DBias,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_gb, stride_gh, stride_gm, stride_gd,
    stride_mb, stride_mh, stride_mm, stride_mn,
    H, GROUP, LEN_Q, LEN_K, HEAD_DIM_QK, HEAD_DIM_V, sm_scale, qk_scale_log2,
    anchor_shift, window_left, window_right, softcap_log2, Slopes, stride_sb, stride_sh, Sinks,
    seed, rng_offset, dropout_p, keep_scale, CuSeqlensQ, CuSeqlensK,
    HAS_MASK: tl.constexpr, MASK_FLOAT: tl.constexpr, MASK_ROWS: tl.constexpr,
    MASK_GRAD: tl.constexpr, WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_SINKS: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, EVEN_DQK: tl.constexpr, EVEN_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr, LARGE_OFFSETS: tl.constexpr = False,
    VARLEN: tl.constexpr = False,
):  # fmt: skip
    """One program per query block: holds Q_i, dO_i, accumulates dQ_i over key blocks into DQ,
    contiguous (b, h, len_q, d) (packed: (h, total_q, d)); rows past len_q: see the module."""
    off_bh, off_b, off_h, start_m = program_tile(H, BLOCK_M)
    row_base = off_bh.to(tl.int64) * LEN_Q
    if VARLEN:  # packed sequences: from here on LEN_Q, LEN_K are sequence off_b's own
        Q, K, V, DOut, LEN_Q, LEN_K, anchor_shift, row_base, rng_offset, _, _ = _packed_sequence(
            Q, K, V, DOut, stride_qm, stride_kn, stride_vn, stride_gm, CuSeqlensQ, CuSeqlensK,
            off_b, off_h, H, LEN_Q, LEN_K, rng_offset,
        )  # fmt: skip
        if start_m >= LEN_Q:
            return
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_dqk, offs_dv, dqk_ok, dv_ok = _head_dim_lanes(HEAD_DIM_QK, HEAD_DIM_V, BLOCK_DQK, BLOCK_DV)

    q = _load_rows(
        head_tile(
            Q, off_b, off_h, stride_qb, stride_qh, rows, stride_qm, offs_dqk, stride_qd,
            LARGE_OFFSETS,
        ),
        rows, LEN_Q, dqk_ok, True, EVEN_DQK,
    )  # fmt: skip
    do = _load_rows(
        head_tile(
            DOut, off_b, off_h, stride_gb, stride_gh, rows, stride_gm, offs_dv, stride_gd,
            LARGE_OFFSETS,
        ),
        rows, LEN_Q, dv_ok, True, EVEN_DV,
    )  # fmt: skip
    lse_log2, delta = softmax_stats(Lse, Delta, row_base + rows, rows, LEN_Q, True)

    off_hk = off_h // GROUP  # the key/value head this query head reads (GROUP > 1: GQA)
    k_base, stride_kn = head_rows(
        K, off_b, off_hk, stride_kb, stride_kh, stride_kn, offs_dqk, stride_kd, LARGE_OFFSETS
    )
    v_base, stride_vn = head_rows(
        V, off_b, off_hk, stride_vb, stride_vh, stride_vn, offs_dv, stride_vd, LARGE_OFFSETS
    )
    m_base = Mask + off_b * stride_mb + off_h * stride_mh  # this (batch, head)'s mask
    stride_mm, stride_mn = widen(stride_mm, LARGE_OFFSETS), widen(stride_mn, LARGE_OFFSETS)
    db_base = DBias + row_base * LEN_K  # (only written with MASK_GRAD)
    stride_dbm = widen(LEN_K, LARGE_OFFSETS)  # its row stride

    dq = tl.zeros((BLOCK_M, BLOCK_DQK), dtype=tl.float32)
    slope_log2 = alibi_slope(Slopes, off_b, off_h, stride_sb, stride_sh, HAS_ALIBI)
    ranges = _visible_key_blocks(start_m, LEN_Q, LEN_K, anchor_shift, window_left, window_right,
                                 WINDOW_LEFT, WINDOW_RIGHT, BLOCK_M, BLOCK_N)  # fmt: skip
    for stage in tl.static_range(0 if WINDOW_LEFT else 1, 3):  # the forward's stages
        start, stop = _stage_blocks(stage, ranges)
        dq = _dq_key_blocks(
            dq, q, do, lse_log2, delta, k_base, v_base, m_base, db_base, stride_kn, stride_vn,
            stride_mm, stride_mn, stride_dbm, rows, offs_n, dqk_ok, dv_ok, start, stop,
            LEN_Q, LEN_K, qk_scale_log2, anchor_shift, window_left, window_right, softcap_log2,
            slope_log2, seed, rng_offset, dropout_p, keep_scale, row_base + rows,
            stage != 1, HAS_MASK, MASK_FLOAT, MASK_ROWS, MASK_GRAD, WINDOW_LEFT, WINDOW_RIGHT,
            HAS_SOFTCAP, HAS_ALIBI, HAS_DROPOUT, EVEN_DQK, EVEN_DV, BLOCK_N, EMULATE_BF16,
            PRECISION,
        )  # fmt: skip

    dq *= sm_scale  # dQ = scale * dS K
    dq_ok = (rows[:, None] < LEN_Q) & dqk_ok[None, :]
    _store_rows(DQ, dq, row_base + rows[:, None], HEAD_DIM_QK, offs_dqk, dq_ok, EMULATE_BF16)
