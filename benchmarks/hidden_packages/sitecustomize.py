"""Hides Python packages from every process that has this folder on its ``PYTHONPATH``: the
packages named in ``GPU_REPORT_HIDDEN_PACKAGES`` (comma-separated) fail to import, as on a
machine where they are not installed. ``python -m benchmarks.gpu_report --rehearse`` uses it
to run its steps as on a GPU image without ``datasets``.

Python imports ``sitecustomize`` at start-up from the first folder on ``sys.path`` that has
one, so this runs before any of the process's own imports, in every child process too.
"""

import importlib.abc
import os
import sys

HIDDEN = {name for name in os.environ.get("GPU_REPORT_HIDDEN_PACKAGES", "").split(",") if name}


class HiddenPackages(importlib.abc.MetaPathFinder):
    """A finder asked first: a hidden package (or any module inside it) is not found."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {fullname!r} (hidden)", name=fullname)
        return None


if HIDDEN:
    sys.meta_path.insert(0, HiddenPackages())
