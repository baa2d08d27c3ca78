"""How a measured point ends, and the record of a call that raised.

Every measured point ends with one status:

    ok              measured
    oom             out of memory (CUDA OutOfMemoryError; on the CPU, over the per-point cap)
    unsupported     the implementation refused the shape (e.g. an SDPA backend this machine
                    or this head dim does not have)
    not_measurable  runs here, but a number would mean nothing (the Triton kernel's time on the
                    CPU, where it runs only under the numpy interpreter)
    unavailable     the implementation cannot be imported here
    skipped         not run: an earlier, cheaper point already ran out of memory, or the
                    point is longer than the interpreter is given on the CPU
    error           anything else; ``note`` holds the message
"""

from __future__ import annotations

import torch

STATUSES = ("ok", "oom", "unsupported", "not_measurable", "unavailable", "skipped", "error")

NOT_MEASURABLE_ON_CPU = (
    "not measurable on CPU: the Triton kernel runs here only under TRITON_INTERPRET=1, a numpy "
    "interpreter whose memory and speed say nothing about the compiled GPU kernel"
)
KERNEL_TIME_NOT_MEASURABLE_ON_CPU = (
    "time not measurable on CPU: the Triton kernel runs here only under TRITON_INTERPRET=1, a "
    "numpy interpreter whose speed says nothing about the compiled GPU kernel (its memory is "
    "measured: torch allocations under the interpreter)"
)


def is_oom(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator failing (here: hitting the cap)."""
    if isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "can't allocate memory" in text
        or "not enough memory" in text
        or "out of memory" in text.lower()
    )


def is_unsupported(err: BaseException) -> bool:
    """SDPA's answer when the backends allowed by ``sdpa_kernel`` all refuse the inputs."""
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "No available kernel" in text or "No viable backend" in text
    )


def failure(err: BaseException, capped: bool = False) -> dict:
    """A result record for a call that raised. ``capped``: under ``cap_address_space``, where
    oneDNN reports a failed allocation as "could not create a primitive"."""
    if capped and "could not create a primitive" in str(err):
        return {"status": "oom", "note": "oneDNN could not create a primitive under the cap"}
    if is_oom(err):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"status": "oom", "note": str(err).splitlines()[0][:200]}
    if is_unsupported(err):
        return {"status": "unsupported", "note": str(err).splitlines()[0][:200]}
    return {"status": "error", "note": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
