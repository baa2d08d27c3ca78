"""Host side of the additive kernels: the outputs allocated, each kernel's arguments built once
per call, every pass launched with its tuned configuration (:mod:`kernels.common`)."""

import torch
import triton

from kernels.additive_attention import configs
from kernels.additive_attention.backward import _additive_bwd_dkdv, _additive_bwd_dq
from kernels.additive_attention.checks import CALLER
from kernels.additive_attention.forward import _additive_fwd
from kernels.common import runtime, tuning
from kernels.common.checks import kernel_key_mask
from kernels.common.delta import launch_delta
from kernels.common.jit import needs_int64_offsets


def _launch_pass(kernel, v, meta, len_q, len_k, block_a, args, keys=False):
    """Launch one kernel with the configuration tuned for it; the config (None for an empty
    grid). Grid axis 0 is batch x heads, axis 1 the blocks of query rows (of key rows with
    ``keys``, the dK/dV pass). ``block_a`` (the feature size's padding) changes the work of a
    program, so it is part of the tuning key."""
    name = kernel.__name__
    b, h = v.shape[:2]

    def grid(config):
        rows, block = (len_k, config.block_n) if keys else (len_q, config.block_m)
        return runtime.grid(b * h, triton.cdiv(rows, block))

    key = tuning.tuning_key(name, v, meta, len_q, len_k, block_a=block_a)
    return tuning.launch_tuned(kernel, key, configs.for_kernel(name, v.dtype), grid, args, meta)


def _meta(attn_mask, is_causal, block_e, dtype):
    """The constexprs every additive kernel takes, apart from its block sizes."""
    return dict(
        HAS_MASK=attn_mask is not None,
        IS_CAUSAL=bool(is_causal),
        BLOCK_E=block_e,
        EMULATE_BF16=runtime.emulate_bf16(dtype),
        # fp32 inputs get exact products (TF32 would be far less accurate than PyTorch's fp32).
        PRECISION="ieee" if dtype == torch.float32 else "tf32",
    )


def launch_forward(qf, kf, w, v, attn_mask, is_causal, block_a, block_e):
    b, h, len_q, _ = qf.shape
    len_k, value_dim = v.shape[2], v.shape[3]
    out = runtime.empty((b, h, len_q, value_dim), v.dtype, v.device)
    lse = runtime.empty((b, h, len_q), torch.float32, v.device)
    mask, mask_strides = kernel_key_mask(attn_mask, qf, kf, CALLER)
    meta = _meta(attn_mask, is_causal, block_e, v.dtype)
    meta["LARGE_OFFSETS"] = needs_int64_offsets(qf, kf, w, v, mask, out)
    args = (
        qf, kf, w, v, mask, out, lse,
        *qf.stride(), *kf.stride(), *w.stride(), *v.stride(), *out.stride(), *mask_strides,
        h, len_q, len_k, qf.shape[3], value_dim,
    )  # fmt: skip
    _launch_pass(_additive_fwd, v, meta, len_q, len_k, block_a, args)
    return out, lse


def launch_backward(qf, kf, w, v, attn_mask, is_causal, block_a, block_e, out, lse, dout, dlse):
    b, h, len_q, a = qf.shape
    len_k, value_dim = v.shape[2], v.shape[3]
    mask, mask_strides = kernel_key_mask(attn_mask, qf, kf, CALLER)
    if dlse is None:
        dlse = torch.zeros((b, h, len_q), dtype=torch.float32, device=v.device)
    dlse = dlse.to(torch.float32).contiguous()
    dqf = runtime.empty((b, h, len_q, a), qf.dtype, v.device)
    dkf = runtime.empty((b, h, len_k, a), kf.dtype, v.device)
    dv = runtime.empty((b, h, len_k, value_dim), v.dtype, v.device)
    meta = {**_meta(attn_mask, is_causal, block_e, v.dtype), "BLOCK_A": block_a}
    meta["LARGE_OFFSETS"] = needs_int64_offsets(qf, kf, w, v, mask, out, dout, dqf, dkf, dv)
    delta = launch_delta(out, dout, dlse, block_e, meta["LARGE_OFFSETS"])

    def pass_args(*gradients):
        """The dQf and dK/dV passes' arguments: they differ only in the buffers they write."""
        return (
            qf, kf, w, v, mask, dout, lse, delta, *gradients,
            *qf.stride(), *kf.stride(), *w.stride(), *v.stride(), *dout.stride(), *mask_strides,
            h, len_q, len_k, a, value_dim,
        )  # fmt: skip

    _launch_pass(_additive_bwd_dq, v, meta, len_q, len_k, block_a, pass_args(dqf))

    partials = {}  # per config: dw summed over each key block, (b, h, key blocks, a)

    def dkdv_args(config):
        key_blocks = triton.cdiv(len_k, config.block_n)
        partials[config] = runtime.empty((b, h, key_blocks, a), torch.float32, v.device)
        return pass_args(dkf, dv, partials[config])

    config = _launch_pass(_additive_bwd_dkdv, v, meta, len_q, len_k, block_a, dkdv_args, keys=True)
    if config is None:  # no keys (or no batch): dw is an empty sum
        return dqf, dkf, torch.zeros_like(w), dv
    dw = partials[config].sum(dim=(0, 2)).to(w.dtype)  # (h, a): summed over batch and key blocks
    return dqf, dkf, dw, dv
