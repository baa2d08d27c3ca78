"""The project's Triton kernels, the top-level ``kernels`` package, reached by name.

``kernels`` is a common name: Hugging Face's ``kernels`` distribution (which transformers 5.25
and later require) installs a top-level package of the same name into site-packages, where it
comes before an editable install of this project. :func:`kernel_function` refuses such a
stand-in with the way out, instead of an ``ImportError`` about a name it lacks.
"""

from __future__ import annotations

import importlib
import types
from pathlib import Path

# this project's kernels sit beside the model library, in a checkout or in site-packages
HOME = Path(__file__).resolve().parent.parent / "kernels"


def kernel_function(name: str):
    """``kernels.<name>`` (``flash_attention``, ``additive_attention``), from this project's
    package; an ImportError naming the package found instead and what to do about it."""
    package = importlib.import_module("kernels")
    function = getattr(package, name, None)
    found = Path(getattr(package, "__file__", None) or "?").resolve().parent
    if found != HOME or function is None or isinstance(function, types.ModuleType):
        raise ImportError(
            f"`import kernels` found {found}, not this project's kernel package ({HOME}): "
            "another distribution installs a top-level `kernels` package, most likely Hugging "
            "Face's `kernels` (which transformers>=5.25 requires). Uninstall it "
            '(`pip uninstall kernels`, then `pip install "transformers<5.25"` if you use the '
            "Hugging Face backend) or run from this project's root, where its own comes first."
        )
    return function
