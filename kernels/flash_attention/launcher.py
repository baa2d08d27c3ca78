"""Host side of flash attention: the outputs allocated, each kernel's arguments built once per
call, every pass launched with its tuned configuration (:mod:`kernels.common`)."""

import torch
import triton

from kernels.common import runtime, tuning
from kernels.common.delta import launch_delta
from kernels.common.jit import LOG2_E, needs_int64_offsets
from kernels.flash_attention import configs
from kernels.flash_attention.backward import _attn_bwd_dkdv, _attn_bwd_dq
from kernels.flash_attention.checks import _block_d, _mask_layout
from kernels.flash_attention.dropout import NO_DROPOUT
from kernels.flash_attention.forward import _attn_fwd
from kernels.flash_attention.options import PLAIN
from kernels.flash_attention.varlen import rows_view


def _launch_pass(kernel, name, q, k, meta, args, packed=None):
    """Launch one pass with the configuration tuned for it. ``name``: its launch table ("fwd",
    "dq", "dq_bias", "dkdv"). Grid axis 0 is batch x heads (the key/value heads for the dK/dV
    pass, which loops over each GQA group), axis 1 the blocks of the rows a program owns:
    queries, or keys for the dK/dV pass; of the longest sequence with ``packed`` ones."""
    b, h, len_q, _ = q.shape
    h_kv, len_k = k.shape[1], k.shape[2]
    if packed is not None:
        len_q, len_k = packed.max_seqlen_q, packed.max_seqlen_k
    candidates = configs.for_kernel(name, q, _widest(meta), meta["HAS_DROPOUT"])
    heads, rows = (h_kv, len_k) if name == "dkdv" else (h, len_q)

    def grid(config):
        block = config.block_n if name == "dkdv" else config.block_m
        return runtime.grid(b * heads, triton.cdiv(rows, block))

    key = tuning.tuning_key(name, q, meta, len_q, len_k, group=_group(q, k))
    tuning.launch_tuned(kernel, key, candidates, grid, args, meta)


def _group(q, k):
    """Query heads per key/value head (1 without grouped-query attention)."""
    return q.shape[1] // max(k.shape[1], 1)


def _sizes(q, k, v):
    """The sizes every attention kernel takes: H, the GQA group, LEN_Q, LEN_K, d, d_v."""
    return q.shape[1], _group(q, k), q.shape[2], k.shape[2], q.shape[3], v.shape[3]


def _widest(meta):
    """The head-dim width that picks the launch table and bounds the shared-memory estimate:
    the wider of q/k's and v's padded head dims. Each kernel holds one tile of each width
    (q or k, and v or dO) and one float32 accumulator of one of them, so a table measured to
    fit at d = d_v = the wider one fits the narrower mix too (an upper bound, like the
    estimate itself); equal head dims read the tables as before."""
    return max(meta["BLOCK_DQK"], meta["BLOCK_DV"])


def _dropout_args(dropout, packed=None):
    """The kernels' dropout arguments (seed, rng_offset, dropout_p, keep_scale), and the
    cumulative lengths of packed sequences (CuSeqlensQ, CuSeqlensK; None without)."""
    cu_seqlens = (None, None) if packed is None else packed[:2]
    return dropout.seed, dropout.offset, dropout.p, dropout.keep_scale, *cu_seqlens


def output_buffer(q, value_dim):
    """out (b, h, len_q, value_dim), laid out in memory as q is: (b, h, len_q, d_v) when q is,
    else (b, len_q, h, d_v) when q's heads vary faster than its positions (a transposed
    (b, len_q, h, d) tensor, FlashAttention's layout), as SDPA's flash backend does, so that a
    caller who transposes back gets a contiguous tensor."""
    b, h, len_q, _ = q.shape
    if q.stride(1) < q.stride(2):
        return runtime.empty((b, len_q, h, value_dim), q.dtype, q.device).transpose(1, 2)
    return runtime.empty((b, h, len_q, value_dim), q.dtype, q.device)


def _score_args(q, k, is_causal, options, packed):
    """(the kernels' score arguments, their constexprs): the anchor shift and the window's
    edges (causality is right = 0; -1 where unbounded), the softcap in log2 units (0: off),
    the ALiBi slopes with their (batch, head) strides, the sinks (float32). Every pass takes
    them; the sinks only the forward reads. The anchor shift is 0 where nothing reads it (no
    causality, window or ALiBi), and with ``packed`` sequences, whose programs take their own
    sequence's shift from the cumulative lengths: Triton specialises an int argument on its
    value (1, a multiple of 16, other), so an unread shift of len_k - len_q would compile one
    more kernel for the same code, one the training warm-up cannot foresee from the lengths
    alone."""
    len_q, len_k = q.shape[2], k.shape[2]
    left, right = options.edges(len_q, len_k, is_causal)
    slopes, sinks = options.alibi_slopes, options.sinks
    anchor_read = packed is None and (left >= 0 or right >= 0 or slopes is not None)
    shift = options.anchor_shift(len_q, len_k) if anchor_read else 0
    dummy = torch.empty(1, dtype=torch.float32, device=q.device)
    slope_args = (dummy, 0, 0) if slopes is None else (slopes, *slopes.stride())
    sinks = dummy if sinks is None else sinks.detach().to(torch.float32).contiguous()
    args = (
        shift, left, right, options.softcap * LOG2_E.value,
        *slope_args, sinks,
    )  # fmt: skip
    meta = dict(
        WINDOW_LEFT=left >= 0,
        WINDOW_RIGHT=right >= 0,
        HAS_SOFTCAP=options.softcap > 0.0,
        HAS_ALIBI=slopes is not None,
        HAS_SINKS=options.sinks is not None,
    )
    return args, meta


def launch_forward(
    q, k, v, attn_mask, is_causal, scale, dropout=NO_DROPOUT, options=PLAIN, packed=None
):  # fmt: skip
    """(out, lse): out (b, h, len_q, d_v) (:func:`output_buffer`), lse (b, h, len_q); with
    ``packed`` sequences (a varlen.Packed; q, k, v (total, h, d)), out (total_q, h, d_v) and
    lse (h, total_q)."""
    if packed is not None:
        packed_out = runtime.empty((*q.shape[:2], v.shape[2]), q.dtype, q.device)
        q, k, v, out = (packed.view(t) for t in (q, k, v, packed_out))
        lse = runtime.empty((q.shape[1], q.shape[2]), torch.float32, q.device)
    else:
        out = output_buffer(q, v.shape[3])
        lse = runtime.empty(q.shape[:3], torch.float32, q.device)
    d = q.shape[3]
    mask, mask_strides, mask_meta = _kernel_mask(attn_mask, q, k)
    score_args, score_meta = _score_args(q, k, is_causal, options, packed)
    args = (
        q, k, v, mask, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *mask_strides,
        *_sizes(q, k, v), scale * LOG2_E.value, *score_args, *_dropout_args(dropout, packed),
    )  # fmt: skip
    meta = _meta(mask_meta, score_meta, dropout, d, v.shape[3], q.dtype, packed)
    meta["LARGE_OFFSETS"] = needs_int64_offsets(q, k, v, mask, out)
    _launch_pass(_attn_fwd, "fwd", q, k, meta, args, packed)
    return (out, lse) if packed is None else (packed_out, lse)


def launch_backward(
    q, k, v, attn_mask, is_causal, scale, out, lse, dout, dlse, mask_grad, dropout=NO_DROPOUT,
    options=PLAIN, packed=None,
):  # fmt: skip
    """(dq, dk, dv, dmask, dsinks): dmask, the float mask's gradient in its shape, only with
    mask_grad (else an empty tensor); dsinks, the sinks' gradient, with sinks (else empty).
    ``dropout`` and ``options`` must be the forward's (dropout regenerates its mask).
    ``packed``: the forward's packed sequences (then dq, dk, dv are packed like q, k, v)."""
    rows = (out, dout)  # what the delta pass reads: (b, h, len_q, d_v), or (1, h, total_q, d_v)
    if packed is not None:
        rows = (rows_view(out), rows_view(dout))
        q, k, v, out, dout = (packed.view(t) for t in (q, k, v, out, dout))
    b, h, len_q, d = q.shape
    len_k = k.shape[2]
    mask, mask_strides, mask_meta = _kernel_mask(attn_mask, q, k)
    score_args, score_meta = _score_args(q, k, is_causal, options, packed)
    meta = _meta(mask_meta, score_meta, dropout, d, v.shape[3], q.dtype, packed)
    meta["LARGE_OFFSETS"] = needs_int64_offsets(q, k, v, mask, out, dout)
    if dlse is None:
        dlse = torch.zeros(rows[0].shape[:3], dtype=torch.float32, device=q.device)
    dlse = dlse.to(torch.float32).reshape(rows[0].shape[:3]).contiguous()
    delta = launch_delta(*rows, dlse, meta["BLOCK_DV"], meta["LARGE_OFFSETS"])

    def pass_args(*gradients):
        """The dK/dV and dQ passes' arguments: they differ only in the buffers they write."""
        return (
            q, k, v, mask, dout, lse, delta, *gradients,
            *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *mask_strides,
            *_sizes(q, k, v), scale, scale * LOG2_E.value, *score_args,
            *_dropout_args(dropout, packed),
        )  # fmt: skip

    dk = _gradient_buffer(k, packed)  # (b, h_kv, len_k, d), or packed (h_kv, total_k, d)
    dv = _gradient_buffer(v, packed)  # (b, h_kv, len_k, d_v), or packed (h_kv, total_k, d_v)
    _launch_pass(_attn_bwd_dkdv, "dkdv", q, k, meta, pass_args(dk, dv), packed)
    if packed is not None:
        dq = _gradient_buffer(q, packed)
        _launch_pass(_attn_bwd_dq, "dq", q, k, {**meta, "MASK_GRAD": False}, pass_args(dq, lse))
        dsinks = _sinks_grad(options.sinks, lse, delta)  # lse (h, total_q) broadcasts too
        return *(g.transpose(0, 1) for g in (dq, dk, dv)), q.new_empty(0), dsinks
    mask_grad = bool(mask_grad and mask_meta["MASK_FLOAT"])
    # A row-constant mask leaves P unchanged -- unless a sink, which it does not move, shares
    # the row's denominator.
    key_constant = mask_grad and _broadcasts_over_keys(attn_mask) and options.sinks is None
    in_kernel = mask_grad and not key_constant  # the dQ pass writes dS, the mask's gradient
    # dS of every (query, key) pair, the float mask's gradient before its broadcast axes are
    # summed: zeros, as the dQ pass skips the key blocks a query tile cannot see.
    dbias = torch.zeros((b, h, len_q, len_k) if in_kernel else (1,), device=q.device)
    dq = runtime.empty((b, h, len_q, d), q.dtype, q.device)
    name = "dq_bias" if in_kernel else "dq"
    large = meta["LARGE_OFFSETS"] or needs_int64_offsets(dbias)
    dq_meta = {**meta, "MASK_GRAD": in_kernel, "LARGE_OFFSETS": large}
    _launch_pass(_attn_bwd_dq, name, q, k, dq_meta, pass_args(dq, dbias))
    dsinks = _sinks_grad(options.sinks, lse, delta)
    if key_constant:
        return dq, dk, dv, _key_constant_mask_grad(lse, dlse, attn_mask), dsinks
    if in_kernel:
        return dq, dk, dv, _sum_to_mask(dbias, attn_mask), dsinks
    return dq, dk, dv, (attn_mask if attn_mask is not None else q).new_empty(0), dsinks


def _sinks_grad(sinks, lse, delta):
    """The sinks' gradient (h,), or an empty tensor without sinks.

    A sink's probability in row i is p_i = exp(sink - lse_i); it scales every other
    probability of the row by (1 - p_i), so d out_i / d sink = -p_i out_i and
    d lse_i / d sink = p_i: the gradient is -sum_i p_i (dO_i . out_i - dlse_i) = -sum_i p_i
    delta_i, with the backward's own delta (:mod:`kernels.common.delta`), summed over the
    batch and the rows of each head.
    """
    if sinks is None:
        return lse.new_empty(0)
    p_sink = torch.exp(sinks.detach().float()[None, :, None] - lse)  # (b, h, i)
    return (-(p_sink * delta).sum(dim=(0, 2))).to(sinks.dtype)


def _gradient_buffer(x, packed):
    """The buffer a backward pass writes x's gradient to: contiguous (b, h, len, d) like x, or
    for packed sequences (h, total, d), the kernels' packed rows (transposed back to x's
    (total, h, d) once written)."""
    return runtime.empty(x.shape if packed is None else x.shape[1:], x.dtype, x.device)


def _broadcasts_over_keys(attn_mask):
    """Whether the mask holds one value per query row (its key axis has size 1)."""
    return attn_mask.dim() >= 1 and attn_mask.shape[-1] == 1


def _key_constant_mask_grad(lse, dlse, attn_mask):
    """The exact gradient of a mask that adds one constant c_i to every score of query row i.

    The softmax does not see c_i (P, and so out, is unchanged, dropout or not), and lse_i moves
    by exactly c_i: the gradient is dlse_i for a row that sees a key and 0 for one that sees
    none, summed over the mask's broadcast axes. Summing the kernel's dS over the keys instead
    would give the same up to rounding -- but delta = rowsum(dO * O) is taken from the rounded
    16-bit output, so each row's sum of dS carries an error of that rounding, and a mask
    broadcast over many rows adds them up (a (1, 1) float16 mask over 320 rows: 4e-3 where the
    true gradient is 0).
    """
    grad = torch.where(lse == float("-inf"), 0.0, dlse)[..., None]  # (b, h, len_q, 1)
    return _sum_to_mask(grad, attn_mask)


def _sum_to_mask(dbias, attn_mask):
    """The (b, h, len_q, len_k) gradient summed over the axes the mask broadcasts over, in the
    mask's shape and dtype."""
    mask4_shape = (1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape)
    axes = [i for i in range(4) if mask4_shape[i] == 1 and dbias.shape[i] != 1]
    summed = dbias.sum(dim=axes, keepdim=True) if axes else dbias
    return summed.reshape(attn_mask.shape).to(attn_mask.dtype)


def _kernel_mask(attn_mask, q, k):
    """(what the kernels read, its four strides, the mask's constexprs): a boolean mask as
    uint8 (Triton reads bytes), a float one as it is; a dummy when there is none."""
    if attn_mask is None:
        dummy = torch.empty(1, dtype=torch.uint8, device=q.device)
        return dummy, (0, 0, 0, 0), dict(HAS_MASK=False, MASK_FLOAT=False, MASK_ROWS=False)
    mask, strides = _mask_layout(attn_mask, q, k)
    is_float = mask.is_floating_point()
    meta = dict(HAS_MASK=True, MASK_FLOAT=is_float, MASK_ROWS=mask.shape[2] != 1)
    return (mask if is_float else mask.view(torch.uint8)), strides, meta


def _precision(dtype):
    """How tl.dot multiplies: for float32, "tf32x3" on a GPU (three TF32 tensor-core products
    that recover float32 accuracy; plain FMA products ("ieee") need too many registers to tile
    well and spilled in every configuration the compile gate tried) and "ieee" under the
    interpreter, whose numpy products are exact anyway; for 16-bit inputs the setting does not
    apply ("tf32" is Triton's default)."""
    if dtype != torch.float32:
        return "tf32"
    return "ieee" if runtime.INTERPRETED else "tf32x3"


def _meta(mask_meta, score_meta, dropout, head_dim, value_head_dim, dtype, packed=None):
    """The constexprs every attention kernel takes, apart from its block sizes: q/k's head dim
    padded to BLOCK_DQK, v's (and out's) to BLOCK_DV. Without dropout (p == 0)
    HAS_DROPOUT=False compiles no dropout code at all; VARLEN only with packed sequences."""
    block_dqk, block_dv = _block_d(head_dim), _block_d(value_head_dim)
    varlen = {} if packed is None else {"VARLEN": True}  # padded calls compile as before
    return dict(
        **mask_meta,
        **varlen,
        **score_meta,
        HAS_DROPOUT=dropout.p > 0.0,
        EVEN_DQK=block_dqk == head_dim,
        EVEN_DV=block_dv == value_head_dim,
        BLOCK_DQK=block_dqk,
        BLOCK_DV=block_dv,
        EMULATE_BF16=runtime.emulate_bf16(dtype),
        PRECISION=_precision(dtype),
    )
