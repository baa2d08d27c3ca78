"""Shared pytest setup. Keep this minimal."""

import gzip
import os
from pathlib import Path

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


@pytest.fixture
def fast_machine(monkeypatch):
    """The training tests never time the machine (each of their modules uses this fixture):
    --config auto sees a rate that picks the cpu preset (the choice: test_sizing.py)."""
    from transformer.translation.training import sizing

    monkeypatch.setattr(sizing, "measure_gflops", lambda dtype: sizing.FAST_GFLOPS * 2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The first sentences of each Multi30K split, as a corpus directory of plain text files."""
    from transformer.translation.data import DEFAULT_DATA_DIR

    directory = tmp_path_factory.mktemp("corpus")
    for split, count in (("train", 64), ("val", 16), ("test_2016_flickr", 16)):
        for lang in ("de", "en"):
            with gzip.open(DEFAULT_DATA_DIR / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
                lines = [next(f) for _ in range(count)]
            (directory / f"{split}.{lang}").write_text("".join(lines), encoding="utf-8")
    return directory
