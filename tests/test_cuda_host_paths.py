"""Host code that only runs when CUDA is present, run on the CPU with ``torch.cuda`` stood in.

No GPU has run this project yet, so each path behind ``torch.cuda.is_available()`` gets a test
here that replaces the few ``torch.cuda`` functions it calls with fakes that behave as the real
ones do (a fake refuses what the real function refuses).
"""

import pytest
import torch

from transformer import training
from transformer.training import Distributed, TrainConfig, setup_devices


def fake_cuda(monkeypatch, current=0):
    """torch.cuda on a machine with GPUs; returns the list of devices set_device was given."""
    chosen = []

    def set_device(device):
        # torch.cuda.set_device resolves its argument this way and refuses a device without
        # an index ("Expected a torch.device with a specified index or an integer").
        chosen.append(torch._utils._get_device_index(device, optional=False))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    return chosen


@pytest.mark.parametrize(
    ("name", "ranks", "expected"),
    [
        ("cuda", Distributed(), 0),
        ("cuda", Distributed(rank=1, world_size=2, local_rank=1), 1),
        ("auto", Distributed(rank=3, world_size=4, local_rank=1), 1),
        ("cuda:1", Distributed(), 1),
    ],
    ids=["cuda", "cuda-torchrun-rank1", "auto-torchrun-rank1", "cuda:1"],
)
def test_a_cuda_device_without_an_index_is_given_one_before_set_device(
    monkeypatch, name, ranks, expected
):
    chosen = fake_cuda(monkeypatch)
    monkeypatch.setattr(training, "init_distributed", lambda device_type: ranks)
    device, _ = setup_devices(TrainConfig(device=name))
    assert device == torch.device("cuda", expected)
    assert chosen == [expected]


class FakeCudaAllocator:
    """torch.cuda's allocation counters, for a fake device: ``allocate`` holds bytes until the
    returned release is called; the peak is tracked as the caching allocator's stats do."""

    def __init__(self, monkeypatch):
        self.allocated = self.peak = 0
        for name, fn in {
            "synchronize": lambda device=None: None,
            "empty_cache": lambda: None,
            "reset_peak_memory_stats": self.reset_peak,
            "memory_allocated": lambda device=None: self.allocated,
            "max_memory_allocated": lambda device=None: self.peak,
        }.items():
            monkeypatch.setattr(torch.cuda, name, fn)

    def reset_peak(self, device=None):
        self.peak = self.allocated

    def allocate(self, nbytes):
        self.allocated += nbytes
        self.peak = max(self.peak, self.allocated)

        def release():
            self.allocated -= nbytes

        return release


def test_peak_memory_counts_the_call_not_autotuning_or_do_bench_flush_buffer(monkeypatch):
    """The kernel's first call at a length bucket autotunes: launch.pick times each candidate
    with do_bench, which holds a 256 MiB L2-flush buffer. Measured memory is the call's own."""
    import triton.testing

    from benchmarks import common
    from kernels import launch

    memory = FakeCudaAllocator(monkeypatch)
    flush_buffer, workspace = 256 * 2**20, 3 * 2**20

    def do_bench(fn, **kwargs):
        release = memory.allocate(flush_buffer)
        fn()
        release()
        return 1.0

    def run_kernel(config):
        memory.allocate(workspace)()  # a transient buffer while the kernel runs

    monkeypatch.setattr(triton.testing, "do_bench", do_bench)
    monkeypatch.setattr(launch, "_TUNED", {})
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    configs = [launch.LaunchConfig(64, 64, 4, 2), launch.LaunchConfig(32, 32, 4, 2)]

    def attention_call():
        config = launch.pick(("fake-kernel", 1024), configs, run_kernel)
        run_kernel(config)

    held = memory.allocate(5 * 2**20)  # the inputs, allocated before the window
    assert common.peak_memory(attention_call, torch.device("cuda")) == workspace
    held()
