"""Buffers and launches of the additive kernels; every launch goes through ``_launch``."""

import torch
import triton

from kernels import launch
from kernels.additive_attention.backward import _additive_bwd_dkdv, _additive_bwd_dq
from kernels.additive_attention.checks import CALLER
from kernels.additive_attention.configs import _configs
from kernels.additive_attention.forward import _additive_fwd
from kernels.additive_attention.tiles import _INTERPRETED
from kernels.common.jit import DELTA_ROWS, attn_bwd_delta, needs_int64_offsets
from kernels.flash_attention.checks import _kernel_key_mask


def _empty(shape, dtype, device):
    """Every buffer the launchers hand to a kernel comes from here (tests poison it with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


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
    meta["LARGE_OFFSETS"] = needs_int64_offsets(qf, kf, w, v, mask, out)
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
    dqf = _empty((b, h, len_q, a), qf.dtype, v.device)
    dkf = _empty((b, h, len_k, a), kf.dtype, v.device)
    dv = _empty((b, h, len_k, value_dim), v.dtype, v.device)
    meta["LARGE_OFFSETS"] = needs_int64_offsets(qf, kf, w, v, mask, out, dout, dqf, dkf, dv)
    delta = _empty((b, h, len_q), torch.float32, v.device)
    _launch(
        attn_bwd_delta, launch.grid(b * h, triton.cdiv(len_q, DELTA_ROWS)),
        out, dout, dlse, delta, *out.stride(), *dout.stride(), h, len_q, value_dim,
        BLOCK_M=DELTA_ROWS, BLOCK_D=block_e, LARGE_OFFSETS=meta["LARGE_OFFSETS"],
    )  # fmt: skip

    def run_dq(config):
        return _launch(
            _additive_bwd_dq, launch.grid(b * h, triton.cdiv(len_q, config.block_m)),
            qf, kf, w, v, mask, dout, lse, delta, dqf, *common,
            **meta, BLOCK_A=block_a, **config.meta(),
        )  # fmt: skip

    _tuned_launch(_additive_bwd_dq, run_dq, v, block_a, block_e, meta, len_q, len_k, rows=len_q)

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
