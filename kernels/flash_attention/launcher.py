"""Host side: allocate the outputs, pick launch configurations, launch the kernels."""

import torch
import triton

from kernels import launch
from kernels.common.jit import DELTA_ROWS, LOG2_E, attn_bwd_delta, needs_int64_offsets
from kernels.flash_attention import configs
from kernels.flash_attention.backward import _attn_bwd_dkdv, _attn_bwd_dq
from kernels.flash_attention.checks import _block_d, _mask_layout
from kernels.flash_attention.dropout import NO_DROPOUT
from kernels.flash_attention.forward import _attn_fwd
from kernels.flash_attention.tiles import _INTERPRETED


def _empty(shape, dtype, device):
    """Every buffer the launchers hand to a kernel comes from here (tests poison it with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _launch(kernel, grid, *args, **meta):
    """Every kernel launch goes through here (the compile gate captures them); returns Triton's
    compiled kernel (None for an empty grid, which is not launchable and has nothing to do)."""
    if not launch.is_empty(grid):
        return kernel[grid](*args, **meta)
    return None


def _configs(kernel_name, q, block_d, dropout=False):
    """The launch configurations to choose from (tests replace this to force block sizes);
    block_d: the wider of the two padded head dims (see _widest); dropout: HAS_DROPOUT."""
    return configs.for_kernel(kernel_name, q, block_d, dropout)


def _tuned_launch(kernel, name, q, k, block_d, meta, grid_rows, args):
    """Launch ``kernel`` with the best config for this shape; grid axis 0 = batch x heads
    (key/value heads for the dK/dV pass, query heads otherwise), grid_rows(config) = the blocks
    of rows (grid axis 1). An empty grid returns at once: nothing to run, nothing to tune (its
    length bucket is a one-token call's)."""
    b, h, len_q, _ = q.shape
    heads = k.shape[1] if name == "dkdv" else h
    candidates = _configs(name, q, block_d, meta["HAS_DROPOUT"])
    if launch.is_empty((b * heads, grid_rows(candidates[0]))):
        return

    def run(config):
        grid = launch.grid(b * heads, grid_rows(config))
        return _launch(kernel, grid, *args, **meta, **config.meta())

    key = (name, q.device.index, q.dtype, block_d, tuple(sorted(meta.items())),
           launch.length_bucket(len_q), launch.length_bucket(k.shape[2]))  # fmt: skip
    run(launch.pick(key, candidates, run))


def _widest(meta):
    """The head-dim width that picks the launch table and bounds the shared-memory estimate:
    the wider of q/k's and v's padded head dims. Each kernel holds one tile of each width
    (q or k, and v or dO) and one float32 accumulator of one of them, so a table measured to
    fit at d = d_v = the wider one fits the narrower mix too (an upper bound, like the
    estimate itself); equal head dims read the tables as before."""
    return max(meta["BLOCK_DQK"], meta["BLOCK_DV"])


def _dropout_args(dropout):
    """The kernels' dropout arguments (seed, rng_offset, dropout_p, keep_scale)."""
    return dropout.seed, dropout.offset, dropout.p, dropout.keep_scale


def _forward(q, k, v, attn_mask, is_causal, scale, dropout=NO_DROPOUT):
    b, h, len_q, d = q.shape
    len_k, d_v = k.shape[2], v.shape[3]
    out = _empty((b, h, len_q, d_v), q.dtype, q.device)
    lse = _empty((b, h, len_q), torch.float32, q.device)
    mask, mask_strides, mask_meta = _kernel_mask(attn_mask, q, k)
    args = (
        q, k, v, mask, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *mask_strides,
        h, h // max(k.shape[1], 1), len_q, len_k, d, d_v, scale * LOG2_E.value,
        *_dropout_args(dropout),
    )  # fmt: skip
    meta = _meta(mask_meta, is_causal, dropout, d, d_v, q.dtype)
    meta["LARGE_OFFSETS"] = needs_int64_offsets(q, k, v, mask, out)
    _tuned_launch(
        _attn_fwd, "fwd", q, k, _widest(meta), meta, lambda c: triton.cdiv(len_q, c.block_m), args
    )
    return out, lse


def _backward(
    q, k, v, attn_mask, is_causal, scale, out, lse, dout, dlse, mask_grad, dropout=NO_DROPOUT
):  # fmt: skip
    """(dq, dk, dv, dmask): dmask, the float mask's gradient in its shape, only with mask_grad
    (else an empty tensor). ``dropout`` must be the forward's (it regenerates its mask)."""
    b, h, len_q, d = q.shape
    len_k, d_v = k.shape[2], v.shape[3]
    mask, mask_strides, mask_meta = _kernel_mask(attn_mask, q, k)
    meta = _meta(mask_meta, is_causal, dropout, d, d_v, q.dtype)
    meta["LARGE_OFFSETS"] = needs_int64_offsets(q, k, v, mask, out, dout)
    block_d = _widest(meta)
    if dlse is None:
        dlse = torch.zeros((b, h, len_q), dtype=torch.float32, device=q.device)
    dlse = dlse.to(torch.float32).contiguous()

    delta = _empty((b, h, len_q), torch.float32, q.device)
    _launch(
        attn_bwd_delta, launch.grid(b * h, triton.cdiv(len_q, DELTA_ROWS)),
        out, dout, dlse, delta, *out.stride(), *dout.stride(), h, len_q, d_v,
        BLOCK_M=DELTA_ROWS, BLOCK_D=meta["BLOCK_DV"], LARGE_OFFSETS=meta["LARGE_OFFSETS"],
    )  # fmt: skip
    dk = _empty(k.shape, q.dtype, q.device)  # (b, h_kv, len_k, d)
    dv = _empty(v.shape, q.dtype, q.device)  # (b, h_kv, len_k, d_v)
    common = (*q.stride(), *k.stride(), *v.stride(), *dout.stride(), *mask_strides)
    sizes = (h, h // max(k.shape[1], 1), len_q, len_k, d, d_v, scale, scale * LOG2_E.value,
             *_dropout_args(dropout))  # fmt: skip
    args = (q, k, v, mask, dout, lse, delta, dk, dv, *common, *sizes)
    _tuned_launch(
        _attn_bwd_dkdv, "dkdv", q, k, block_d, meta, lambda c: triton.cdiv(len_k, c.block_n), args
    )
    dq = _empty((b, h, len_q, d), q.dtype, q.device)
    mask_grad = bool(mask_grad and mask_meta["MASK_FLOAT"])
    if mask_grad and _broadcasts_over_keys(attn_mask):
        dq_args = (q, k, v, mask, dout, lse, delta, dq, torch.zeros(1, device=q.device))
        _tuned_launch(
            _attn_bwd_dq, "dq", q, k, block_d, {**meta, "MASK_GRAD": False},
            lambda c: triton.cdiv(len_q, c.block_m), (*dq_args, *common, *sizes),
        )  # fmt: skip
        return dq, dk, dv, _key_constant_mask_grad(lse, dlse, attn_mask)
    # dS of every (query, key) pair, the float mask's gradient before its broadcast axes are
    # summed: zeros, as the dQ pass skips the key blocks a causal query tile cannot see.
    dbias = torch.zeros((b, h, len_q, len_k) if mask_grad else (1,), device=q.device)
    args = (q, k, v, mask, dout, lse, delta, dq, dbias, *common, *sizes)
    large = meta["LARGE_OFFSETS"] or needs_int64_offsets(dbias)
    _tuned_launch(
        _attn_bwd_dq, "dq_bias" if mask_grad else "dq", q, k, block_d,
        {**meta, "MASK_GRAD": mask_grad, "LARGE_OFFSETS": large},
        lambda c: triton.cdiv(len_q, c.block_m), args,
    )  # fmt: skip
    dmask = attn_mask.new_empty(0) if attn_mask is not None else q.new_empty(0)
    if mask_grad:
        dmask = _sum_to_mask(dbias, attn_mask)
    return dq, dk, dv, dmask


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
    return "ieee" if _INTERPRETED else "tf32x3"


def _meta(mask_meta, is_causal, dropout, head_dim, value_head_dim, dtype):
    """The constexprs every attention kernel takes, apart from its block sizes: q/k's head dim
    padded to BLOCK_DQK, v's (and out's) to BLOCK_DV. Without dropout (p == 0)
    HAS_DROPOUT=False compiles no dropout code at all."""
    block_dqk, block_dv = _block_d(head_dim), _block_d(value_head_dim)
    return dict(
        **mask_meta,
        IS_CAUSAL=bool(is_causal),
        HAS_DROPOUT=dropout.p > 0.0,
        EVEN_DQK=block_dqk == head_dim,
        EVEN_DV=block_dv == value_head_dim,
        BLOCK_DQK=block_dqk,
        BLOCK_DV=block_dv,
        EMULATE_BF16=_INTERPRETED and dtype == torch.bfloat16,
        PRECISION=_precision(dtype),
    )
