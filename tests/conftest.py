"""Shared pytest setup. Keep this minimal."""

import os

import torch  # does not import triton

# Without a GPU, Triton kernels can only run under its interpreter, which Triton reads from the
# environment when it is first imported, so this must run before any test module imports it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
