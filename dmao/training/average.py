"""Checkpoint averaging: the element-wise mean of a run's last N checkpoints, or of its N best validated ones, as one
inference checkpoint (what icefall and ESPnet evaluate by default; docs/scoring.md).

The result, ``checkpoints/averaged-last<N>.pt`` or ``checkpoints/averaged-best<N>-<split>.pt``, is read by ``dmao
eval``, ``transcribe`` and ``layout`` like any checkpoint (name the file). It is not a training checkpoint: its name is
outside the ``ckpt-<step>.pt`` pattern, so resuming, rotation and "the newest checkpoint of a run" never see it, and it
holds no optimizer, scheduler, scaler, sampler, RNG, engine or loss-watch state (those entries are ``None``).

Weights average only where they correspond: every checkpoint must have the same layout and the same DMAO events behind
it (an event moves groups, even one that leaves the group counts as they were) and the same tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dmao.training.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_KEYS,
    CheckpointError,
    checkpoint_step,
    list_checkpoints,
    read_checkpoint,
    save_atomic,
)
from dmao.training.metrics import best_validated, read_metrics

_INFERENCE_KEYS = ("config", "layout", "step", "bad_steps_total", "tokenizer")
"""What an averaged checkpoint takes from the newest checkpoint averaged (besides the averaged weights)."""


@dataclass
class AverageConfig:
    """Which checkpoints of a run to average: the ``last`` N, or the ``best`` N by WER on ``split``."""

    last: int = 0
    best: int = 0
    split: str = "dev"

    def __post_init__(self) -> None:
        if self.last < 0 or self.best < 0 or (self.last > 0) == (self.best > 0):
            raise ValueError(
                f"average: give one of last or best, a positive count (got last={self.last}, best={self.best})"
            )
        if not self.split:
            raise ValueError("average: split must name a validated split (such as dev)")

    @property
    def file_name(self) -> str:
        return f"averaged-last{self.last}.pt" if self.last else f"averaged-best{self.best}-{self.split}.pt"


def last_checkpoints(run_dir: Path, count: int) -> list[Path]:
    """The newest ``count`` training checkpoints of the run, oldest first."""
    found = list_checkpoints(run_dir / "checkpoints")
    if len(found) < count:
        raise ValueError(
            f"{run_dir / 'checkpoints'} holds {len(found)} checkpoints (ckpt-*.pt); averaging the last {count} needs "
            f"{count}"
        )
    return found[-count:]


def best_checkpoints(run_dir: Path, count: int, split: str) -> list[Path]:
    """The checkpoints of the ``count`` lowest-WER ``valid`` records of ``split`` in the run's metrics log whose file
    still exists, oldest first."""
    records = read_metrics(run_dir)
    checkpoints_dir = run_dir / "checkpoints"
    ranked = best_validated(records, len(records), split)
    chosen: list[Path] = []
    for record in ranked:
        path = checkpoints_dir / _checkpoint_name(run_dir, record)
        if path.is_file():
            chosen.append(path)
        if len(chosen) == count:
            return sorted(chosen, key=checkpoint_step)
    raise ValueError(
        f"{run_dir / 'metrics.jsonl'}: {len(ranked)} valid records of split {split!r}, {len(chosen)} of whose "
        f"checkpoints are still in {checkpoints_dir}; averaging the best {count} needs {count} (train with "
        f"train.keep_best >= {count} so that rotation keeps them, or average fewer)"
    )


def _checkpoint_name(run_dir: Path, record: dict[str, Any]) -> str:
    """The ``checkpoint`` a valid record names: a plain ``ckpt-<step>.pt`` file name (one with a folder in it would
    read outside the run)."""
    name = record.get("checkpoint")
    if isinstance(name, str) and Path(name).name == name:
        try:
            checkpoint_step(Path(name))
            return name
        except ValueError:
            pass
    raise CheckpointError(
        f"{run_dir / 'metrics.jsonl'}: the valid record of step {record.get('step')} names checkpoint {name!r}, not a "
        f"ckpt-<step>.pt file name"
    )


def _signature(path: Path, state: dict[str, Any]) -> dict[str, Any]:
    """What checkpoints averaged together must share, and what names them in an error."""
    reports = (state["realloc"] or {}).get("reports", [])
    return {
        "name": f"{path.name} (step {state['step']})",
        "layout": state["layout"],
        # the steps of the DMAO events that changed the weights (a planned-only event changes nothing)
        "events": [int(report["step"]) for report in reports if report.get("applied", True)],
        "tokenizer": state["tokenizer"],
        "shapes": {name: tuple(t.shape) for name, t in state["model"].items()},
    }


def _check_same_model(a: dict[str, Any], b: dict[str, Any]) -> None:
    names = f"{a['name']} and {b['name']}"
    if a["layout"] != b["layout"] or a["events"] != b["events"]:
        between = sorted(set(a["events"]) ^ set(b["events"]))
        event = f"the DMAO event at step {between[-1]}" if between else "a DMAO event"
        last = f" (step {max(a['events'] + b['events'])})" if between else ""
        what = "have different layouts" if a["layout"] != b["layout"] else "have equal group counts"
        raise CheckpointError(
            f"{names} {what}: {event} lies between them and moved parameter groups, so their weights do not "
            f"correspond. Average only checkpoints written after the last event{last}"
        )
    if a["tokenizer"] != b["tokenizer"]:
        raise CheckpointError(f"{names} have different tokenizers: they are not checkpoints of one model")
    if a["shapes"] != b["shapes"]:
        differing = sorted(n for n in set(a["shapes"]) | set(b["shapes"]) if a["shapes"].get(n) != b["shapes"].get(n))
        raise CheckpointError(f"{names} hold different weights (first: {differing[0]}): not checkpoints of one model")


def average_checkpoints(paths: Sequence[Path]) -> dict[str, Any]:
    """The inference checkpoint whose weights are the mean of the checkpoints ``paths`` (oldest first): floating
    tensors are summed in float64 and cast back to their dtype; other tensors (integer buffers such as BatchNorm's
    ``num_batches_tracked``) are the newest checkpoint's, as are config, layout, step and tokenizer. The files are read
    with ``torch.load(weights_only=True)`` one at a time: the float64 sums are all that is held between them."""
    if not paths:
        raise ValueError("average_checkpoints: no checkpoints given")
    first: dict[str, Any] | None = None
    sums: dict[str, torch.Tensor] = {}
    for path in paths:
        state = read_checkpoint(path)
        if first is None:
            first = _signature(path, state)
            sums = {
                name: torch.zeros_like(t, dtype=torch.float64)
                for name, t in state["model"].items()
                if t.is_floating_point()
            }
        else:
            _check_same_model(first, _signature(path, state))
        for name, total in sums.items():
            total += state["model"][name].double()
    weights = {name: (sums[name] / len(paths)).to(t.dtype) if name in sums else t for name, t in state["model"].items()}
    return {
        **dict.fromkeys(CHECKPOINT_KEYS),  # no training state: an averaged checkpoint is for inference only
        "format": CHECKPOINT_FORMAT,
        **{key: state[key] for key in _INFERENCE_KEYS},
        "model": weights,
    }


def average_run(run_dir: str | Path, cfg: AverageConfig) -> tuple[Path, list[Path]]:
    """Average the checkpoints of ``run_dir`` that ``cfg`` selects into ``checkpoints/<cfg.file_name>`` (written
    atomically, replacing an earlier average of that name); returns its path and the checkpoints averaged."""
    run_dir = Path(run_dir)
    checkpoints_dir = run_dir / "checkpoints"
    if not checkpoints_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no checkpoints/ folder (is it a dmao run directory?)")
    chosen = last_checkpoints(run_dir, cfg.last) if cfg.last else best_checkpoints(run_dir, cfg.best, cfg.split)
    output = checkpoints_dir / cfg.file_name
    save_atomic(average_checkpoints(chosen), output)
    return output, chosen
