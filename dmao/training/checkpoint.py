"""Training checkpoints: what one holds, how it is written and found, and the one reader that checks it.

A checkpoint file is complete or absent: it is written to a temporary file in the same folder, flushed to disk and
renamed over the final name, so a crash or a full disk mid-write leaves the previous checkpoint as it was. It holds
plain data and tensors only (:data:`CHECKPOINT_KEYS`) and is read with ``torch.load(weights_only=True)``, which
refuses to run code from a file. Every consumer (resume, eval, transcribe, layout, plot) reads through
:func:`load_checkpoint`, which checks the format version and the keys.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import random
import re
import shutil
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmao.config import from_dict, load_yaml
from dmao.data.tokenizer import Tokenizer, load_tokenizer
from dmao.device import check_inference_memory
from dmao.encoders.layout import Layout
from dmao.model import CTCModel, estimate_parameters
from dmao.training.config import RunConfig

log = logging.getLogger(__name__)

_NAME = re.compile(r"^ckpt-(\d+)\.pt$")

CHECKPOINT_FORMAT = 2
"""Version of what a checkpoint holds; 2: plain-data RNG states, the run config after the grow-noise rename."""
CHECKPOINT_KEYS = (
    "format",
    "config",  # the resolved RunConfig as plain data
    "layout",  # the layout of the weights (a re-allocated model is rebuilt from it)
    "model",
    "optimizer",
    "scheduler",
    "scaler",
    "sampler",  # the position in the training data
    "rng",  # per rank: python, numpy, torch (and accelerator) generator states
    "step",
    "bad_steps_total",
    "realloc",  # the engine's state, None for a baseline run
    "loss_watch",
    "tokenizer",  # file name -> bytes
)


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the file."""


def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"ckpt-{step:08d}.pt"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest step first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def checkpoint_step(path: Path) -> int:
    match = _NAME.match(path.name)
    if match is None:
        raise ValueError(f"{path} is not named like a checkpoint (ckpt-<step>.pt)")
    return int(match.group(1))


def _write_failure(path: Path, err: BaseException) -> str:
    """Why writing ``path`` failed, in words: torch reports a full disk as an ``inline_container`` RuntimeError."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if free is not None and free < (64 << 20):
        return f"the disk is full ({free:,} bytes free)"
    if "inline_container" in str(err) or "unexpected pos" in str(err):
        return "the file could not be written in full (a full disk, a quota or a file-size limit)"
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def save_atomic(state: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(f"could not create {path.parent}: {err.strerror or err}") from None
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, (OSError, RuntimeError)):
            raise CheckpointError(
                f"could not write checkpoint {path}: {_write_failure(path, err)}; the previous checkpoint is untouched"
            ) from err
        raise
    directory_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory_fd)  # make the rename itself durable
    finally:
        os.close(directory_fd)


def save_checkpoint(
    state: dict[str, Any], directory: str | Path, step: int, keep_last: int, keep_steps: Collection[int] = ()
) -> Path:
    """Write ``state`` as the checkpoint of ``step``, then keep it, the newest ``keep_last - 1`` older ones and those
    of ``keep_steps`` (the best validated, ``train.keep_best``). Only older checkpoints are ever deleted: never the
    one just written, never one of a later step."""
    path = checkpoint_path(directory, step)
    save_atomic(state, path)
    older = [p for p in list_checkpoints(directory) if checkpoint_step(p) < step]
    for old in older[: max(0, len(older) - (keep_last - 1))]:
        if checkpoint_step(old) not in keep_steps:
            old.unlink(missing_ok=True)
    return path


_TEMPORARY = re.compile(r"^\.ckpt-\d+\.pt\.tmp-(\d+)$")


def remove_orphaned_temporaries(directory: str | Path) -> list[Path]:
    """Delete the half-written checkpoint temporaries (``.ckpt-*.pt.tmp-PID``) that are not this process's: call it
    holding the run's lock, when no other writer can exist (a killed write leaves one, as large as a checkpoint, and
    its pid may since belong to another process)."""
    directory = Path(directory)
    removed = []
    for path in directory.iterdir() if directory.is_dir() else []:
        match = _TEMPORARY.match(path.name)
        if match and int(match.group(1)) != os.getpid():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def load_latest_checkpoint(directory: str | Path) -> tuple[Path, dict[str, Any], list[Path]] | None:
    """The newest readable checkpoint of ``directory``, its state, and the newer ones that were skipped as unreadable
    (each with a warning naming it and why); ``None`` when none is readable."""
    skipped = []
    for path in reversed(list_checkpoints(directory)):
        try:
            return path, read_checkpoint(path), skipped
        except CheckpointError as err:
            log.warning("skipping checkpoint %s: %s", path, err)
            skipped.append(path)
    return None


def open_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """A checkpoint file, or the newest readable one of a run or checkpoints directory, and its state (see
    :func:`read_checkpoint`)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint, run directory or checkpoints directory (not found)")
    if path.is_file():
        return path, read_checkpoint(path)
    directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if not list_checkpoints(directory):
        raise CheckpointError(f"no checkpoint (ckpt-*.pt) in {directory}")
    latest = load_latest_checkpoint(directory)
    if latest is None:
        raise CheckpointError(f"no checkpoint in {directory} is readable (see the warnings above)")
    return latest[0], latest[1]


def load_layout(source: str | Path) -> tuple[Layout, str]:
    """The layout that ``model.layout`` names and where it was read: the newest checkpoint's of a run or checkpoints
    directory or a ``ckpt-*.pt`` file, or a layout file (YAML or JSON, as ``Layout.to_dict`` writes it)."""
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml", ".json"):
        try:
            return Layout.from_dict(load_yaml(path)), str(path)
        except (TypeError, KeyError, ValueError) as err:
            raise CheckpointError(f"{path}: not a layout ({type(err).__name__}: {err})") from None
    chosen, state = open_checkpoint(path)
    planned = state["config"].get("train", {}).get("steps")
    if isinstance(planned, int) and state["step"] < planned:
        log.warning("model.layout: %s is at step %d of its run's %d: not that run's final layout", chosen,
                    state["step"], planned)  # fmt: skip
    return Layout.from_dict(state["layout"]), f"{chosen} (step {state['step']})"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The state of :func:`open_checkpoint`, loaded onto the CPU."""
    return open_checkpoint(path)[1]


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Read one checkpoint file and check that it is a dmao training checkpoint of this format with every key (and
    no other). Plain data and tensors only: anything else is refused, since unpickling it could run code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = re.search(r"GLOBAL ([\w.]+)", str(err))  # torch names the first disallowed global
        if refused:
            raise CheckpointError(
                f"checkpoint {path} is refused: it holds objects other than tensors and plain data (first: "
                f"{refused.group(1)}), and loading them could run code"
            ) from None
        raise CheckpointError(f"checkpoint {path} is unreadable (corrupt or truncated)") from None
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is unreadable (corrupt or truncated: {first})") from None
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"{path} is not a dmao training checkpoint (no 'format' entry)")
    if state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {state['format']!r}; this version of dmao reads format {CHECKPOINT_FORMAT}"
        )
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    unexpected = sorted(str(key) for key in state if key not in CHECKPOINT_KEYS)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path}: missing entries {missing}, unexpected entries {unexpected}")
    return state


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's generator states (python, numpy, torch, and ``device``'s when it is an accelerator) as plain
    data and tensors."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, keys.tolist(), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if device.type != "cpu":
        state["accelerator"] = getattr(torch, device.type).get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device.type != "cpu" and "accelerator" in state:
        getattr(torch, device.type).set_rng_state(state["accelerator"], device)


def tokenizer_files(directory: Path) -> dict[str, bytes]:
    """The tokenizer's files by name, for the checkpoint."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def check_plain_file_name(name: object) -> None:
    """A checkpoint's tokenizer file name must be a plain name: one with a folder in it would write elsewhere."""
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise CheckpointError(f"checkpoint tokenizer file name {name!r} is not a plain file name")


def tokenizer_from_files(files: dict[str, bytes]) -> Tokenizer:
    """Rebuild a tokenizer from a checkpoint's files (plain file names only)."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            check_plain_file_name(name)
            (Path(tmp) / name).write_bytes(content)
        return load_tokenizer(tmp)


def model_from_checkpoint(
    state: dict[str, Any], device: torch.device | str = "cpu"
) -> tuple[CTCModel, Tokenizer, RunConfig]:
    """Rebuild the model from a checkpoint's own layout (re-allocated models included) and load its weights; ``state``
    comes from :func:`load_checkpoint`."""
    cfg = from_dict(RunConfig, state["config"])
    tokenizer = tokenizer_from_files(state["tokenizer"])
    layout = Layout.from_dict(state["layout"])
    try:  # a crafted or mistaken checkpoint must not make us allocate more than the machine has
        start = cfg.model.encoder.starting_layout()
        growth = max(1.0, sum(layout.total_groups().values()) / max(1, sum(start.total_groups().values())))
        estimate = round(growth * estimate_parameters(cfg.model, tokenizer.vocab_size))
        check_inference_memory(estimate, torch.device(device))
    except ValueError as err:
        raise CheckpointError(f"the checkpoint's model cannot be loaded here: {err}") from None
    model = CTCModel(cfg.model, tokenizer.vocab_size, layout=layout)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), tokenizer, cfg
