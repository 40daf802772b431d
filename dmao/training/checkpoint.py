"""Checkpoints written atomically, kept last-k, found again for resuming.

A checkpoint file is complete or absent: it is written to a temporary file in the same folder, flushed to disk and
renamed over the final name, so a crash or a full disk mid-write leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the file."""


def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"ckpt-{step:08d}.pt"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest step first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_atomic(state: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise CheckpointError(
                f"could not write checkpoint {path}: {err}; the previous checkpoint is untouched"
            ) from err
        raise
    directory_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory_fd)  # make the rename itself durable
    finally:
        os.close(directory_fd)


def save_checkpoint(state: dict[str, Any], directory: str | Path, step: int, keep_last: int) -> Path:
    """Write ``state`` as the checkpoint of ``step`` and delete all but the newest ``keep_last``."""
    path = checkpoint_path(directory, step)
    save_atomic(state, path)
    for old in list_checkpoints(directory)[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as given, or the newest checkpoint of a run directory or of a checkpoints directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint, run directory or checkpoints directory (not found)")
    if path.is_file():
        return path
    directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found = list_checkpoints(directory)
    if not found:
        raise CheckpointError(f"no checkpoint (ckpt-*.pt) in {directory}")
    return found[-1]


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file, or the newest one of a run or checkpoints directory, onto the CPU."""
    path = resolve_checkpoint(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} is unreadable: {err}") from err
