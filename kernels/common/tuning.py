"""Choosing a launch configuration: per GPU architecture, pruned, autotuned, kept.

One job: choose ``BLOCK_M``, ``BLOCK_N``, ``num_warps`` and ``num_stages`` for a kernel launch,
and launch it (:func:`launch_tuned`).

* Each kernel's ``configs`` module lists, per kernel, head-dim class and architecture class, a
  few configurations to tune over (best guess first), kept to those the ahead-of-time compile
  gate (:mod:`kernels.compile_gate`) measured to compile without register spills (the
  measurements are in ``docs/kernel.md``).
* :func:`candidates` prunes that list for one architecture, head dim and dtype *before anything
  is compiled*: a configuration whose estimated shared memory exceeds the architecture's
  per-block limit (:data:`SHARED_MEMORY_PER_BLOCK`: an RTX 30xx/40xx block gets 99 KB where an
  H100's gets 227 KB) is dropped. The estimate is a guide, not a bound (the compiler allocated
  up to 1.7x more in the full compile sweep), so the gate checks the real figure for every
  configuration left on every architecture we claim.
* :func:`pick` chooses on the first launch for a key (:func:`tuning_key`: kernel, GPU, dtype,
  constexprs, shape classes such as the GQA group, and the lengths rounded up to a power of
  two, so that a new length does not re-tune forever) and keeps the choice; later launches
  with that key reuse it. A candidate whose compiled kernel spills registers is passed over.
  With autotuning on the candidates are timed with ``triton.testing.do_bench``;
  ``FLASH_ATTENTION_AUTOTUNE=0`` (or false, off, no) turns timing off: the first candidate that
  compiles without spills is used. Under the Triton interpreter the kernels take
  :data:`INTERPRETER_CONFIG`, one config.
* Choices can be kept on disk: :func:`save_choices` and :func:`load_choices`, or
  ``FLASH_ATTENTION_TUNE_CACHE=path.json``, read before the first choice and rewritten
  (atomically) after each new one, so a second run of the same shapes neither re-tunes nor
  differs.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

import torch
import triton

from kernels.common import runtime

# The largest shared memory one block may opt into, in bytes, by compute capability
# (CUDA programming guide, "Technical Specifications per Compute Capability"). Architectures
# not listed get the smallest limit: the kernels are only claimed for these.
SHARED_MEMORY_PER_BLOCK = {
    80: 166912,  # A100
    86: 101376,  # RTX 30xx, A10, A40
    87: 166912,  # Jetson Orin
    89: 101376,  # RTX 40xx, L4, L40
    90: 232448,  # H100, H200
}
CLAIMED_ARCHS = (80, 86, 89, 90)
_SMALLEST_LIMIT = min(SHARED_MEMORY_PER_BLOCK.values())

# Autotuning compiles and times every candidate once per key; keep the list short.
MAX_CANDIDATES = 4
TUNE_CACHE_ENV = "FLASH_ATTENTION_TUNE_CACHE"


@dataclass(frozen=True)
class LaunchConfig:
    block_m: int  # query rows per tile
    block_n: int  # key rows per tile
    num_warps: int
    num_stages: int

    def meta(self) -> dict:
        return dict(
            BLOCK_M=self.block_m,
            BLOCK_N=self.block_n,
            num_warps=self.num_warps,
            num_stages=self.num_stages,
        )


INTERPRETER_CONFIG = LaunchConfig(64, 64, 4, 1)  # numpy: fewer, larger blocks run faster


@dataclass(frozen=True)
class TileShape:
    """What one program of a kernel keeps in shared memory, in tiles of (rows, head dim).

    ``resident`` tiles are loaded once and held; ``streamed`` tiles are loaded every iteration,
    once per software-pipeline stage. ``resident_is_query``: True when a tile of BLOCK_M query
    rows stays and key blocks stream (forward, dQ), False for the dK/dV pass.
    """

    resident: int
    streamed: int
    resident_is_query: bool

    def shared_memory(self, config: LaunchConfig, block_d: int, itemsize: int) -> int:
        """Bytes: resident tiles, streamed tiles once per pipeline stage, one score tile, and
        1 KiB of barriers. An estimate of what Triton 3.6-3.9 allocate, not a bound: the
        compiler allocated up to 1.7x more in the full compile sweep (the gate checks)."""
        held, streamed = (config.block_m, config.block_n)
        if not self.resident_is_query:
            held, streamed = streamed, held
        tiles = (
            self.resident * held * block_d + config.num_stages * self.streamed * streamed * block_d
        )
        return itemsize * (tiles + config.block_m * config.block_n) + 1024


def shared_memory_limit(capability: int) -> int:
    return SHARED_MEMORY_PER_BLOCK.get(capability, _SMALLEST_LIMIT)


def candidates(
    tile: TileShape, configs: list[LaunchConfig], capability: int, block_d: int, dtype: torch.dtype
) -> list[LaunchConfig]:
    """``configs`` (best guess first) less those that would not fit this architecture's shared
    memory, at most MAX_CANDIDATES of them; never empty (the smallest is kept as a floor)."""
    limit = shared_memory_limit(capability)
    fits = [c for c in configs if tile.shared_memory(c, block_d, dtype.itemsize) <= limit]
    if not fits:
        fits = [min(configs, key=lambda c: tile.shared_memory(c, block_d, dtype.itemsize))]
    return fits[:MAX_CANDIDATES]


def autotune_enabled() -> bool:
    """``FLASH_ATTENTION_AUTOTUNE`` is on unless set to 0, false, off or no (any case)."""
    setting = os.environ.get("FLASH_ATTENTION_AUTOTUNE", "1").strip().lower()
    return setting not in ("", "0", "false", "off", "no")


def length_bucket(n: int) -> int:
    """Lengths rounded up to a power of two, so tuning happens O(log n) times, not per length.
    Zero is a bucket of its own: a pass over keys with no queries (all zeros) must not choose
    for the one-token calls."""
    return triton.next_power_of_2(n) if n > 0 else 0


@functools.cache
def _gpu_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def device_kind(device: torch.device) -> str:
    """What a choice is kept for: the GPU's model (two GPUs of one model share their choices,
    in this process and on disk), else the device type."""
    if device.type == "cuda":
        return _gpu_name(device.index if device.index is not None else torch.cuda.current_device())
    return device.type


def tuning_key(
    kernel_name: str, tensor: torch.Tensor, meta: dict, len_q: int, len_k: int, **shape
) -> tuple:
    """What a choice is kept for: the kernel, the GPU model, the dtype, the constexprs
    (``meta``), shape classes that change the work of a program but no constexpr (``shape``,
    e.g. the GQA group, whose dK/dV pass loops over the group's query heads), and the two
    lengths' power-of-two buckets (last). Plain values only, so that it can be kept on disk."""
    return (
        kernel_name,
        device_kind(tensor.device),
        str(tensor.dtype),
        tuple(sorted(meta.items())),
        tuple(sorted(shape.items())),
        length_bucket(len_q),
        length_bucket(len_k),
    )


# Choices made (or loaded), by (key, tuned): a choice made without timing is kept apart from a
# timed one, so that turning autotuning on later still times.
_CHOICES: dict[tuple[Hashable, bool], LaunchConfig] = {}
_loaded_from: set[str] = set()


def tuned_configs() -> dict[Hashable, LaunchConfig]:
    """What the launchers chose so far, by key (benchmarks record it)."""
    return {key: config for (key, _), config in _CHOICES.items()}


def spills(compiled) -> bool:
    """Whether a compiled kernel keeps registers in local memory (ptxas spilled them)."""
    return bool(getattr(compiled, "n_spills", 0))


def launch_tuned(
    kernel,
    key: Hashable,
    configs: list[LaunchConfig],
    grid: Callable[[LaunchConfig], tuple[int, ...]],
    args: tuple | Callable[[LaunchConfig], tuple],
    meta: dict,
) -> LaunchConfig | None:
    """Launch ``kernel`` once for this call with the configuration :func:`pick` chooses among
    ``configs`` for ``key``; the config it ran with, or None for an empty grid (nothing to run
    and nothing to tune: its length bucket is a one-token call's). ``grid(config)`` is the
    launch grid; ``args`` the kernel's arguments (or ``args(config)``, for a buffer sized by
    the config); ``meta`` its constexprs but the config's."""
    if runtime.is_empty(grid(configs[0])):
        return None

    def run(config):
        arguments = args(config) if callable(args) else args
        return runtime.launch(kernel, grid(config), *arguments, **meta, **config.meta())

    return pick(key, configs, run)


def pick(
    key: Hashable, configs: list[LaunchConfig], run: Callable[[LaunchConfig], object]
) -> LaunchConfig:
    """Run the call with the config chosen for ``key`` (on the first call for it: chosen and
    kept); the config.

    ``run(config)`` launches the kernel once (it must be safe to repeat: the kernels only write
    their outputs) and returns Triton's compiled kernel. A config that fails to compile or run
    (e.g. Triton's OutOfResources), or whose registers spill, is passed over: ptxas has the
    last word. How many launches the first call for a key makes:

    * one config, or a choice kept for ``key``: one launch.
    * autotuning off: the candidates in order until one compiles without spills, each launched
      once; the one that succeeds was the call's launch (a config that spills is used only if
      nothing else runs, and then launched once more unless it was the last one tried).
    * autotuning on: every candidate once (compile, spill check), then each spill-free one
      timed with ``do_bench(warmup=5, rep=20)``, which launches it at least 8 times (one call,
      5 to estimate, then as many as fill 5 ms and 20 ms, at least one each), then the fastest
      once more unless it was the last one timed.
    * during a CUDA-graph capture (``do_bench`` synchronizes, which a capture forbids, and
      every launch would be recorded into the graph and replayed): the choice kept for
      ``key`` (timed or not), else the first candidate, launched once and not kept.

    A :class:`~kernels.common.runtime.Hook` installed with ``configs="every"`` launches every
    candidate once (compiling them all ahead of time), with ``"first"`` the first only.
    """
    mode = runtime.active_hook().configs
    if mode != "pick" or len(configs) == 1:
        for config in configs if mode == "every" else configs[:1]:
            run(config)
        return configs[0]
    _load_from_environment()
    tune = autotune_enabled()
    capturing = runtime.capturing()
    kept = _kept_choice(key, configs, tune, either=capturing)
    if kept is not None or capturing:
        config = configs[0] if kept is None else kept
        run(config)
        return config
    choice, last = _choose(key, configs, run, tune)
    if choice != last:
        run(choice)
    _CHOICES[key, tune] = choice
    _save_to_environment()
    return choice


def _kept_choice(key, configs, tune, either):
    """The choice kept for key (timed if ``tune``; with ``either`` a timed or untimed one),
    if it is still one of ``configs`` (a choice kept on disk by an older launch table is not)."""
    for tuned in (tune, not tune) if either else (tune,):
        choice = _CHOICES.get((key, tuned))
        if choice in configs:
            return choice
    return None


def _choose(key, configs, run, tune) -> tuple[LaunchConfig, LaunchConfig]:
    """(the choice, the config launched last): see :func:`pick`."""
    timings, spilled, failures = {}, [], []
    last = None
    for config in configs:
        try:
            compiled = run(config)
        except ValueError:  # our own refusals (e.g. a grid past CUDA's limits) say what is wrong
            raise
        except Exception as err:  # a config this GPU cannot run is simply not chosen
            failures.append((config, f"{type(err).__name__}: {err}"))
            continue
        last = config
        if spills(compiled):  # correct but slow: only if nothing else runs
            spilled.append(config)
            continue
        if not tune:
            return config, last
        from triton.testing import do_bench

        timings[config] = do_bench(lambda c=config: run(c), warmup=5, rep=20)
    if not timings and not spilled:
        raise RuntimeError(f"no launch configuration could run for {key}: {failures}")
    return (min(timings, key=timings.get) if timings else spilled[0]), last


def save_choices(path: str | os.PathLike) -> None:
    """Write every choice made or loaded so far to ``path`` (JSON), atomically: a crash leaves
    the old file or the new one, never half of one."""
    entries = [
        {"key": key, "tuned": tuned, "config": vars(config)}
        for (key, tuned), config in _CHOICES.items()
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"version": 1, "choices": entries}, indent=1)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=path.name + ".", suffix=".tmp", delete=False
    ) as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)


def load_choices(path: str | os.PathLike) -> int:
    """Keep the choices saved in ``path`` (a missing file holds none); choices already made in
    this process win. The number of choices read."""
    path = Path(path)
    if not path.exists():
        return 0
    try:
        saved = json.loads(path.read_text())
        if saved.get("version") != 1:
            raise ValueError(f"version {saved.get('version')!r}, not 1")
        choices = {
            (_as_tuple(entry["key"]), bool(entry["tuned"])): LaunchConfig(**entry["config"])
            for entry in saved["choices"]
        }
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(
            f"{path} is not a file of launch choices written by save_choices: {err}"
        ) from err
    for slot, config in choices.items():
        _CHOICES.setdefault(slot, config)
    return len(choices)


def _as_tuple(value):
    """A key read back from JSON: its lists as the tuples they were."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list) else value


def _load_from_environment() -> None:
    """FLASH_ATTENTION_TUNE_CACHE's choices, read once per path before the first choice."""
    path = os.environ.get(TUNE_CACHE_ENV)
    if path and path not in _loaded_from:
        _loaded_from.add(path)
        load_choices(path)


def _save_to_environment() -> None:
    path = os.environ.get(TUNE_CACHE_ENV)
    if path:
        save_choices(path)
