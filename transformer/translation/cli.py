"""Pieces shared by the command-line scripts: help formatting, argument types, options built from a
configuration dataclass's fields, device and output-path checks."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is a value to show (not for flags or unset options)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def option(help: str, group: str, flag: str | None = None, **argparse_kwargs: Any) -> dict:
    """Metadata for a dataclass field that is also a command-line option (see :func:`add_options`).

    ``help`` may say ``{default}`` for the field's default and ``{presets}`` for each preset's
    value (see :func:`add_options`); ``flag`` replaces ``--field-name``
    (e.g. ``--no-progress``); ``argparse_kwargs`` go to ``add_argument`` (``type``,
    ``choices``, ``action``; ``default=None`` for a field whose default the caller fills in).
    """
    return {"help": help, "group": group, "flag": flag, "argparse": argparse_kwargs}


def add_options(
    config_class: type,
    groups: dict[str, Any],
    presets: Callable[[str, Any], str] | None = None,
) -> list[str]:
    """Add one option for each field of ``config_class`` with :func:`option` metadata, to the
    argument group its metadata names; the fields' names, in order.

    An option defaults to its field's default, a flag (``action``) to None, so that a
    namespace value of None means "not given": the configuration's own default applies.
    ``{presets}`` in a help text becomes ``presets(field name, field default)``: what each
    named preset sets the field to.
    """
    defaults = config_class()
    names = []
    for field in dataclasses.fields(config_class):
        if "help" not in field.metadata:
            continue
        meta, default = field.metadata, getattr(defaults, field.name)
        kwargs = {"default": None if "action" in meta["argparse"] else default}
        kwargs.update(meta["argparse"])
        flag = meta["flag"] or "--" + field.name.replace("_", "-")
        help = meta["help"].replace("{default}", str(default))
        if presets is not None:
            help = help.replace("{presets}", presets(field.name, default))
        groups[meta["group"]].add_argument(flag, dest=field.name, help=help, **kwargs)
        names.append(field.name)
    return names


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
