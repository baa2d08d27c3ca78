"""The project's Triton kernels, the top-level ``kernels`` package, reached by name.

``kernels`` is a common name: Hugging Face's ``kernels`` distribution (which transformers 5.25
and later require) installs a top-level package of the same name into site-packages, where it
comes before an editable install of this project. :func:`kernel_function` refuses such a
stand-in with the way out, instead of an ``ImportError`` about a name it lacks.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

# this project's kernels sit beside the model library, in a checkout or in site-packages
HOME = Path(__file__).resolve().parent.parent / "kernels"


def _found_kernels() -> Path | None:
    """The directory ``import kernels`` would import from (found, not imported: Triton may be
    missing), or None when there is none."""
    spec = importlib.util.find_spec("kernels")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).resolve().parent


# Looked up once, at import: kernel_function runs inside torch.compile's traced code, which
# neither imports through importlib nor reads the file system.
FOUND = _found_kernels()


def kernel_function(name: str):
    """``kernels.<name>`` (``flash_attention``, ``additive_attention``), from this project's
    package; an ImportError naming the package found instead and what to do about it."""
    if FOUND != HOME:
        raise ImportError(
            f"`import kernels` finds {FOUND}, not this project's kernel package ({HOME}): "
            "another distribution installs a top-level `kernels` package, most likely Hugging "
            "Face's `kernels` (which transformers>=5.25 requires). Uninstall it "
            '(`pip uninstall kernels`, then `pip install "transformers<5.25"` if you use the '
            "Hugging Face backend) or run from this project's root, where its own comes first."
        )
    import kernels

    return getattr(kernels, name)
