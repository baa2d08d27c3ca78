"""Our kernels as PyTorch operators (``torch.library``), so ``torch.compile`` sees through callers.

A kernel module registers two operators with :func:`kernel_op`, one for its forward launcher
and one for its backward launcher, and ties them together with ``backward=``::

    @kernel_op("my_kernel_backward", fake=_fake_backward)
    def _backward_op(x: Tensor, w: Tensor, out: Tensor, dout: Tensor) -> tuple[Tensor, Tensor]:
        ...  # launches the backward kernels; returns (dx, dw)

    @kernel_op("my_kernel", fake=_fake_forward, backward=_backward_op, wrt=("x", "w"))
    def _forward_op(x: Tensor, w: Tensor) -> Tensor:
        ...  # launches the forward kernel

and its public function calls ``_forward_op`` after checking its inputs. Each operator runs
with its inputs' CUDA device made current (:func:`device_guard`). That is all a kernel
needs: ``torch.ops.flash_transformer.my_kernel`` then runs in eager mode, differentiates, and
appears in a ``torch.compile`` graph as one opaque node (no graph break), with the fake
function giving the compiler output shapes, dtypes and strides.

Why ``custom_op`` and not ``triton_op`` + ``wrap_triton``: a ``triton_op`` body is traced into
the graph (under FakeTensors), so everything in it must be traceable, and our launchers are not:
on a GPU they autotune (``kernels.common.tuning.pick`` compiles and *times* candidate configurations
in host Python, reading back results), and on the CPU the kernels run under Triton's numpy
interpreter, which ``wrap_triton`` cannot trace at all. A ``custom_op`` is opaque to the
compiler, so the same launcher runs unchanged on the CPU and on CUDA, eager or compiled; what
it gives up is letting Inductor fuse into the kernel, which a hand-written fused kernel does not
need. On ``meta`` tensors an operator runs its fake function and launches nothing, which is why
:mod:`kernels.compile_gate` calls the launchers directly.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

NAMESPACE = "flash_transformer"


def kernel_op(
    name: str,
    *,
    fake: Callable,
    backward: Callable | None = None,
    wrt: Sequence[str] = (),
) -> Callable[[Callable], torch.library.CustomOpDef]:
    """Decorator: register ``fn`` as the operator ``flash_transformer::name``.

    ``fn`` is typed (the operator's schema is inferred from its annotations) and returns new
    tensors, never its inputs or views of them. ``fake(*args)`` returns empty tensors of the
    shapes, dtypes and strides ``fn`` would return. With ``backward`` (another ``kernel_op``),
    the operator differentiates: ``backward(*inputs, *outputs, *output_grads)`` returns the
    gradients of the inputs named in ``wrt``, in that order (None for one that gets none);
    the others get none. A ``backward`` with a keyword ``needs_grad`` gets a tuple of bools,
    which of the ``wrt`` inputs need a gradient.
    """

    def register(fn: Callable) -> torch.library.CustomOpDef:
        @functools.wraps(fn)  # the schema is inferred from fn's signature, which wraps keeps
        def on_the_inputs_device(*args, **kwargs):
            with device_guard(*args, *kwargs.values()):
                return fn(*args, **kwargs)

        op = torch.library.custom_op(f"{NAMESPACE}::{name}", on_the_inputs_device, mutates_args=())
        op.register_fake(fake)
        if backward is not None:
            _register_autograd(op, list(inspect.signature(fn).parameters), backward, wrt)
        else:
            _refuse_autograd(op, f"{NAMESPACE}::{name}")
        return op

    return register


def device_guard(*args) -> contextlib.AbstractContextManager:
    """The first CUDA tensor's device, made current for the block; nothing for CPU tensors.

    Triton launches on the *current* CUDA device, not on its arguments' (as a CUDA kernel
    does): without this, tensors on ``cuda:1`` while ``cuda:0`` is current would be read by a
    kernel running on the wrong GPU. Every operator registered here runs inside it.
    """
    for arg in args:
        device = getattr(arg, "device", None)
        if isinstance(device, torch.device) and device.type == "cuda":
            return torch.cuda.device(device)
    return contextlib.nullcontext()


def _refuse_autograd(op: torch.library.CustomOpDef, qualname: str) -> None:
    """An operator without a derivative (a backward kernel) says so when differentiated.

    Differentiating a backward kernel means a second derivative: ``torch.autograd.grad(...,
    create_graph=True)`` through one of our kernels, then a backward through that gradient.
    """

    def refuse(ctx, *grads):
        raise RuntimeError(
            f"{qualname} has no derivative: our kernels compute first derivatives only, so "
            "a second derivative (double backward, e.g. a gradient penalty) through them is "
            "not supported; use naive attention (or SDPA's math backend) for it"
        )

    op.register_autograd(refuse, setup_context=lambda ctx, inputs, output: None)


def _register_autograd(
    op: torch.library.CustomOpDef, names: list[str], backward: Callable, wrt: Sequence[str]
) -> None:
    """The one autograd rule of our kernels: save inputs and outputs, call the backward op."""
    unknown = set(wrt) - set(names)
    if unknown:
        raise ValueError(f"{op}: wrt names {sorted(unknown)} are not arguments of the operator")
    positions = [names.index(n) for n in wrt]
    # A backward that takes ``needs_grad`` is told which of the wrt inputs want a gradient
    # (ctx.needs_input_grad), so that it can skip work for the others.
    try:
        wants_flags = "needs_grad" in inspect.signature(backward).parameters
    except (TypeError, ValueError):  # an operator without a Python signature
        wants_flags = False

    def setup_context(ctx, inputs, output):
        outputs = output if isinstance(output, tuple) else (output,)
        is_tensor = [isinstance(x, Tensor) for x in inputs]
        ctx.save_for_backward(*(x for x, t in zip(inputs, is_tensor, strict=True) if t), *outputs)
        ctx.is_tensor = is_tensor
        ctx.constants = [x for x, t in zip(inputs, is_tensor, strict=True) if not t]

    def backward_rule(ctx, *grads):
        saved, constants = iter(ctx.saved_tensors), iter(ctx.constants)
        inputs = [next(saved) if t else next(constants) for t in ctx.is_tensor]
        outputs = list(saved)
        flags = {}
        if wants_flags:
            # The dispatcher drops trailing arguments equal to their defaults (None, for a
            # tensor) before autograd sees them: such an input needs no gradient.
            needs = ctx.needs_input_grad
            flags["needs_grad"] = tuple(p < len(needs) and needs[p] for p in positions)
        input_grads = backward(*inputs, *outputs, *grads, **flags)
        input_grads = input_grads if isinstance(input_grads, tuple) else (input_grads,)
        result: list[Tensor | None] = [None] * len(names)
        for position, grad in zip(positions, input_grads, strict=True):
            result[position] = grad
        return tuple(result)

    op.register_autograd(backward_rule, setup_context=setup_context)
