"""Where the tests run our Triton kernels, defined once (not a test module).

The GPU when there is one; else the CPU, where the kernels run under Triton's interpreter
(tests/conftest.py sets ``TRITON_INTERPRET=1`` before Triton is imported). Tests take it from
the ``kernel_device`` fixture (tests/conftest.py), which returns this. The reference helpers
(flash_reference.py, additive_reference.py) build their inputs here, so a test module that
uses them requests the fixture for all its tests
(``pytestmark = pytest.mark.usefixtures("kernel_device")``); without CUDA,
``python -m pytest`` fails a test that reaches a kernel without it (tests/cuda_host_rehearsal.py).
"""

import torch

KERNEL_DEVICE = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
