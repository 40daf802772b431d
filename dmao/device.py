"""Where computation runs and in which precision: the device a config names, its autocast dtype, waiting for it."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(name: str) -> torch.device:
    """``auto``: the accelerator torch finds, else the CPU; otherwise any torch device string."""
    if name == "auto":
        return torch.accelerator.current_accelerator() or torch.device("cpu")
    return torch.device(name)


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
