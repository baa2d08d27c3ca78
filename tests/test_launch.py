"""The launcher's choice of tile sizes, warps and stages, without a GPU.

What a choice compiles to is checked by the compile gate (tests/test_compile_gate.py); here:
the pruning before anything is compiled, the order of the candidates, and how the tuner
passes over configurations that spill or fail and remembers what it chose.
"""

import importlib
from types import SimpleNamespace

import pytest
import torch

from kernels import launch
from kernels.launch import LaunchConfig

fa = importlib.import_module("kernels.flash_attention.launcher")
fa_configs = importlib.import_module("kernels.flash_attention.configs")


def configs_on(arch, kernel, block_d, dtype, monkeypatch):
    """The launcher's candidates as it would list them on a GPU of compute capability arch."""
    monkeypatch.setattr(fa_configs, "_INTERPRETED", False)
    monkeypatch.setattr(launch, "capability", lambda device: arch)
    return fa._configs(kernel, torch.empty(1, 1, 1, block_d, dtype=dtype), block_d)


@pytest.mark.parametrize("arch", launch.CLAIMED_ARCHS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("block_d", [16, 64, 128])
@pytest.mark.parametrize("kernel", sorted(fa_configs.TILES))
def test_candidates_fit_the_architectures_shared_memory_before_anything_compiles(
    kernel, block_d, dtype, arch, monkeypatch
):
    configs = configs_on(arch, kernel, block_d, dtype, monkeypatch)
    assert 1 <= len(configs) <= launch.MAX_CANDIDATES
    limit = launch.shared_memory_limit(arch)
    for config in configs:
        assert fa_configs.TILES[kernel].shared_memory(config, block_d, dtype.itemsize) <= limit
        assert config.block_m >= 16 and config.block_n >= 16  # tl.dot's minimum


def test_a_consumer_gpu_gets_no_config_that_only_a_datacenter_gpu_can_hold(monkeypatch):
    tile, d = fa_configs.TILES["fwd"], 128
    hopper = set(configs_on(90, "fwd", d, torch.bfloat16, monkeypatch))
    rtx = configs_on(86, "fwd", d, torch.bfloat16, monkeypatch)
    too_big = [c for c in hopper if tile.shared_memory(c, d, 2) > launch.shared_memory_limit(86)]
    assert too_big, "the test needs an H100 candidate that an RTX 30xx cannot hold"
    assert rtx and not set(too_big) & set(rtx)


def test_length_buckets_are_powers_of_two_so_new_lengths_reuse_a_tuned_choice():
    assert [launch.length_bucket(n) for n in (1, 2, 3, 100, 128, 129, 5000)] == [
        1, 2, 4, 128, 128, 256, 8192,
    ]  # fmt: skip


class FakeKernels:
    """launch(config) stand-in: some configs spill, some fail to compile; records calls."""

    def __init__(self, spilling=(), failing=()):
        self.spilling, self.failing, self.calls = set(spilling), set(failing), []

    def __call__(self, config):
        self.calls.append(config)
        if config in self.failing:
            raise RuntimeError("out of resource: shared memory")
        return SimpleNamespace(n_spills=8 if config in self.spilling else 0)


CONFIGS = [LaunchConfig(128, 64, 8, 3), LaunchConfig(64, 64, 4, 3), LaunchConfig(64, 32, 4, 2)]


def test_without_tuning_the_first_config_that_neither_fails_nor_spills_is_kept(monkeypatch):
    monkeypatch.setenv("FLASH_ATTENTION_AUTOTUNE", "0")
    monkeypatch.setattr(launch, "_TUNED", {})
    fake = FakeKernels(failing={CONFIGS[0]}, spilling={CONFIGS[1]})
    assert launch.pick("key", CONFIGS, fake) == CONFIGS[2]
    calls = len(fake.calls)
    assert launch.pick("key", CONFIGS, fake) == CONFIGS[2]  # remembered: nothing relaunched
    assert len(fake.calls) == calls


def test_tuning_times_every_runnable_config_and_keeps_the_fastest(monkeypatch):
    monkeypatch.setenv("FLASH_ATTENTION_AUTOTUNE", "1")
    monkeypatch.setattr(launch, "_TUNED", {})
    times = {CONFIGS[1]: 2.0, CONFIGS[2]: 1.0}
    timed = []

    def fake_do_bench(fn, warmup, rep):
        fn()  # the timed call launches; the fake records which config it ran
        timed.append(fake.calls[-1])
        return times[fake.calls[-1]]

    import triton.testing

    monkeypatch.setattr(triton.testing, "do_bench", fake_do_bench)
    fake = FakeKernels(failing={CONFIGS[0]})
    assert launch.pick(("fwd", 64), CONFIGS, fake) == CONFIGS[2]
    assert timed == [CONFIGS[1], CONFIGS[2]]
    assert launch.tuned_configs() == {("fwd", 64): CONFIGS[2]}


def test_a_config_that_spills_is_used_only_when_nothing_else_runs(monkeypatch):
    monkeypatch.setenv("FLASH_ATTENTION_AUTOTUNE", "0")
    monkeypatch.setattr(launch, "_TUNED", {})
    fake = FakeKernels(failing=set(CONFIGS[:2]), spilling={CONFIGS[2]})
    assert launch.pick("k", CONFIGS, fake) == CONFIGS[2]
    spill_then_fail = FakeKernels(spilling={CONFIGS[0]}, failing=set(CONFIGS[1:]))
    assert launch.pick("k3", CONFIGS, spill_then_fail) == CONFIGS[0]
    with pytest.raises(RuntimeError, match="no launch configuration"):
        launch.pick("k2", CONFIGS, FakeKernels(failing=set(CONFIGS)))


@pytest.mark.skipif(not fa._INTERPRETED, reason="the kernels are compiled here, not interpreted")
def test_the_interpreter_uses_one_config_and_never_tunes():
    q = torch.empty(1, 1, 8, 64)
    assert fa._configs("fwd", q, 64) == [launch.INTERPRETER_CONFIG]
