"""What the fuzz tests of the attention functions share (tests/test_fuzz_flash.py,
tests/test_fuzz_additive.py, tests/test_fuzz_attend.py): a call and how it must fail, the two
judgements (refused by the function's own checks, naming the argument; as close to float64 as
naive attention), and the drawing of tensors and masks.

Each test draws a valid call (random shapes, including empty batches and lengths, dtypes, strided
layouts, masks broadcast in place, causal with len_q != len_k, scales, the kernel's device or
``meta``) and, in the tests of refusals, breaks it in one way from a list, one test per way, so
that the default run tries every one. A valid call must return what the float64 reference
returns (the kernels' criterion, tests/flash_reference.py, forward only; on ``meta``, the shape
and dtype); a broken call must raise a TypeError or ValueError from the function's own code,
naming the argument, before anything is launched: never an error from deep inside a library,
never a silent wrong answer. The default run keeps to a few examples of tiny shapes (the
kernels run under Triton's interpreter on the CPU); ``-m slow`` runs many more.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from flash_reference import FLOOR_F32, max_err
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
FLOATS = (torch.float32, torch.float16, torch.bfloat16)
QKV = ("query", "key", "value")
QUICK = settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
FEW = settings(max_examples=3, deadline=None)
LONG = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@dataclass
class Call:
    """One call of a public function: its arguments, and, for a broken call, the exception type
    and the words its message must hold (the argument's name)."""

    args: dict
    device: str
    error: type[Exception] | None = None
    says: tuple[str, ...] = ()


def assert_raised_by_the_checks(err: Exception, call: Call, caller: str, homes: tuple[str, ...]):
    """``err`` is the expected type, says what it should, and was raised by the function's own
    code (a file under ``homes``), not deep inside torch or triton."""
    assert isinstance(err, call.error), f"{type(err).__name__}: {err}"
    message = str(err)
    assert message.startswith(caller) or caller == "", message
    for word in call.says:
        assert word in message, f"{word!r} not in {message!r}"
    innermost = Path(traceback.extract_tb(err.__traceback__)[-1].filename).resolve()
    assert any(str(innermost).startswith(str(ROOT / home)) for home in homes), (
        f"raised from {innermost}: {message}"
    )


def assert_as_close_as_naive(got, exact, naive, dtype):
    """The kernels' criterion, forward only: error <= 2 x naive same-dtype error + a floor."""
    assert got.shape == exact.shape and got.dtype == dtype
    assert torch.isfinite(got).all(), "NaN/Inf in the output"
    scale = max(1.0, exact.abs().max().item() if exact.numel() else 0.0)
    floor = max(4 * torch.finfo(dtype).eps, FLOOR_F32) * scale
    err, base = max_err(got, exact), max_err(naive, exact)
    assert err <= 2 * base + floor, f"error {err:.3g} > 2 x naive {base:.3g} + {floor:.3g}"


# --- drawing tensors --------------------------------------------------------------------------


def tensor(draw, shape, dtype, device, seed):
    """Standard normal values of ``shape``, stored either contiguously or with the last two
    axes' storage swapped (a strided view, as after a transpose), on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    if draw(st.booleans()) and len(shape) >= 3:
        swapped = (*shape[:-3], shape[-2], shape[-3], shape[-1])
        values = torch.randn(swapped, generator=gen).transpose(-2, -3)
    else:
        values = torch.randn(shape, generator=gen)
    return values.to(device=device, dtype=dtype)


def mask(draw, b, h, len_q, len_k, device, seed, kinds=("bool", "float", "key")):
    """None, or a mask SDPA reads: a boolean or float one of a random broadcastable shape, or a
    (batch, len_k) key padding mask viewed as (b, 1, 1, len_k)."""
    kind = draw(st.sampled_from([None, *kinds]))
    if kind is None:
        return None
    gen = torch.Generator().manual_seed(seed + 1)
    if kind == "key":
        return (torch.rand(b, len_k, generator=gen) < 0.7).to(device)[:, None, None, :]
    full = (b, h, len_q, len_k)
    rank = draw(st.integers(1, 4))
    shape = tuple(n if draw(st.booleans()) else 1 for n in full[4 - rank :])
    if kind == "bool":
        return (torch.rand(shape, generator=gen) < 0.7).to(device)
    bias = torch.randn(shape, generator=gen)
    bias = bias.masked_fill(torch.rand(shape, generator=gen) < 0.2, float("-inf"))
    return bias.to(device=device, dtype=draw(st.sampled_from(FLOATS)))


# --- breaking a call ------------------------------------------------------------------------


def broken(call: Call, error, says, **changes) -> Call:
    return replace(call, args={**call.args, **changes}, error=error, says=says)


def other(device: str) -> str:
    return "cpu" if device == "meta" else "meta"


def like(t: torch.Tensor, **changes) -> torch.Tensor:
    """Zeros shaped like ``t`` but for ``changes`` (shape, dtype, device)."""
    spec = dict(shape=t.shape, dtype=t.dtype, device=t.device) | changes
    return torch.zeros(spec["shape"], dtype=spec["dtype"], device=spec["device"])


def longer(t: torch.Tensor, axis: int, by: int) -> torch.Tensor:
    shape = list(t.shape)
    shape[axis] += by
    return like(t, shape=shape)
