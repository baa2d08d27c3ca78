"""Input checks of flash_attention, all done before anything is launched."""

import math
import numbers

import torch
import triton

from kernels.common.checks import check_rank, check_runnable

MAX_HEAD_DIM = 256  # FlashAttention-2's limit; q/k's and v's head dims each
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_REALS = (numbers.Real, torch.SymFloat, torch.SymInt)  # a float, int or NumPy number; traced


def check_inputs(
    q, k, v, attn_mask, scale, enable_gqa=False, *, caller="flash_attention", scale_name="scale"
):
    """Validate everything before a launch (raises on the first problem found). ``caller``
    and ``scale_name``: the function and the scale's argument name the errors give (the FA2
    API checks its own layout first: the shape errors here speak of (b, h, len, d))."""
    check_rank(caller, 4, "(batch, heads, len, head_dim)", q=q, k=k, v=v)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(
            f"{caller}: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if q.dtype not in _DTYPES:
        raise TypeError(f"{caller}: dtype {q.dtype} is not supported; use one of {_DTYPES}")
    if not (q.device == k.device == v.device):
        raise ValueError(
            f"{caller}: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}"
        )
    b, h, _, d = q.shape
    h_kv = k.shape[1]
    if k.shape[0] != b or v.shape[0] != b or v.shape[1] != h_kv:
        raise ValueError(
            f"{caller}: q, k, v must share the batch, and k, v the heads; got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if h_kv != h and not enable_gqa:
        raise ValueError(
            f"{caller}: q has {h} heads and k, v have {h_kv}; pass enable_gqa=True for "
            "grouped-query attention"
        )
    if h_kv != h and (h_kv == 0 or h % h_kv):
        raise ValueError(
            f"{caller}: grouped-query attention needs the k/v heads ({h_kv}) to divide "
            f"the query heads ({h})"
        )
    if k.shape[2] != v.shape[2]:
        raise ValueError(
            f"{caller}: k and v must have the same length, got {k.shape[2]} and {v.shape[2]}"
        )
    if k.shape[3] != d:
        raise ValueError(f"{caller}: q and k head dims differ ({d} vs {k.shape[3]})")
    for name, n in (("q/k head dim", d), ("v head dim", v.shape[3])):
        if not 1 <= n <= MAX_HEAD_DIM:
            raise ValueError(
                f"{caller}: {name} {n} is not supported (1 to {MAX_HEAD_DIM}; v's may "
                "differ from q's and k's)"
            )
    if scale is not None:
        real = isinstance(scale, _REALS) and not isinstance(scale, bool)
        if not (real or _is_real_scalar_tensor(scale)):
            raise TypeError(
                f"{caller}: {scale_name} must be a real number (or a one-element real tensor) or "
                f"None, got {type(scale).__name__} {scale!r:.40}"
            )
        if isinstance(scale, torch.Tensor) and scale.requires_grad:
            raise TypeError(
                f"{caller}: {scale_name} gets no gradient (it is read as a float, as SDPA's); "
                "pass a float or a detached tensor"
            )
        if not math.isfinite(float(scale)):
            raise ValueError(f"{caller}: {scale_name} must be finite, got {scale}")
    if attn_mask is not None:
        _mask_layout(attn_mask, q, k)  # raises on a bad mask
    check_runnable(q.device, caller)


def _is_real_scalar_tensor(scale):
    return (
        isinstance(scale, torch.Tensor)
        and scale.numel() == 1
        and not scale.dtype.is_complex
        and scale.device.type != "meta"
    )


def _block_d(head_dim):
    """The head dim padded to a power of two, at least 16 (tl.dot wants every dimension >= 16)."""
    return max(16, triton.next_power_of_2(head_dim))


def _mask_layout(attn_mask, q, k):
    """attn_mask seen as 4-D (b|1, h|1, len_q|1, len_k|1) and its four strides, 0 on every axis
    it broadcasts over, so the kernels read the caller's tensor as it is.

    SDPA's reading: the mask broadcasts to (batch, heads, len_q, len_k) from the right, so a
    2-D mask is (len_q, len_k) and a (batch, len_k) key padding mask is passed as
    ``mask[:, None, None, :]``. Boolean: True = the pair takes part; float: added to the scores.
    """
    if not isinstance(attn_mask, torch.Tensor):
        raise TypeError(f"flash_attention: attn_mask must be a torch.Tensor, got {type(attn_mask)}")
    if attn_mask.dtype != torch.bool and attn_mask.dtype not in _DTYPES:
        raise TypeError(
            "flash_attention: attn_mask must be torch.bool (True = takes part) or one of "
            f"{_DTYPES} (added to the scores), got {attn_mask.dtype}"
        )
    if attn_mask.device != q.device:
        raise ValueError(
            f"flash_attention: attn_mask is on {attn_mask.device}, the inputs on {q.device}"
        )
    b, h, len_q, _ = q.shape
    full = (b, h, len_q, k.shape[2])
    shape = tuple(attn_mask.shape)
    if not 1 <= len(shape) <= 4 or any(
        m not in (1, f) for m, f in zip(reversed(shape), reversed(full), strict=False)
    ):
        raise ValueError(
            f"flash_attention: attn_mask of shape {shape} does not broadcast to (batch, heads, "
            f"len_q, len_k) = {full}. As in F.scaled_dot_product_attention it broadcasts from "
            "the right: a 2-D mask is (len_q, len_k); pass a (batch, len_k) key padding mask "
            "as mask[:, None, None, :]."
        )
    mask = attn_mask[(None,) * (4 - len(shape))]  # a view: leading axes of size 1
    return mask, tuple(0 if mask.shape[i] == 1 else mask.stride(i) for i in range(4))
