"""What Triton compiled, read from its on-disk cache: every kernel build the JIT compiles lands
there as a group file ``__grp__<kernel name>.json`` (a build found in the cache writes
nothing), so the group files that appear while a command runs are the kernels it compiled, in
its own process and in every child process, on any Triton version. A kernel run by the
interpreter (``TRITON_INTERPRET=1``) compiles nothing and writes nothing.

``gpu_report`` takes a snapshot before each step and reports what the step compiled: after the
warm step, that should be nothing.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

GROUP_PREFIX = "__grp__"


def cache_dir() -> Path:
    """Where Triton keeps compiled kernels: ``TRITON_CACHE_DIR``, else ``$TRITON_HOME`` (or the
    home directory) ``/.triton/cache``, as Triton itself decides."""
    if os.environ.get("TRITON_CACHE_DIR"):
        return Path(os.environ["TRITON_CACHE_DIR"])
    home = os.environ.get("TRITON_HOME") or os.path.expanduser("~/")
    return Path(home) / ".triton" / "cache"


def builds(directory: Path | None = None) -> set[str]:
    """Every kernel build in the cache, as paths of its group files relative to it."""
    directory = directory or cache_dir()
    if not directory.is_dir():
        return set()
    return {str(path.relative_to(directory)) for path in directory.glob(f"*/{GROUP_PREFIX}*.json")}


def compiled_since(before: set[str], directory: Path | None = None) -> dict[str, int]:
    """Kernel name -> how many builds of it appeared in the cache since ``before``."""
    new = builds(directory) - before
    names = (Path(p).name[len(GROUP_PREFIX) : -len(".json")] for p in new)
    return dict(sorted(Counter(names).items()))
