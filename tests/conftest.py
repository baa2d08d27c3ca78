"""Shared pytest setup. Keep this minimal."""

import os

import pytest
import torch  # does not import triton

# Without a GPU, Triton kernels can only run under its interpreter, which Triton reads from the
# environment when it is first imported, so this must run before any test module imports it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def kernel_device() -> torch.device:
    """Where a test that runs our Triton kernels puts its tensors and model: the GPU when there
    is one, else the CPU, where the kernels run under Triton's interpreter (set above). Every
    test that reaches the triton backend or the flash kernel takes its device from here
    (tests/test_kernel_device.py checks it)."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
