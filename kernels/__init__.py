"""Triton kernels. ``from kernels import flash_attention, additive_attention``.

Importing this package never fails for want of Triton (e.g. on macOS): without it, each kernel
function is a stand-in that raises a RuntimeError saying so when called.
"""

try:
    from kernels.additive_attention import additive_attention
    from kernels.flash_attention import flash_attention
except ModuleNotFoundError as err:
    if err.name is None or err.name.split(".")[0] != "triton":
        raise
    _TRITON_IMPORT_ERROR = err

    def _needs_triton(name):
        def stand_in(*args, **kwargs):
            raise RuntimeError(
                f"kernels.{name} needs Triton, which could not be imported "
                f"({_TRITON_IMPORT_ERROR}); install it (Linux) or use another attention backend"
            ) from _TRITON_IMPORT_ERROR

        stand_in.__name__ = name
        stand_in.__doc__ = "Stand-in for the Triton kernel: Triton is not installed here."
        return stand_in

    flash_attention = _needs_triton("flash_attention")
    additive_attention = _needs_triton("additive_attention")


__all__ = ["additive_attention", "flash_attention"]
