"""Where computation runs and in which precision: the device a config names, its autocast dtype, waiting for it."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import torch


def parse_device(name: str) -> torch.device | None:
    """The device a setting names (``None`` for ``auto``), without checking that it exists here."""
    if name == "auto":
        return None
    try:
        return torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(
            f"{name!r} is not a torch device (auto, cpu, or an accelerator type with an optional index)"
        ) from None


def resolve_device(name: str) -> torch.device:
    """``auto``: the accelerator torch finds, else the CPU; otherwise the named device, which must exist here."""
    device = parse_device(name)
    if device is None:
        return torch.accelerator.current_accelerator() or torch.device("cpu")
    if device.type == "cpu":
        return device
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if accelerator is None or accelerator.type != device.type:
        raise ValueError(f"device {name!r} is not available on this machine (accelerator: {accelerator or 'none'})")
    if device.index is not None and device.index >= torch.accelerator.device_count():
        raise ValueError(
            f"device {name!r} does not exist: this machine has {torch.accelerator.device_count()} {device.type} "
            f"device(s)"
        )
    return device


def check_local_ranks(processes: int, device: torch.device) -> None:
    """Refuse more local ranks than ``device``'s machine has accelerators (each rank takes its own); CPU ranks share
    the cores, so any number is allowed there."""
    if device.type != "cpu" and processes > torch.accelerator.device_count():
        raise ValueError(
            f"{processes} ranks on this machine, but it has {torch.accelerator.device_count()} {device.type} "
            f"device(s): one rank per device at most"
        )


def amp_dtype_for(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a ``train.amp`` setting on ``device`` (``None``: full precision). ``auto`` is bf16 on an
    accelerator and fp32 on the CPU."""
    if amp == "off" or (amp == "auto" and device.type == "cpu"):
        return None
    return torch.float16 if amp == "fp16" else torch.bfloat16


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """Autocast on ``device`` with ``dtype``, or nothing for full precision."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that wall-clock times cover it."""
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


TRAINING_BYTES_PER_PARAMETER = 16
"""fp32 weights, gradients and AdamW's two moments; activations come on top."""


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a new process on ``device`` (the CPU: MemAvailable), or ``None`` where it cannot be told."""
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as handle:
                for line in handle:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return None
    backend = getattr(torch, device.type, None)
    if backend is not None and hasattr(backend, "mem_get_info"):
        return int(backend.mem_get_info(device)[0])
    return None


def check_training_memory(parameters: int, device: torch.device) -> None:
    """Refuse a model whose weights, gradients and optimizer moments alone exceed the memory free on ``device``."""
    _check_memory(parameters, TRAINING_BYTES_PER_PARAMETER, "training", "weights, gradients and AdamW moments", device)


def check_inference_memory(parameters: int, device: torch.device) -> None:
    """Refuse a model whose fp32 weights alone exceed the memory free on ``device``."""
    _check_memory(parameters, 4, "loading", "its fp32 weights", device)


def _check_memory(parameters: int, per_parameter: int, what: str, holding: str, device: torch.device) -> None:
    needed, free = parameters * per_parameter, available_memory(device)
    if free is not None and needed > free:
        raise ValueError(
            f"the model has {parameters:,} parameters: {what} needs at least {needed / 1e9:,.1f} GB on {device} for "
            f"{holding} ({per_parameter} bytes each, activations not counted), and {free / 1e9:,.1f} GB are free; "
            f"choose a smaller model"
        )


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """The model name of a device: the CPU's, or the accelerator's as its torch backend reports it."""
    if device.type == "cpu":
        return cpu_name()
    backend = getattr(torch, device.type, None)
    return backend.get_device_name(device) if hasattr(backend, "get_device_name") else device.type
