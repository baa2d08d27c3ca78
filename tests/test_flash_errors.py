"""Bad input to the flash-attention kernel raises a clear error before any launch: wrong ranks,
shapes, dtypes, devices, masks and scales, the score options (window, softcap, ALiBi slopes,
sinks, alignment); and without Triton, or on the CPU without Triton's
interpreter, a RuntimeError that says so. FlashAttention-2's API (``flash_attn_func``,
``flash_attn_varlen_func``): its errors name the function called, its own argument names and
the shapes as the caller laid them out.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from flash_reference import (
    DEVICE,
    HAS_CUDA,
    random_inputs,
)

from kernels import flash_attention
from kernels.common import runtime
from kernels.flash_attention import flash_attn_func, flash_attn_varlen_func

# The reference helpers build their inputs on the kernel_device fixture's device (devices.py).
pytestmark = pytest.mark.usefixtures("kernel_device")


# ----------------------------------------------------------------------------- bad input


def _bad_inputs():
    q, k, v, _ = random_inputs(2, 2, 5, 6, 16, torch.float32)
    mask = torch.ones(2, 1, 1, 6, dtype=torch.bool, device=DEVICE)
    return [
        ("rank", (q[0], k, v), {}, ValueError, "rank 4"),
        ("batch", (q, k[:1], v[:1]), {}, ValueError, "share the batch"),
        ("kv-heads", (q, k, v[:, :1]), {}, ValueError, "k, v the heads"),
        ("gqa-off", (q, k[:, :1], v[:, :1]), {}, ValueError, "enable_gqa=True"),
        ("gqa-not-dividing", (torch.zeros(1, 3, 2, 16), *[torch.zeros(1, 2, 2, 16)] * 2), {"enable_gqa": True}, ValueError, "divide"),
        ("dropout-above-1", (q, k, v), {"dropout_p": 1.5}, ValueError, r"dropout_p must be in \[0, 1\]"),
        ("kv-len", (q, k, v[:, :, :5]), {}, ValueError, "same length"),
        ("head-dim", (q, k[..., :8], v), {}, ValueError, "head dims differ"),
        ("causal-tensor", (q, k, v), {"is_causal": torch.ones(2, dtype=torch.bool)}, TypeError, "flash_attention: is_causal must be True or False"),
        ("causal-string", (q, k, v), {"is_causal": "yes"}, TypeError, "flash_attention: is_causal must be True or False"),
        ("too-wide", [torch.zeros(1, 1, 2, 257, device=DEVICE)] * 3, {}, ValueError, "head dim 257"),
        ("mixed-dtype", (q, k.half(), v), {}, TypeError, "one dtype"),
        ("float64", (q.double(), k.double(), v.double()), {}, TypeError, "float64"),
        ("not-tensor", (q, k.tolist(), v), {}, TypeError, "k must be a torch.Tensor"),
        ("mask-dtype", (q, k, v), {"attn_mask": mask.int()}, TypeError, "torch.bool"),
        ("mask-float64", (q, k, v), {"attn_mask": mask.double()}, TypeError, "added to the scores"),
        ("mask-len", (q, k, v), {"attn_mask": mask[..., :5]}, ValueError, "does not broadcast"),
        ("mask-batch", (q, k, v), {"attn_mask": torch.ones(3, 1, 1, 6, dtype=torch.bool, device=DEVICE)}, ValueError, "does not broadcast"),
        ("mask-heads", (q, k, v), {"attn_mask": torch.ones(2, 3, 1, 6, dtype=torch.bool, device=DEVICE)}, ValueError, "does not broadcast"),
        ("mask-len-q", (q, k, v), {"attn_mask": torch.ones(2, 1, 4, 6, dtype=torch.bool, device=DEVICE)}, ValueError, "does not broadcast"),
        ("mask-rank-5", (q, k, v), {"attn_mask": mask[None]}, ValueError, "does not broadcast"),
        ("mask-2d-key-padding", (q, k, v), {"attn_mask": mask[:, 0, 0]}, ValueError, r"2-D mask is \(len_q, len_k\)"),
        ("mask-list", (q, k, v), {"attn_mask": mask.tolist()}, TypeError, "attn_mask must be a torch.Tensor"),
        ("scale-nan", (q, k, v), {"scale": float("nan")}, ValueError, "scale must be finite, got nan"),
        ("scale-inf", (q, k, v), {"scale": float("inf")}, ValueError, "scale must be finite, got inf"),
        ("scale-tensor-inf", (q, k, v), {"scale": torch.tensor(-float("inf"))}, ValueError, "scale must be finite"),
        ("scale-tensor-grad", (q, k, v), {"scale": torch.tensor(0.5, requires_grad=True)}, TypeError, "scale gets no gradient"),
        *_bad_score_options(q, k, v),
    ]  # fmt: skip


def _bad_score_options(q, k, v):
    """The score options' refusals (kernels.flash_attention.options), each naming its argument."""
    heads = torch.ones(2, device=DEVICE)
    return [
        ("window-below-minus-1", (q, k, v), {"window_size": (-2, 0)}, ValueError, "window_size entries must be >= -1"),
        ("window-one-int", (q, k, v), {"window_size": 4}, TypeError, "window_size must be a pair"),
        ("window-floats", (q, k, v), {"window_size": (4.0, 0)}, TypeError, "window_size must hold ints"),
        ("softcap-negative", (q, k, v), {"softcap": -1.0}, ValueError, "softcap must be finite and >= 0"),
        ("softcap-inf", (q, k, v), {"softcap": float("inf")}, ValueError, "softcap must be finite"),
        ("softcap-string", (q, k, v), {"softcap": "30"}, TypeError, "softcap must be a float"),
        ("alibi-shape", (q, k, v), {"alibi_slopes": torch.ones(3, device=DEVICE)}, ValueError, r"alibi_slopes must be \(2,\) or \(2, 2\)"),
        ("alibi-dtype", (q, k, v), {"alibi_slopes": heads.half()}, TypeError, "alibi_slopes must be torch.float32, got torch.float16"),
        ("alibi-list", (q, k, v), {"alibi_slopes": [0.1, 0.2]}, TypeError, "alibi_slopes must be a torch.Tensor"),
        ("alibi-grad", (q, k, v), {"alibi_slopes": heads.clone().requires_grad_()}, ValueError, "alibi_slopes get no gradient"),
        ("sinks-shape", (q, k, v), {"sinks": torch.ones(2, 1, device=DEVICE)}, ValueError, r"sinks must be one logit per query head, \(2,\)"),
        ("sinks-dtype", (q, k, v), {"sinks": heads.bfloat16()}, TypeError, r"sinks must be torch.float32, got torch.bfloat16$"),
        ("alignment", (q, k, v), {"alignment": "bottom-right"}, ValueError, "alignment must be one of"),
    ]  # fmt: skip


@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda c: c[0])
def test_bad_input_raises_a_clear_error_before_any_launch(case):
    _, args, kwargs, error, message = case

    def no_launch(launch):
        raise AssertionError(f"{launch.kernel} was launched")

    with runtime.hooked(runtime.Hook(no_launch)), pytest.raises(error, match=message):
        flash_attention(*args, **kwargs)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_mixed_devices_raise_on_gpu():
    q, k, v, _ = random_inputs(1, 1, 4, 4, 16, torch.float32)
    with pytest.raises(ValueError, match="one device"):
        flash_attention(q, k.cpu(), v)


def test_import_without_triton_and_cpu_without_interpreter_raise_runtime_errors():
    script = """
import os, sys, torch
sys.modules["triton"] = None  # as on a machine without Triton
import kernels
try:
    kernels.flash_attention(*[torch.zeros(1, 1, 2, 16)] * 3)
except RuntimeError as err:
    assert "Triton" in str(err), err
else:
    raise SystemExit("no RuntimeError without triton")
for name in [m for m in sys.modules if m == "kernels" or m.startswith("kernels.")]:
    del sys.modules[name]
del sys.modules["triton"]
os.environ.pop("TRITON_INTERPRET", None)
from kernels import flash_attention
from kernels.common import runtime
from kernels.common.tuning import LaunchConfig
try:
    flash_attention(*[torch.zeros(1, 1, 2, 16)] * 3)
except RuntimeError as err:
    assert "TRITON_INTERPRET=1" in str(err), err
else:
    raise SystemExit("no RuntimeError for CPU tensors without the interpreter")
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr + done.stdout


def test_a_second_derivative_is_refused_naming_the_kernel_not_torch_internals():
    q, k, v, dout = random_inputs(1, 2, 5, 7, 16, torch.float32)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    grads = torch.autograd.grad((flash_attention(*leaves) * dout).sum(), leaves, create_graph=True)
    assert all(g.requires_grad for g in grads)  # a first derivative with create_graph works
    with pytest.raises(RuntimeError, match="flash_attention_backward has no derivative"):
        sum(g.square().sum() for g in grads).backward()


# ----------------------------------------------------------------------------- FA2 API
# Bad input to FlashAttention-2's API (``flash_attn_func``, ``flash_attn_varlen_func``) is
# refused before any launch with an error that names the function called, not the
# ``flash_attention`` it calls, names the argument by FlashAttention-2's name (``softmax_scale``,
# ``causal``), and shows shapes as the caller laid them out ((batch, seqlen, heads, head_dim) or
# (total, heads, head_dim)), never as the kernel's transposed view.


def _dense():
    """q (2, 5, 4, 8), k and v (2, 6, 2, 8): FlashAttention-2's (batch, seqlen, heads, d)."""
    q = torch.randn(2, 5, 4, 8, device=DEVICE)
    k, v = (torch.randn(2, 6, 2, 8, device=DEVICE) for _ in range(2))
    return q, k, v


def _dense_cases():
    q, k, v = _dense()
    ones = torch.ones(4, device=DEVICE)
    return [
        ("batch", (q, k[:1], v[:1]), {}, ValueError,
         r"batch.*q \(2, 5, 4, 8\), k \(1, 6, 2, 8\), v \(1, 6, 2, 8\)"),
        ("kv-seqlen", (q, k, v[:, :5]), {}, ValueError, r"seqlen.*k \(2, 6, 2, 8\), v \(2, 5, 2, 8\)"),
        ("kv-heads", (q, k, v[:, :, :1]), {}, ValueError, r"heads.*k \(2, 6, 2, 8\), v \(2, 6, 1, 8\)"),
        ("heads-not-dividing", (q, *(torch.randn(2, 6, 3, 8, device=DEVICE),) * 2), {}, ValueError,
         r"heads_k = 3.*divide.*heads = 4"),
        ("head-dim", (q, k[..., :4], v), {}, ValueError, r"head_dim.*q \(2, 5, 4, 8\), k \(2, 6, 2, 4\)"),
        ("dtype", (q.half(), k, v), {}, TypeError, "dtype"),
        ("float64", (q.double(), k.double(), v.double()), {}, TypeError, "float64"),
        ("too-wide", [torch.zeros(1, 2, 1, 300, device=DEVICE)] * 3, {}, ValueError, "head dim 300"),
        ("softmax-scale", (q, k, v), {"softmax_scale": float("nan")}, ValueError,
         "softmax_scale must be finite"),
        ("softmax-scale-type", (q, k, v), {"softmax_scale": "0.5"}, TypeError, "softmax_scale must be"),
        ("dropout", (q, k, v), {"dropout_p": 1.5}, ValueError, r"dropout_p must be in \[0, 1\]"),
        ("softcap", (q, k, v), {"softcap": -1.0}, ValueError, "softcap must be finite and >= 0"),
        ("window", (q, k, v), {"window_size": (-2, 0)}, ValueError, "window_size entries"),
        ("window-int", (q, k, v), {"window_size": 3}, TypeError, "window_size must be a pair"),
        ("alibi", (q, k, v), {"alibi_slopes": torch.ones(3, device=DEVICE)}, ValueError,
         "alibi_slopes must be"),
        ("alibi-dtype", (q, k, v), {"alibi_slopes": ones.half()}, TypeError, "alibi_slopes must be"),
        ("sinks", (q, k, v), {"sinks": ones[:2]}, ValueError, "sinks must be one logit"),
    ]  # fmt: skip


def _packed_cases():
    q = torch.randn(7, 4, 8, device=DEVICE)
    k, v = (torch.randn(7, 2, 8, device=DEVICE) for _ in range(2))
    cu = torch.tensor([0, 3, 7], dtype=torch.int32, device=DEVICE)
    lengths = (cu, cu, 4, 4)
    return [
        ("kv-total", (q, k, v[:6], *lengths), {}, ValueError, r"total.*k \(7, 2, 8\), v \(6, 2, 8\)"),
        ("kv-heads", (q, k, v[:, :1], *lengths), {}, ValueError, r"heads.*k \(7, 2, 8\), v \(7, 1, 8\)"),
        ("heads-not-dividing", (q, *(torch.randn(7, 3, 8, device=DEVICE),) * 2, *lengths), {},
         ValueError, r"heads_k = 3.*divide.*heads = 4"),
        ("head-dim", (q, k[..., :4], v, *lengths), {}, ValueError, r"head_dim.*q \(7, 4, 8\), k \(7, 2, 4\)"),
        ("dtype", (q.half(), k, v, *lengths), {}, TypeError, "dtype"),
        ("softmax-scale", (q, k, v, *lengths), {"softmax_scale": float("inf")}, ValueError,
         "softmax_scale must be finite"),
        ("dropout", (q, k, v, *lengths), {"dropout_p": -0.1}, ValueError, r"dropout_p must be in"),
        ("softcap", (q, k, v, *lengths), {"softcap": -1.0}, ValueError, "softcap must be finite"),
        ("window", (q, k, v, *lengths), {"window_size": (1,)}, TypeError, "window_size must be a pair"),
        ("alibi", (q, k, v, *lengths), {"alibi_slopes": torch.ones(3, 4, device=DEVICE)},
         ValueError, "alibi_slopes must be"),
    ]  # fmt: skip


def _refused(function, args, kwargs, error, message):
    def no_launch(launch):
        raise AssertionError(f"{launch.kernel} was launched")

    with runtime.hooked(runtime.Hook(no_launch)), pytest.raises(error) as raised:
        function(*args, **kwargs)
    text = str(raised.value)
    assert text.startswith(f"{function.__name__}: "), text
    assert not text.startswith("flash_attention"), text
    assert re.search(message, text), (message, text)


@pytest.mark.parametrize("case", _dense_cases(), ids=lambda c: c[0])
def test_flash_attn_func_errors_name_it_its_arguments_and_the_callers_shapes(case):
    _refused(flash_attn_func, *case[1:])


@pytest.mark.parametrize("case", _packed_cases(), ids=lambda c: c[0])
def test_flash_attn_varlen_func_errors_name_it_its_arguments_and_the_callers_shapes(case):
    _refused(flash_attn_varlen_func, *case[1:])
