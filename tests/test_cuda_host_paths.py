"""Host code that only runs when CUDA is present, run on the CPU with ``torch.cuda`` stood in.

No GPU has run this project yet, so each path behind ``torch.cuda.is_available()`` gets a test
here that replaces the few ``torch.cuda`` functions it calls with fakes that behave as the real
ones do (a fake refuses what the real function refuses).
"""

import pytest
import torch

from transformer.translation.training import TrainConfig
from transformer.translation.training import setup as training_setup
from transformer.translation.training.setup import setup_process


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
        ("cuda", (0, 1, 0), 0),
        ("cuda", (1, 2, 1), 1),
        ("auto", (3, 4, 1), 1),
        ("cuda:1", (0, 1, 0), 1),
    ],
    ids=["cuda", "cuda-torchrun-rank1", "auto-torchrun-rank1", "cuda:1"],
)
def test_a_cuda_device_without_an_index_is_given_one_before_set_device(
    monkeypatch, name, ranks, expected
):
    chosen = fake_cuda(monkeypatch)
    monkeypatch.setattr(training_setup, "init_distributed", lambda device_type: ranks)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    device = setup_process(TrainConfig(device=name)).device
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
    """The kernel's first call at a length bucket autotunes: tuning.pick times each candidate
    with do_bench, which holds a 256 MiB L2-flush buffer. Measured memory is the call's own."""
    import triton.testing

    from benchmarks.common.measure import peak_memory
    from kernels.common import tuning

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
    monkeypatch.setattr(tuning, "_CHOICES", {})
    monkeypatch.delenv(tuning.TUNE_CACHE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    configs = [tuning.LaunchConfig(64, 64, 4, 2), tuning.LaunchConfig(32, 32, 4, 2)]

    def attention_call():
        tuning.pick(("fake-kernel", 1024), configs, run_kernel)

    held = memory.allocate(5 * 2**20)  # the inputs, allocated before the window
    assert peak_memory(attention_call, torch.device("cuda")) == workspace
    held()


class FakeCurrentDevice:
    """torch.cuda's current device and its ``torch.cuda.device`` context manager, for GPUs that
    are not there: ``index`` is the current device (0 unless a block makes another current)."""

    def __init__(self, monkeypatch):
        self.index = 0
        fake = self

        class device:  # noqa: N801 -- stands in for torch.cuda.device
            def __init__(self, device):
                self.idx = torch._utils._get_device_index(device, optional=True)

            def __enter__(self):
                self.prev, fake.index = fake.index, self.idx
                return self

            def __exit__(self, *exc):
                fake.index = self.prev

        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.index)
        monkeypatch.setattr(torch.cuda, "device", device)


def test_median_ms_times_on_the_tensors_device_not_the_current_one(monkeypatch):
    """do_bench records its events on the current device's stream: a benchmark of tensors on
    cuda:1 while cuda:0 is current must make cuda:1 current for it (and for the warm-up)."""
    import triton.testing

    from benchmarks.common.measure import median_ms

    current = FakeCurrentDevice(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    timed_on, called_on = [], []

    def do_bench(fn, **kwargs):
        timed_on.append(current.index)
        fn()
        return 1.5

    monkeypatch.setattr(triton.testing, "do_bench", do_bench)
    assert median_ms(lambda: called_on.append(current.index), torch.device("cuda", 1)) == 1.5
    assert timed_on == [1] and called_on == [1, 1]
    assert current.index == 0  # the caller's current device, as it was


# --- kernels: what a GPU may do that the interpreter does not ----------------------------------


def additive_inputs(value_dim, a=8, len_q=7, len_k=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    qf = torch.randn(2, 2, len_q, a, generator=gen)
    kf = torch.randn(2, 2, len_k, a, generator=gen)
    w = torch.randn(2, a, generator=gen)
    v = torch.randn(2, 2, len_k, value_dim, generator=gen)
    return [t.requires_grad_() for t in (qf, kf, w, v)]


def outputs_and_grads(fn, inputs):
    out = fn(*inputs)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(9)))
    return [out.detach(), *(t.grad for t in inputs)]


@pytest.mark.slow  # ~45 s on a loaded 2-core machine
@pytest.mark.interpreter_only  # conftest: skipped on a CUDA host
def test_masked_loads_never_read_the_undefined_lanes(monkeypatch):
    """A masked tl.load without ``other=`` returns undefined values in masked-out lanes (Triton's
    specification; the interpreter happens to give zeros, a GPU need not). Poisoning those lanes
    with NaN must change nothing: with a value dim that is not a power of two (12, padded to 16)
    and ragged lengths, the padding lanes of v and dO feed the sums of dQ, dK and dw."""
    from triton.runtime import interpreter

    from kernels import additive_attention, flash_attention

    def run_both():
        gen = torch.Generator().manual_seed(3)
        qkv = [torch.randn(2, 3, n, 12, generator=gen).requires_grad_() for n in (7, 9, 9)]
        return (
            outputs_and_grads(additive_attention, additive_inputs(value_dim=12)),
            outputs_and_grads(flash_attention, qkv),
        )

    expected = run_both()
    real_load = interpreter.InterpreterBuilder.create_masked_load

    def load_nan_where_masked(self, ptrs, mask, other, *args):
        if other is None:
            dtype_tt = ptrs.get_element_ty()
            dtype_np = interpreter._get_np_dtype(dtype_tt)
            if dtype_np.kind == "f":
                other = interpreter.TensorHandle(
                    interpreter.np.full(ptrs.data.shape, float("nan"), dtype=dtype_np), dtype_tt
                )
        return real_load(self, ptrs, mask, other, *args)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_masked_load", load_nan_where_masked)
    for want, got in zip(expected, run_both(), strict=True):
        for a, b in zip(want, got, strict=True):
            assert not b.isnan().any()
            torch.testing.assert_close(b, a)


def test_the_device_guard_makes_the_first_cuda_tensors_device_current(monkeypatch):
    """Triton launches on the current device: the guard switches to the inputs' device (a
    stand-in with a cuda:1 device here), and does nothing for CPU tensors."""
    from types import SimpleNamespace

    from kernels import ops

    entered = []

    class FakeDevice:  # torch.cuda.device(d): a context manager that makes d current
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "device", FakeDevice)
    with ops.device_guard(torch.zeros(1), None, 0.5):
        pass
    assert entered == []
    on_gpu1 = SimpleNamespace(device=torch.device("cuda", 1))
    with ops.device_guard(None, on_gpu1, SimpleNamespace(device=torch.device("cuda", 0))):
        pass
    assert entered == [torch.device("cuda", 1)]


def test_every_kernel_operator_runs_inside_the_device_guard(monkeypatch, kernel_device):
    """Both kernels' forward and backward operators call their launchers inside device_guard,
    given the operator's inputs."""
    from kernels import additive_attention, flash_attention, ops

    guarded, real_guard = [], ops.device_guard

    def recording_guard(*args):
        guarded.append([a for a in args if isinstance(a, torch.Tensor)])
        return real_guard(*args)

    monkeypatch.setattr(ops, "device_guard", recording_guard)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 3, 16, generator=gen).to(kernel_device) for _ in range(3))
    for t in (q, k, v):
        t.requires_grad_()
    flash_attention(q, k, v).sum().backward()
    additive = additive_inputs(value_dim=16, len_q=3, len_k=3)
    additive_attention(
        *(t.detach().to(kernel_device).requires_grad_() for t in additive)
    ).sum().backward()
    assert len(guarded) == 4  # two operators, forward and backward each
    assert all(tensors and tensors[0].device.type == kernel_device.type for tensors in guarded)


def test_the_dropout_keep_mask_launches_inside_the_device_guard_of_its_output(monkeypatch):
    """dropout_keep_mask (the tests' view of dropout's mask) launches its own kernel: on a GPU
    that must happen with the mask's device current, as for the operators above."""
    import contextlib

    from kernels.common import runtime
    from kernels.flash_attention import dropout

    guarded, launched_inside = [], []

    @contextlib.contextmanager
    def recording_guard(*args):
        guarded.append(args[0].device)
        yield

    monkeypatch.setattr(dropout.ops, "device_guard", recording_guard)
    hook = runtime.Hook(lambda launch: launched_inside.append(bool(guarded)))
    with runtime.hooked(hook):
        dropout.dropout_keep_mask(1, 2, 1, 2, 5, 7, 0.3, "cpu")
    assert guarded == [torch.device("cpu")] and launched_inside == [True]
