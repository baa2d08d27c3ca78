"""The device a benchmark runs on, and the record of it every results file carries: device,
driver, library versions, date and command line."""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def pick_kernel_device(name: str) -> torch.device:
    """:func:`pick_device` for a script that runs the Triton kernels: on the CPU they run under
    Triton's interpreter, which is chosen when triton is first imported (so before that)."""
    device = pick_device(name)
    if device.type != "cuda":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return device


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def environment(device: torch.device) -> dict:
    """Device, driver, library versions, date and command line, for every results file."""
    env = {
        "device_type": device.type,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.orig_argv[1:]]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _package_version("triton"),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            device_name=torch.cuda.get_device_name(device),
            device_memory_bytes=props.total_memory,
            driver=_nvidia_driver(),
            cuda_runtime=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        env.update(
            device_name=_cpu_name(),
            driver=None,
            cpu_count=os.cpu_count(),
            torch_threads=1,
        )
    return env


def device_tag(device: torch.device) -> str:
    """The device kind in result file names: ``cpu``, or the GPU's name, e.g. ``h100``."""
    if device.type != "cuda":
        return device.type
    name = torch.cuda.get_device_name(device).lower()
    for known in ("h200", "h100", "a100", "l40s", "l4", "a10g", "v100", "t4"):
        if known in name:
            return known
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")
