"""Triton kernels. ``from kernels import flash_attention``.

Importing this package never fails for want of Triton (e.g. on macOS): without it,
``flash_attention`` is a stand-in that raises a RuntimeError saying so when called.
"""

try:
    from kernels.flash_attention import flash_attention
except ModuleNotFoundError as err:
    if err.name is None or err.name.split(".")[0] != "triton":
        raise
    _TRITON_IMPORT_ERROR = err

    def flash_attention(*args, **kwargs):
        """Stand-in for the Triton kernel: Triton is not installed here."""
        raise RuntimeError(
            "kernels.flash_attention needs Triton, which could not be imported "
            f"({_TRITON_IMPORT_ERROR}); install it (Linux) or use another attention backend"
        ) from _TRITON_IMPORT_ERROR


__all__ = ["flash_attention"]
