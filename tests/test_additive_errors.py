"""Bad input to the fused additive-attention kernel raises a clear error before any launch:
wrong ranks, shapes, feature sizes, dtypes, devices and masks, and flash_attention's score
options, which it does not take.
"""

import re

import pytest
import torch
from additive_reference import (
    DEVICE,
    HAS_CUDA,
    random_inputs,
)

from kernels import additive_attention
from kernels.common import runtime

# The reference helpers build their inputs on the kernel_device fixture's device (devices.py).
pytestmark = pytest.mark.usefixtures("kernel_device")


# ----------------------------------------------------------------------------- bad input


def _bad_inputs():
    qf, kf, w, v, _ = random_inputs(2, 2, 5, 6, 8, 16, torch.float32)
    mask = torch.ones(2, 1, 1, 6, dtype=torch.bool, device=DEVICE)
    return [
        ("rank", (qf[0], kf, w, v), {}, ValueError, "rank 4"),
        ("w-rank", (qf, kf, w[0], v), {}, ValueError, "score_weight must have rank 2"),
        ("batch", (qf, kf[:1], w, v[:1]), {}, ValueError, "batch, heads"),
        ("kv-len", (qf, kf, w, v[:, :, :5]), {}, ValueError, "same length"),
        ("causal-tensor", (qf, kf, w, v), {"is_causal": torch.ones(2, dtype=torch.bool)}, TypeError, "additive_attention: is_causal must be True or False"),
        ("feature-size", (qf, kf[..., :4], w, v), {}, ValueError, "feature sizes differ"),
        ("w-shape", (qf, kf, w[:1], v), {}, ValueError, r"\(heads, a\)"),
        ("too-wide", (qf, kf, w, torch.zeros(2, 2, 6, 256, device=DEVICE)), {}, ValueError, "value head dim 256"),
        ("too-many-features", [torch.zeros(1, 1, 2, 129, device=DEVICE)] * 2 + [torch.zeros(1, 129, device=DEVICE), torch.zeros(1, 1, 2, 8, device=DEVICE)], {}, ValueError, "feature size 129"),
        ("mixed-dtype", (qf, kf.half(), w, v), {}, TypeError, "one dtype"),
        ("float64", (qf.double(), kf.double(), w, v.double()), {}, TypeError, "float64"),
        ("w-float64", (qf, kf, w.double(), v), {}, TypeError, "score_weight's dtype"),
        ("not-tensor", (qf, kf.tolist(), w, v), {}, TypeError, "key_features must be a torch.Tensor"),
        ("mask-dtype", (qf, kf, w, v), {"attn_mask": mask.float()}, TypeError, "torch.bool"),
        ("mask-len", (qf, kf, w, v), {"attn_mask": mask[..., :5]}, ValueError, "key mask"),
        ("mask-batch", (qf, kf, w, v), {"attn_mask": torch.ones(3, 1, 1, 6, dtype=torch.bool, device=DEVICE)}, ValueError, "key mask"),
        ("mask-full", (qf, kf, w, v), {"attn_mask": torch.ones(2, 1, 5, 6, dtype=torch.bool, device=DEVICE)}, ValueError, r"Full \(len_q x len_k\)"),
        ("mask-2d", (qf, kf, w, v), {"attn_mask": mask[:, 0, 0]}, ValueError, "key mask"),
        ("mask-1d", (qf, kf, w, v), {"attn_mask": mask[0, 0, 0]}, ValueError, r"got \(6,\)\.$"),
        ("mask-list", (qf, kf, w, v), {"attn_mask": mask.tolist()}, TypeError, "additive_attention: attn_mask must be a torch.Tensor, got list$"),
        ("return-lse-str", (qf, kf, w, v), {"return_lse": "no"}, TypeError, "additive_attention: return_lse must be True or False, got str"),
        ("return-lse-tensor", (qf, kf, w, v), {"return_lse": torch.tensor(True)}, TypeError, "additive_attention: return_lse must be True or False, got Tensor"),
    ] + [
        # flash_attention's score options: the additive kernel takes none of them
        (f"no-{name}", (qf, kf, w, v), {name: value}, TypeError, name)
        for name, value in (("window_size", (4, 0)), ("softcap", 5.0), ("alibi_slopes", w[:, 0]),
                            ("sinks", w[:, 0]), ("alignment", "top_left"))
    ]  # fmt: skip


@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda c: c[0])
def test_bad_input_raises_a_clear_error_before_any_launch(case):
    _, args, kwargs, error, message = case

    def no_launch(launch):
        raise AssertionError(f"{launch.kernel} was launched")

    with runtime.hooked(runtime.Hook(no_launch)), pytest.raises(error, match=message):
        additive_attention(*args, **kwargs)


def _errors_that_must_name_their_arguments():
    qf, kf, w, v, _ = random_inputs(1, 2, 3, 4, 8, 16, torch.float32)
    wide = [torch.randn(1, 1, 2, 129, device=DEVICE) for _ in range(2)]
    return [
        # (id, args, the arguments it must name, what was expected, what was got)
        ("float64", (qf.double(), kf.double(), w, v.double()),
         ("query_features", "key_features", "v"), "torch.float32", "torch.float64"),
        ("int64", (qf.long(), kf.long(), w, v.long()),
         ("query_features", "key_features", "v"), "torch.float16", "torch.int64"),
        ("feature-sizes-differ", (qf, kf[..., :5], w, v),
         ("query_features", "key_features"), "8", "5"),
        ("129-features", (*wide, torch.randn(1, 129, device=DEVICE), v[:1, :1, :2]),
         ("query_features", "key_features"), "128", "129"),
        ("value-dim-256", (qf, kf, w, torch.randn(1, 2, 4, 256, device=DEVICE)),
         ("v",), "128", "256"),
        ("value-dim-0", (qf, kf, w, v[..., :0]), ("v",), "128", "0"),
    ]  # fmt: skip


@pytest.mark.parametrize("case", _errors_that_must_name_their_arguments(), ids=lambda c: c[0])
def test_errors_on_features_and_values_name_the_arguments_what_was_expected_and_got(case):
    _, args, names, expected, got = case
    with pytest.raises((TypeError, ValueError)) as err:
        additive_attention(*args)
    message = str(err.value)
    assert message.startswith("additive_attention: "), message
    for word in (*names, expected, got):
        assert re.search(rf"(?<![\w.']){re.escape(word)}(?![\w'])", message), (word, message)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_mixed_devices_raise_on_gpu():
    qf, kf, w, v, _ = random_inputs(1, 1, 4, 4, 8, 16, torch.float32)
    with pytest.raises(ValueError, match="one device"):
        additive_attention(qf, kf, w.cpu(), v)


def test_a_second_derivative_is_refused_naming_the_kernel_not_torch_internals():
    qf, kf, w, v, dout = random_inputs(1, 2, 5, 7, 8, 16, torch.float32)
    leaves = [t.clone().requires_grad_() for t in (qf, kf, w, v)]
    out = additive_attention(*leaves)
    grads = torch.autograd.grad((out * dout).sum(), leaves, create_graph=True)
    assert all(g.requires_grad for g in grads)  # a first derivative with create_graph works
    with pytest.raises(RuntimeError, match="additive_attention_backward has no derivative"):
        sum(g.square().sum() for g in grads).backward()
