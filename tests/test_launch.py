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
flash_attention = importlib.import_module("kernels.flash_attention.function").flash_attention
additive_attention = importlib.import_module(
    "kernels.additive_attention.function"
).additive_attention


def configs_on(arch, kernel, block_d, dtype, monkeypatch):
    """The launcher's candidates as it would list them on a GPU of compute capability arch."""
    monkeypatch.setattr(fa_configs, "_INTERPRETED", False)
    monkeypatch.setattr(launch, "capability", lambda device: arch)
    return fa._configs(kernel, torch.empty(1, 1, 1, block_d, dtype=dtype), block_d)


@pytest.mark.parametrize("arch", launch.CLAIMED_ARCHS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("block_d", [16, 64, 128, 256])
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
    assert [launch.length_bucket(n) for n in (0, 1, 2, 3, 100, 128, 129, 5000)] == [
        0, 1, 2, 4, 128, 128, 256, 8192,
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


@pytest.mark.interpreter_only  # conftest: skipped where the kernels are compiled (a CUDA host)
def test_the_interpreter_uses_one_config_and_never_tunes():
    q = torch.empty(1, 1, 8, 64)
    assert fa._configs("fwd", q, 64) == [launch.INTERPRETER_CONFIG]


# Bytes one program holds, counted by hand from the kernels (not from TileShape): 16-bit tiles
# of (rows x BLOCK_D); a streamed tile once per pipeline stage; one (BLOCK_M x BLOCK_N) score
# tile; 1 KiB of barriers.
HAND_COUNTED = [
    # forward: the query tile stays; K and V blocks stream, 3 stages
    # 2 B * (128*128 Q + 3 * (64*128 K + 64*128 V) + 128*64 S) + 1024
    ("fwd", LaunchConfig(128, 64, 8, 3), 128, torch.bfloat16, 2 * (16384 + 49152 + 8192) + 1024),
    # dK/dV: K and V blocks of 64 keys stay; Q and dO blocks of 32 queries stream, 2 stages
    # 2 B * (2 * 64*128 + 2 * (32*128 + 32*128) + 32*64) + 1024
    ("dkdv", LaunchConfig(32, 64, 8, 2), 128, torch.float16, 2 * (16384 + 16384 + 2048) + 1024),
    # dQ in float32: Q and dO stay; K and V stream, 2 stages; d = 40 padded to 64
    # 4 B * (2 * 64*64 + 2 * (32*64 + 32*64) + 64*32) + 1024
    ("dq", LaunchConfig(64, 32, 4, 2), 64, torch.float32, 4 * (8192 + 8192 + 2048) + 1024),
]


@pytest.mark.parametrize("kernel,config,block_d,dtype,expected", HAND_COUNTED, ids=str)
def test_shared_memory_estimate_equals_the_hand_counted_tiles(
    kernel, config, block_d, dtype, expected
):
    assert fa_configs.TILES[kernel].shared_memory(config, block_d, dtype.itemsize) == expected


def test_when_no_config_fits_the_smallest_is_kept_as_the_floor():
    tile = fa_configs.TILES["fwd"]
    huge = [
        LaunchConfig(256, 256, 8, 4),
        LaunchConfig(128, 256, 8, 3),
        LaunchConfig(256, 128, 8, 4),
    ]
    sizes = [tile.shared_memory(c, 128, 4) for c in huge]
    assert min(sizes) > max(launch.SHARED_MEMORY_PER_BLOCK.values())  # none fits anywhere
    assert launch.candidates(tile, huge, 90, 128, torch.float32) == [huge[2]]  # the smallest


def test_an_unknown_architecture_gets_the_smallest_shared_memory_limit(monkeypatch):
    smallest = min(launch.SHARED_MEMORY_PER_BLOCK.values())
    for unknown in (75, 100, 120):
        assert launch.shared_memory_limit(unknown) == smallest
    tile, d = fa_configs.TILES["fwd"], 128
    unknown = configs_on(75, "fwd", d, torch.bfloat16, monkeypatch)
    assert unknown == configs_on(86, "fwd", d, torch.bfloat16, monkeypatch)  # as an RTX 30xx
    assert all(tile.shared_memory(c, d, 2) <= smallest for c in unknown)


def test_one_config_is_returned_without_launching_timing_or_remembering(monkeypatch):
    monkeypatch.setenv("FLASH_ATTENTION_AUTOTUNE", "1")
    monkeypatch.setattr(launch, "_TUNED", {})
    fake = FakeKernels(spilling={CONFIGS[0]})  # would spill: with no other config, it is used
    assert launch.pick("single", CONFIGS[:1], fake) == CONFIGS[0]
    assert fake.calls == [] and launch.tuned_configs() == {}


@pytest.mark.parametrize("setting", ["0", "false", "FALSE", "off", "Off", "no", " no "])
def test_autotuning_is_off_for_every_spelling_of_off(monkeypatch, setting):
    monkeypatch.setenv("FLASH_ATTENTION_AUTOTUNE", setting)
    assert not launch.autotune_enabled()


@pytest.mark.parametrize("setting", ["1", "true", "on", "yes"])
def test_autotuning_is_on_otherwise(monkeypatch, setting):
    monkeypatch.setenv("FLASH_ATTENTION_AUTOTUNE", setting)
    assert launch.autotune_enabled()


def test_inside_a_cuda_graph_capture_nothing_is_timed_and_the_first_spill_free_config_runs(
    monkeypatch,
):
    """do_bench synchronizes, which a CUDA-graph capture forbids: tuning waits for a call
    outside the capture (it is cached apart from the untuned choice)."""
    import triton.testing

    def no_timing(*args, **kwargs):
        raise AssertionError("do_bench called during a CUDA-graph capture")

    monkeypatch.setenv("FLASH_ATTENTION_AUTOTUNE", "1")
    monkeypatch.setattr(launch, "_TUNED", {})
    monkeypatch.setattr(triton.testing, "do_bench", no_timing)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    fake = FakeKernels(spilling={CONFIGS[0]})
    assert launch.pick("captured", CONFIGS, fake) == CONFIGS[1]
    assert fake.calls == CONFIGS[:2]


def test_batch_times_heads_goes_on_the_grid_axis_without_the_65535_limit():
    assert launch.grid(1024 * 64, 3) == (65536, 3)  # over 65,535 on axis 0: fine
    with pytest.raises(ValueError, match=r"axis 1 \(blocks of rows.*70,000 blocks.*65,535"):
        launch.grid(8, 70_000)
    with pytest.raises(ValueError, match=r"axis 0 \(batch \* heads\)"):
        launch.grid(2**31, 1)
    # the launcher's refusal reaches the caller, not "no launch configuration could run"
    with pytest.raises(ValueError, match="65,535"):
        launch.pick("too-long", CONFIGS, lambda config: launch.grid(8, 70_000))


def recorded_launches(monkeypatch, module):
    """Every (kernel name, grid) the module launches, still launching."""
    launches, real = [], module._launch

    def record(kernel, grid, *args, **meta):
        launches.append((kernel.__name__, grid))
        return real(kernel, grid, *args, **meta)

    monkeypatch.setattr(module, "_launch", record)
    return launches


@pytest.mark.interpreter_only  # conftest: skipped where the kernels are compiled (a CUDA host)
def test_every_launch_puts_batch_times_heads_on_grid_axis_0(monkeypatch):
    """b * h = 6 on axis 0 and the blocks of rows on axis 1, for all four kernels of each
    module (forward, delta, dK/dV, dQ); the kernels read program_id(0) as b * h (a swapped
    read would give wrong results, which the kernel tests would catch)."""
    ad = importlib.import_module("kernels.additive_attention.launcher")
    for module, call, inputs in (
        (fa, flash_attention, [torch.randn(2, 3, 5, 16) for _ in range(3)]),
        (ad, additive_attention, [torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8),
                                     torch.randn(3, 8), torch.randn(2, 3, 5, 16)]),
    ):  # fmt: skip
        launches = recorded_launches(monkeypatch, module)
        inputs = [t.requires_grad_() for t in inputs]
        call(*inputs).sum().backward()
        assert len(launches) == 4, launches
        assert all(grid == (6, 1) for _, grid in launches), launches


@pytest.mark.interpreter_only  # conftest: skipped where the kernels are compiled (a CUDA host)
@pytest.mark.parametrize("empty", ["len_q", "batch"])
def test_an_empty_grid_launches_and_tunes_nothing(monkeypatch, empty):
    """A call with no query rows (or no batch) has nothing to compute: no launch, and no tuning
    (a tuned choice for it would be kept for the one-token calls of the same length bucket)."""

    picked, real_pick = [], launch.pick

    def record(key, configs, run):
        picked.append(key)
        return real_pick(key, configs, run)

    monkeypatch.setattr(launch, "pick", record)
    b, len_q = (2, 0) if empty == "len_q" else (0, 4)
    q = torch.randn(b, 3, len_q, 16, requires_grad=True)
    k, v = (torch.randn(b, 3, 5, 16, requires_grad=True) for _ in range(2))
    out = flash_attention(q, k, v)
    out.sum().backward()
    assert out.shape == q.shape and q.grad.shape == q.shape
    qf, kf = torch.randn(b, 3, len_q, 8), torch.randn(b, 3, 5, 8)
    w = torch.randn(3, 8)
    if empty == "batch":  # no keys either: dK, dV and dw are empty sums
        kf, v = torch.randn(b, 3, 0, 8), torch.randn(b, 3, 0, 16)
    inputs = [t.requires_grad_() for t in (qf, kf, w, v)]
    additive_attention(*inputs).sum().backward()
    assert torch.equal(inputs[2].grad, torch.zeros_like(w))
    # Only the passes over keys have work without queries (they write zeros), under the
    # length bucket 0, which no call with queries shares.
    expected = {"dkdv", "_additive_bwd_dkdv"} if empty == "len_q" else set()
    assert {key[0] for key in picked} == expected
    assert all(0 in key[-2:] for key in picked)


@pytest.mark.interpreter_only  # conftest: skipped where the kernels are compiled (a CUDA host)
def test_the_additive_tuning_key_tells_feature_sizes_apart(monkeypatch):
    """BLOCK_A (the feature size's padding) changes the compiled kernel: two feature sizes in
    one length bucket must not share a tuned choice."""
    keys, real_pick = [], launch.pick

    def record(key, configs, run):
        keys.append(key)
        return real_pick(key, configs, run)

    monkeypatch.setattr(launch, "pick", record)
    for a in (8, 32):
        inputs = [torch.randn(1, 1, 4, a), torch.randn(1, 1, 4, a), torch.randn(1, a)]
        additive_attention(*inputs, torch.randn(1, 1, 4, 16))
    assert len(keys) == 2 and keys[0] != keys[1]
