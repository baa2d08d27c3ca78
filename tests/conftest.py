"""Shared pytest setup: where the kernels run, autotuning off, and (without CUDA) the rehearsal
of a CUDA host's run."""

import gzip
import os
from pathlib import Path

import pytest
import torch  # does not import triton
from devices import KERNEL_DEVICE  # tests/, on sys.path as conftest's

# Without a GPU, Triton kernels can only run under its interpreter, which Triton reads from the
# environment when it is first imported, so this must run before any test module imports it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# No autotuning in the test run, whatever the caller's environment says (subprocesses inherit
# this too): on a GPU, timing every candidate of every new specialisation makes the run slow
# and lets two calls of one test choose different configurations. The kernels read it at each
# launch. A test that means to tune is marked @pytest.mark.autotune (see below).
os.environ["FLASH_ATTENTION_AUTOTUNE"] = "0"


def pytest_configure(config):
    # Without CUDA every run rehearses a CUDA host's (tests/cuda_host_rehearsal.py): it fails a
    # test whose set-up would fail there. On a CUDA host the run is the real one, with nothing
    # to rehearse (the plugin patches Triton's interpreter, which runs only without a GPU).
    if not torch.cuda.is_available():
        from cuda_host_rehearsal import CudaHostRehearsal  # tests/, on sys.path as conftest's

        config.pluginmanager.register(CudaHostRehearsal(), "cuda_host_rehearsal")


def pytest_runtest_setup(item):
    if item.get_closest_marker("interpreter_only") and torch.cuda.is_available():
        pytest.skip("patches Triton's interpreter, which a CUDA host does not run")


@pytest.fixture(autouse=True)
def autotune_only_when_asked(request, monkeypatch):
    """FLASH_ATTENTION_AUTOTUNE=1 for a test marked @pytest.mark.autotune (off for the rest)."""
    if request.node.get_closest_marker("autotune"):
        monkeypatch.setenv("FLASH_ATTENTION_AUTOTUNE", "1")


@pytest.fixture(scope="session")
def kernel_device() -> torch.device:
    """Where a test that runs our Triton kernels puts its tensors and model (tests/devices.py):
    the GPU when there is one, else the CPU, where the kernels run under Triton's interpreter
    (set above). Every test that reaches a kernel, by any route, takes its device from here
    (without CUDA, the run fails one that does not: tests/cuda_host_rehearsal.py)."""
    return KERNEL_DEVICE


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


@pytest.fixture
def restores_process_state():
    """A benchmark's main() sets torch's threads (and TRITON_INTERPRET on the CPU) for the whole
    process: both put back after the test."""
    threads, interpret = torch.get_num_threads(), os.environ.get("TRITON_INTERPRET")
    yield
    torch.set_num_threads(threads)
    if interpret is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = interpret
