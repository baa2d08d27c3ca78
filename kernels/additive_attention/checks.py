"""Input checks of additive_attention, all done before anything is launched, and the paddings."""

import torch
import triton

from kernels.common.checks import check_rank, check_runnable, key_mask_strides

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
CALLER = "additive_attention"  # how errors name this kernel
MAX_VALUE_DIM = 128
MAX_FEATURES = 128


def check_inputs(query_features, key_features, score_weight, v, attn_mask):
    """Validate everything before a launch; returns (BLOCK_A, BLOCK_E), the paddings."""
    check_rank(CALLER, 4, "(batch, heads, len_q, a)", query_features=query_features)
    check_rank(CALLER, 4, "(batch, heads, len_k, a)", key_features=key_features)
    check_rank(CALLER, 2, "(heads, a)", score_weight=score_weight)
    check_rank(CALLER, 4, "(batch, heads, len_k, value_dim)", v=v)
    qf, kf, w = query_features, key_features, score_weight
    if not (qf.dtype == kf.dtype == v.dtype):
        raise TypeError(
            "additive_attention: query_features, key_features and v must share one dtype, "
            f"got {qf.dtype}, {kf.dtype}, {v.dtype}"
        )
    for name, dtype, of in (
        ("the inputs' dtype", qf.dtype, " (of query_features, key_features and v)"),
        ("score_weight's dtype", w.dtype, ""),
    ):
        if dtype not in _DTYPES:
            raise TypeError(
                f"additive_attention: {name} {dtype}{of} is not supported; use one of {_DTYPES}"
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
            "additive_attention: query_features and key_features must have one feature size a; "
            f"their feature sizes differ: {a} and {kf.shape[3]}"
        )
    if not 1 <= a <= MAX_FEATURES:
        raise ValueError(
            f"additive_attention: feature size {a} is not supported (1 to {MAX_FEATURES}): "
            f"query_features and key_features must be (..., a) with 1 <= a <= {MAX_FEATURES}, "
            f"got shapes {tuple(qf.shape)} and {tuple(kf.shape)}"
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
            f"(1 to {MAX_VALUE_DIM}): v must be (batch, heads, len_k, value_dim) with "
            f"1 <= value_dim <= {MAX_VALUE_DIM}, got shape {tuple(v.shape)}"
        )
    if attn_mask is not None:
        key_mask_strides(attn_mask, qf, kf, CALLER)  # raises on a bad mask
    check_runnable(qf.device, CALLER)
    return _blocks(qf, v)


def _blocks(qf, v):
    """(BLOCK_A, BLOCK_E): the feature size and value head dim padded to powers of two (tl.dot
    wants every dimension >= 16; the (BLOCK, A) accumulators only a power of two)."""
    return triton.next_power_of_2(qf.shape[3]), max(16, triton.next_power_of_2(v.shape[3]))
