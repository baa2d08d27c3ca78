"""Where a model computes: the torch device a run or a command line asks for, and bf16 autocast
(whether a device gets it, and the context that applies it)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: this rank's CUDA device if there is one, else the CPU."""
    if name == "auto":
        return (
            torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        )
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available")
    return device


def use_amp(setting: str, device: torch.device) -> bool:
    """bf16 autocast: ``auto`` turns it on for CUDA and for CPUs with native bf16 matrix units."""
    if setting != "auto":
        return setting == "on"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX-512 BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` if ``enabled``, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()
