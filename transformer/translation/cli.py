"""Pieces shared by the command-line scripts: help formatting, device and output-path checks."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is a value to show (not for flags or unset options)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def device_problem(name: str, allow_auto: bool = False) -> str | None:
    """Why the torch device ``name`` cannot be used here, or None if it can.

    ``auto`` is accepted when ``allow_auto``; a CUDA device needs CUDA and an existing index.
    """
    if allow_auto and name == "auto":
        return None
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as err:
        return f"--device {name}: not a torch device ({err})"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return f"--device {name}: CUDA is not available on this machine (use --device cpu)"
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            return f"--device {name}: there are only {count} CUDA device(s)"
    return None


def prepare_output(path: str | os.PathLike, option: str) -> str | None:
    """Create the parent directory of the output file ``path``; why it cannot be written, or None."""
    path = Path(path)
    if path.is_dir():
        return f"{option} {path}: is a directory, not a file"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return f"{option} {path}: cannot create its directory ({err.strerror or err})"
    return None
