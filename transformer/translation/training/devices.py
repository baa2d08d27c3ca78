"""Where a run computes: its device, bf16 autocast detection, and its place in the data-parallel
process group that ``torchrun`` describes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from transformer.translation.training.config import TrainConfig


def setup_devices(config: TrainConfig) -> tuple[torch.device, Distributed]:
    """This rank's device and place in the process group; sets the CPU thread count."""
    device = pick_device(config.device)
    dist_info = init_distributed(device.type)
    if device.type == "cuda" and (config.device == "auto" or device.index is None):
        # "cuda" names no device, and torch.cuda.set_device refuses it: this rank's GPU
        # (LOCAL_RANK under torchrun), or the current one in a single process.
        index = dist_info.local_rank if dist_info.enabled else torch.cuda.current_device()
        device = torch.device("cuda", index)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    return device, dist_info


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> Distributed:
    """Join the process group torchrun describes in the environment (if ``WORLD_SIZE`` > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Distributed(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    )


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
    return device.type == "cpu" and _cpu_has_bf16()


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
