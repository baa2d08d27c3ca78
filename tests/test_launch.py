"""The choice of tile sizes, warps and stages (kernels.common.tuning), without a GPU.

What a choice compiles to is checked by the compile gate (tests/test_compile_gate.py); here:
the pruning before anything is compiled, the order of the candidates, how the tuner passes over
configurations that spill or fail, how many launches a choice costs, and how choices are kept
(in memory, on disk, per GQA group, during a CUDA-graph capture).
"""

import importlib
from types import SimpleNamespace

import pytest
import torch

from kernels.common import runtime, tuning
from kernels.common.tuning import LaunchConfig

fa_configs = importlib.import_module("kernels.flash_attention.configs")
flash_attention = importlib.import_module("kernels.flash_attention.function").flash_attention
additive_attention = importlib.import_module(
    "kernels.additive_attention.function"
).additive_attention


def configs_on(arch, kernel, block_d, dtype):
    """The launcher's candidates as it would list them on a GPU of compute capability arch."""
    return fa_configs.candidates_for(kernel, arch, block_d, dtype)


@pytest.mark.parametrize("arch", tuning.CLAIMED_ARCHS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("block_d", [16, 64, 128, 256])
@pytest.mark.parametrize("kernel", sorted(fa_configs.TILES))
def test_candidates_fit_the_architectures_shared_memory_before_anything_compiles(
    kernel, block_d, dtype, arch, monkeypatch
):
    configs = configs_on(arch, kernel, block_d, dtype)
    assert 1 <= len(configs) <= tuning.MAX_CANDIDATES
    limit = tuning.shared_memory_limit(arch)
    for config in configs:
        assert fa_configs.TILES[kernel].shared_memory(config, block_d, dtype.itemsize) <= limit
        assert config.block_m >= 16 and config.block_n >= 16  # tl.dot's minimum


def test_a_consumer_gpu_gets_no_config_that_only_a_datacenter_gpu_can_hold():
    tile, d = fa_configs.TILES["fwd"], 128
    hopper = set(configs_on(90, "fwd", d, torch.bfloat16))
    rtx = configs_on(86, "fwd", d, torch.bfloat16)
    too_big = [c for c in hopper if tile.shared_memory(c, d, 2) > tuning.shared_memory_limit(86)]
    assert too_big, "the test needs an H100 candidate that an RTX 30xx cannot hold"
    assert rtx and not set(too_big) & set(rtx)


def test_length_buckets_are_powers_of_two_so_new_lengths_reuse_a_tuned_choice():
    assert [tuning.length_bucket(n) for n in (0, 1, 2, 3, 100, 128, 129, 5000)] == [
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
    monkeypatch.setattr(tuning, "_CHOICES", {})
    fake = FakeKernels(failing={CONFIGS[0]}, spilling={CONFIGS[1]})
    assert tuning.pick("key", CONFIGS, fake) == CONFIGS[2]
    calls = len(fake.calls)
    assert fake.calls == CONFIGS  # the first that ran without spilling was the call's launch
    assert tuning.pick("key", CONFIGS, fake) == CONFIGS[2]  # remembered: nothing tried again
    assert fake.calls[calls:] == [CONFIGS[2]]


def test_tuning_times_every_runnable_config_and_keeps_the_fastest(monkeypatch):
    monkeypatch.setenv("FLASH_ATTENTION_AUTOTUNE", "1")
    monkeypatch.setattr(tuning, "_CHOICES", {})
    times = {CONFIGS[1]: 2.0, CONFIGS[2]: 1.0}
    timed = []

    def fake_do_bench(fn, warmup, rep):
        fn()  # the timed call launches; the fake records which config it ran
        timed.append(fake.calls[-1])
        return times[fake.calls[-1]]

    import triton.testing

    monkeypatch.setattr(triton.testing, "do_bench", fake_do_bench)
    fake = FakeKernels(failing={CONFIGS[0]})
    assert tuning.pick(("fwd", 64), CONFIGS, fake) == CONFIGS[2]
    assert timed == [CONFIGS[1], CONFIGS[2]]
    assert tuning.tuned_configs() == {("fwd", 64): CONFIGS[2]}
    # each runnable config launched once to compile and check spills, then once per do_bench
    # (here one call each); the fastest ran last, so the call's own launch was its
    assert fake.calls == [CONFIGS[0], CONFIGS[1], CONFIGS[1], CONFIGS[2], CONFIGS[2]]


def test_when_the_fastest_config_did_not_run_last_it_runs_once_more(monkeypatch):
    """The outputs must come from the chosen config, as every later call's do."""
    import triton.testing

    monkeypatch.setenv("FLASH_ATTENTION_AUTOTUNE", "1")
    monkeypatch.setattr(tuning, "_CHOICES", {})
    times = {CONFIGS[0]: 1.0, CONFIGS[1]: 2.0, CONFIGS[2]: 3.0}
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: times[fake.calls[-1]])
    fake = FakeKernels()
    assert tuning.pick("k", CONFIGS, fake) == CONFIGS[0]
    assert fake.calls == [*CONFIGS, CONFIGS[0]]


@pytest.mark.pick_launch_count  # it counts pick's own launches: the rehearsal adds none
def test_without_tuning_the_choices_own_launch_is_the_calls_only_launch(monkeypatch):
    """With autotuning off the first config is launched once, not once to
    choose it and once more to run the call (a GPU test counting launches saw two)."""
    monkeypatch.setenv("FLASH_ATTENTION_AUTOTUNE", "0")
    monkeypatch.setattr(tuning, "_CHOICES", {})
    launched = []

    def on_launch(launch):
        launched.append(launch.meta["BLOCK_M"])
        return SimpleNamespace(n_spills=0)

    with runtime.hooked(runtime.Hook(on_launch)):
        config = tuning.launch_tuned(
            "kernel", "key", CONFIGS, lambda c: (2, 3), args=("x",), meta={"HAS_MASK": True}
        )
        assert config == CONFIGS[0] and launched == [CONFIGS[0].block_m]
        tuning.launch_tuned("kernel", "key", CONFIGS, lambda c: (2, 3), ("x",), {})
    assert launched == [CONFIGS[0].block_m] * 2  # the kept choice: again one launch


def test_a_config_that_spills_is_used_only_when_nothing_else_runs(monkeypatch):
    monkeypatch.setenv("FLASH_ATTENTION_AUTOTUNE", "0")
    monkeypatch.setattr(tuning, "_CHOICES", {})
    fake = FakeKernels(failing=set(CONFIGS[:2]), spilling={CONFIGS[2]})
    assert tuning.pick("k", CONFIGS, fake) == CONFIGS[2]
    spill_then_fail = FakeKernels(spilling={CONFIGS[0]}, failing=set(CONFIGS[1:]))
    assert tuning.pick("k3", CONFIGS, spill_then_fail) == CONFIGS[0]
    with pytest.raises(RuntimeError, match="no launch configuration"):
        tuning.pick("k2", CONFIGS, FakeKernels(failing=set(CONFIGS)))


@pytest.mark.interpreter_only  # conftest: skipped where the kernels are compiled (a CUDA host)
def test_the_interpreter_uses_one_config_and_never_tunes():
    q = torch.empty(1, 1, 8, 64)
    assert fa_configs.for_kernel("fwd", q, 64) == [tuning.INTERPRETER_CONFIG]


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
    assert min(sizes) > max(tuning.SHARED_MEMORY_PER_BLOCK.values())  # none fits anywhere
    assert tuning.candidates(tile, huge, 90, 128, torch.float32) == [huge[2]]  # the smallest


def test_an_unknown_architecture_gets_the_smallest_shared_memory_limit():
    smallest = min(tuning.SHARED_MEMORY_PER_BLOCK.values())
    for unknown in (75, 100, 120):
        assert tuning.shared_memory_limit(unknown) == smallest
    tile, d = fa_configs.TILES["fwd"], 128
    unknown = configs_on(75, "fwd", d, torch.bfloat16)
    assert unknown == configs_on(86, "fwd", d, torch.bfloat16)  # as an RTX 30xx
    assert all(tile.shared_memory(c, d, 2) <= smallest for c in unknown)


def test_one_config_is_launched_once_without_timing_or_remembering(monkeypatch):
    monkeypatch.setenv("FLASH_ATTENTION_AUTOTUNE", "1")
    monkeypatch.setattr(tuning, "_CHOICES", {})
    fake = FakeKernels(spilling={CONFIGS[0]})  # would spill: with no other config, it is used
    assert tuning.pick("single", CONFIGS[:1], fake) == CONFIGS[0]
    assert fake.calls == CONFIGS[:1] and tuning.tuned_configs() == {}


@pytest.mark.parametrize("setting", ["0", "false", "FALSE", "off", "Off", "no", " no "])
def test_autotuning_is_off_for_every_spelling_of_off(monkeypatch, setting):
    monkeypatch.setenv("FLASH_ATTENTION_AUTOTUNE", setting)
    assert not tuning.autotune_enabled()


@pytest.mark.parametrize("setting", ["1", "true", "on", "yes"])
def test_autotuning_is_on_otherwise(monkeypatch, setting):
    monkeypatch.setenv("FLASH_ATTENTION_AUTOTUNE", setting)
    assert tuning.autotune_enabled()


@pytest.fixture
def capturing(monkeypatch):
    """A CUDA-graph capture in progress, as the tuner sees one."""
    import triton.testing

    def no_timing(*args, **kwargs):
        raise AssertionError("do_bench called during a CUDA-graph capture")

    monkeypatch.setenv("FLASH_ATTENTION_AUTOTUNE", "1")
    monkeypatch.setattr(tuning, "_CHOICES", {})
    monkeypatch.setattr(triton.testing, "do_bench", no_timing)
    monkeypatch.setattr(runtime, "capturing", lambda: True)


def test_inside_a_cuda_graph_capture_only_the_first_candidate_launches_and_is_not_kept(
    capturing,
):
    """do_bench synchronizes, which a capture forbids, and every launch inside it is recorded
    into the graph and repeated at each replay: the call's one launch, with the first
    candidate, untried others and no spill check; nothing kept, so a call outside the capture
    still tunes."""
    fake = FakeKernels(spilling={CONFIGS[0]})
    assert tuning.pick("captured", CONFIGS, fake) == CONFIGS[0]
    assert fake.calls == CONFIGS[:1]
    assert tuning.tuned_configs() == {}


@pytest.mark.parametrize("tuned", [True, False])
def test_inside_a_cuda_graph_capture_a_kept_choice_is_used(capturing, tuned):
    tuning._CHOICES["captured", tuned] = CONFIGS[2]
    fake = FakeKernels()
    assert tuning.pick("captured", CONFIGS, fake) == CONFIGS[2]
    assert fake.calls == CONFIGS[2:]


def test_batch_times_heads_goes_on_the_grid_axis_without_the_65535_limit():
    assert runtime.grid(1024 * 64, 3) == (65536, 3)  # over 65,535 on axis 0: fine
    with pytest.raises(ValueError, match=r"axis 1 \(blocks of rows.*70,000 blocks.*65,535"):
        runtime.grid(8, 70_000)
    with pytest.raises(ValueError, match=r"axis 0 \(batch \* heads\)"):
        runtime.grid(2**31, 1)
    # the launcher's refusal reaches the caller, not "no launch configuration could run"
    with pytest.raises(ValueError, match="65,535"):
        tuning.pick("too-long", CONFIGS, lambda config: runtime.grid(8, 70_000))


@pytest.fixture(autouse=True)
def no_tune_cache_file(monkeypatch):
    """Choices stay in memory unless a test keeps them on disk itself."""
    monkeypatch.delenv(tuning.TUNE_CACHE_ENV, raising=False)
    monkeypatch.setattr(tuning, "_loaded_from", set())


# --- choices kept on disk ------------------------------------------------------------------


def timed_once(monkeypatch, times):
    """A do_bench stand-in with these timings per config; records each config it timed."""
    import triton.testing

    timed = []

    def fake_do_bench(fn, warmup, rep):
        fn()
        config = fn.__defaults__[0]  # pick's lambda binds its config as a default
        timed.append(config)
        return times[config]

    monkeypatch.setattr(triton.testing, "do_bench", fake_do_bench)
    return timed


def test_a_second_run_with_the_tune_cache_neither_retunes_nor_differs(monkeypatch, tmp_path):
    """FLASH_ATTENTION_TUNE_CACHE: the first run's timed choice is written to disk; a fresh
    process (choices in memory cleared) reads it and launches it once, timing nothing, even
    where its own timings would have chosen another config."""
    monkeypatch.setenv("FLASH_ATTENTION_AUTOTUNE", "1")
    monkeypatch.setenv(tuning.TUNE_CACHE_ENV, str(tmp_path / "tuned" / "choices.json"))
    monkeypatch.setattr(tuning, "_CHOICES", {})
    key = ("fwd", "NVIDIA H200", "torch.bfloat16", (("HAS_MASK", True),), (("group", 2),), 64, 128)
    timed_once(monkeypatch, {CONFIGS[0]: 3.0, CONFIGS[1]: 1.0, CONFIGS[2]: 2.0})
    assert tuning.pick(key, CONFIGS, FakeKernels()) == CONFIGS[1]
    assert (tmp_path / "tuned" / "choices.json").exists()
    assert [p.name for p in (tmp_path / "tuned").iterdir()] == ["choices.json"]  # no temp left

    monkeypatch.setattr(tuning, "_CHOICES", {})  # the second run: a new process
    monkeypatch.setattr(tuning, "_loaded_from", set())
    timed = timed_once(monkeypatch, {CONFIGS[0]: 1.0, CONFIGS[1]: 3.0, CONFIGS[2]: 2.0})
    fake = FakeKernels()
    assert tuning.pick(key, CONFIGS, fake) == CONFIGS[1]
    assert timed == [] and fake.calls == [CONFIGS[1]]


def test_saved_choices_load_back_under_the_same_keys(tmp_path, monkeypatch):
    monkeypatch.setattr(tuning, "_CHOICES", {})
    q = torch.empty(1, 4, 8, 16, dtype=torch.bfloat16)
    key = tuning.tuning_key("dkdv", q, {"IS_CAUSAL": True, "PRECISION": "tf32"}, 8, 300, group=2)
    tuning._CHOICES[key, True] = CONFIGS[2]
    tuning._CHOICES[key, False] = CONFIGS[0]
    tuning.save_choices(tmp_path / "choices.json")
    monkeypatch.setattr(tuning, "_CHOICES", {})
    assert tuning.load_choices(tmp_path / "choices.json") == 2
    assert tuning._CHOICES == {(key, True): CONFIGS[2], (key, False): CONFIGS[0]}
    assert tuning.load_choices(tmp_path / "missing.json") == 0


def test_a_kept_choice_that_is_no_longer_a_candidate_is_chosen_again(monkeypatch):
    """A choices file from an older launch table must not run a config the table dropped."""
    monkeypatch.setenv("FLASH_ATTENTION_AUTOTUNE", "0")
    monkeypatch.setattr(tuning, "_CHOICES", {("k", False): LaunchConfig(16, 16, 4, 1)})
    fake = FakeKernels()
    assert tuning.pick("k", CONFIGS, fake) == CONFIGS[0]
    assert fake.calls == CONFIGS[:1]


# --- the launchers, through the one launch function -----------------------------------------


def recorded_launches():
    """A hook that records every (kernel name, grid) and still launches."""
    launches = []

    def record(launch):
        launches.append((launch.kernel.__name__, launch.grid))
        return launch.run()

    return launches, runtime.Hook(record)


@pytest.mark.interpreter_only  # conftest: skipped where the kernels are compiled (a CUDA host)
def test_every_launch_puts_batch_times_heads_on_grid_axis_0():
    """b * h = 6 on axis 0 and the blocks of rows on axis 1, for all four kernels of each
    kernel (forward, delta, dK/dV, dQ); the kernels read program_id(0) as b * h (a swapped
    read would give wrong results, which the kernel tests would catch)."""
    for call, inputs in (
        (flash_attention, [torch.randn(2, 3, 5, 16) for _ in range(3)]),
        (additive_attention, [torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8),
                              torch.randn(3, 8), torch.randn(2, 3, 5, 16)]),
    ):  # fmt: skip
        launches, hook = recorded_launches()
        inputs = [t.requires_grad_() for t in inputs]
        with runtime.hooked(hook):
            call(*inputs).sum().backward()
        assert len(launches) == 4, launches
        assert all(grid == (6, 1) for _, grid in launches), launches


def recorded_keys(monkeypatch):
    """Every tuning key the launchers pick a config for (still picking)."""
    keys, real_pick = [], tuning.pick

    def record(key, configs, run):
        keys.append(key)
        return real_pick(key, configs, run)

    monkeypatch.setattr(tuning, "pick", record)
    return keys


@pytest.mark.interpreter_only  # conftest: skipped where the kernels are compiled (a CUDA host)
@pytest.mark.parametrize("empty", ["len_q", "batch"])
def test_an_empty_grid_launches_and_tunes_nothing(monkeypatch, empty):
    """A call with no query rows (or no batch) has nothing to compute: no launch, and no tuning
    (a tuned choice for it would be kept for the one-token calls of the same length bucket)."""
    picked = recorded_keys(monkeypatch)
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
    keys = recorded_keys(monkeypatch)
    for a in (8, 32):
        inputs = [torch.randn(1, 1, 4, a), torch.randn(1, 1, 4, a), torch.randn(1, a)]
        additive_attention(*inputs, torch.randn(1, 1, 4, 16))
    assert len(keys) == 2 and keys[0] != keys[1]


@pytest.mark.interpreter_only  # conftest: skipped where the kernels are compiled (a CUDA host)
def test_the_flash_tuning_key_tells_gqa_groups_apart(monkeypatch):
    """The dK/dV pass loops over a GQA group's query heads inside one
    program (more live registers and work per program), so a grouped call must not reuse a
    choice made (and spill-checked) without groups, at the same shapes otherwise."""
    keys = recorded_keys(monkeypatch)
    for heads_kv in (4, 2, 1):
        q = torch.randn(1, 4, 8, 16, requires_grad=True)
        k, v = (torch.randn(1, heads_kv, 8, 16) for _ in range(2))
        flash_attention(q, k, v, enable_gqa=True).sum().backward()
    by_pass = {}
    for key in keys:
        by_pass.setdefault(key[0], set()).add(key)
    assert {name: len(found) for name, found in by_pass.items()} == {"fwd": 3, "dkdv": 3, "dq": 3}


def test_a_hook_receives_every_launch_and_is_removed_after_its_block():
    """The one recording hook (the compile gate, the warm-up and tests install one): it sees
    each launch of a non-empty grid, answers the architecture, and is gone after the block."""
    seen = []
    hook = runtime.Hook(seen.append, arch=86)
    with runtime.hooked(hook):
        assert runtime.capability(torch.device("meta")) == 86
        assert runtime.launch("kernel", (2, 3), "x", BLOCK_M=16) is None
        assert runtime.launch("kernel", (0, 3), "x", BLOCK_M=16) is None  # empty: not launched
    assert seen == [runtime.Launch("kernel", (2, 3), ("x",), {"BLOCK_M": 16})]
    assert runtime.active_hook() == runtime.Hook()


def test_a_file_that_is_not_a_choices_file_is_a_clear_error(tmp_path):
    path = tmp_path / "choices.json"
    for text in ("{not json", '{"version": 2, "choices": []}', '{"version": 1, "choices": [{}]}'):
        path.write_text(text)
        with pytest.raises(ValueError, match="not a file of launch choices written by save"):
            tuning.load_choices(path)
