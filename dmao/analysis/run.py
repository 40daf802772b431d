"""What a finished (or running) run directory says: its metric records and the layout it started from and ended with.

A run directory holds ``config.yaml``, ``metrics.jsonl`` and ``checkpoints/ckpt-*.pt``. A resumed run appends to
``metrics.jsonl`` again from the checkpoint's step, so records of the steps between that checkpoint and the crash
appear twice; the later ones (the run that went on) are kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmao.config import ConfigError, from_dict, load_yaml
from dmao.encoders.layout import Layout
from dmao.training.checkpoint import CheckpointError, list_checkpoints, open_checkpoint
from dmao.training.config import RunConfig
from dmao.training.metrics import read_metrics


def superseded_removed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records in file order without those a resumed run wrote again: a record whose step is not after the previous
    record of its series (its kind, and its split for evaluations) starts a new segment, and it replaces the earlier
    records of that series from its step on."""
    kept: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for record in records:
        series = kept.setdefault((record["kind"], record.get("split")), [])
        if series and record["step"] <= series[-1]["step"]:
            series[:] = [r for r in series if r["step"] < record["step"]]
        series.append(record)
    survivors = {id(r) for rows in kept.values() for r in rows}
    return [r for r in records if id(r) in survivors]


@dataclass
class RunHistory:
    """The records of one run by kind (train, step_loss, event, event_recovery, eval) and its first and last
    layout."""

    run_dir: Path
    initial_layout: Layout
    initial_source: str
    """Where the initial layout comes from (``config.yaml``, ``event 1``, a checkpoint's config)."""
    final_layout: Layout
    final_step: int
    final_source: str
    """Where the final layout comes from (a checkpoint file name, or ``event N``)."""
    train: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[dict[str, Any]] = field(default_factory=list)
    """Single-step losses, logged around events."""
    events: list[dict[str, Any]] = field(default_factory=list)
    recoveries: dict[int, dict[str, Any]] = field(default_factory=dict)
    """``event_recovery`` records by event number."""
    evals: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The run directory's name (also for a relative path such as ``.``)."""
        return self.run_dir.resolve().name


def _read_records(run_dir: Path) -> list[dict[str, Any]]:
    try:
        records = read_metrics(run_dir)
    except json.JSONDecodeError as err:
        raise ValueError(f"{run_dir / 'metrics.jsonl'} is not JSON lines: {err}") from None
    for record in records:
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("kind"), str)
            or type(record.get("step")) is not int
        ):
            raise ValueError(
                f"{run_dir / 'metrics.jsonl'}: a record needs a 'kind' string and an integer 'step': {record!s:.160}"
            )
    return superseded_removed(records)


def _event_layout(event: dict[str, Any], key: str, metrics_path: Path) -> Layout:
    if key not in event:
        raise ValueError(f"{metrics_path}: event {event.get('event')} at step {event['step']} has no {key!r}")
    try:
        return Layout.from_dict(event[key])
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(
            f"{metrics_path}: event {event.get('event')} at step {event['step']}: bad {key}: {err}"
        ) from None


def load_run(run_dir: str | Path) -> RunHistory:
    """Read a run directory. The initial layout is the configuration's starting layout (for a run started from
    another's layout, ``model.layout``, or without a config: the first event's ``layout_before``); the final layout
    is the newest checkpoint's, or the last event's ``layout_after`` where that event is newer than every
    checkpoint."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    metrics_path = run_dir / "metrics.jsonl"
    records = _read_records(run_dir)
    events = [r for r in records if r["kind"] == "event"]

    checkpoint, state = open_checkpoint(run_dir) if list_checkpoints(run_dir / "checkpoints") else (None, None)
    if state is not None and events and events[-1]["step"] > state["step"]:
        state = None  # the run went on past its last checkpoint and changed its layout since
    if state is not None:
        final_layout, final_step, final_source = Layout.from_dict(state["layout"]), state["step"], checkpoint.name
    elif events:
        final_layout = _event_layout(events[-1], "layout_after", metrics_path)
        final_step, final_source = events[-1]["step"], f"event {events[-1]['event']}"
    else:
        raise CheckpointError(
            f"no checkpoint (ckpt-*.pt) in {run_dir / 'checkpoints'} and no event in "
            f"{metrics_path}: the run's layout is unknown"
        )

    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        data = load_yaml(config_path)  # its errors name the file
        try:
            model_cfg = from_dict(RunConfig, data).model
        except ConfigError as err:
            raise ConfigError(f"{config_path}: {err}") from None
        if not model_cfg.layout:
            initial_layout, initial_source = model_cfg.encoder.starting_layout(), config_path.name
        elif events:  # started from another run's layout (model.layout), which may since be gone
            initial_layout, initial_source = (
                _event_layout(events[0], "layout_before", metrics_path),
                f"event {events[0]['event']}",
            )
        else:  # a static run from another run's layout: it ends where it started
            initial_layout, initial_source = final_layout, f"{final_source} (model.layout, no event)"
    elif events:
        initial_layout = _event_layout(events[0], "layout_before", metrics_path)
        initial_source = f"event {events[0]['event']}"
    else:
        assert state is not None  # without events the final layout came from a checkpoint
        initial_layout = from_dict(RunConfig, state["config"]).model.encoder.starting_layout()
        initial_source = f"{final_source} config"

    if (initial_layout.block_type, initial_layout.num_layers) != (final_layout.block_type, final_layout.num_layers):
        raise ValueError(
            f"{run_dir}: the initial layout ({initial_source}: {initial_layout.num_layers} "
            f"{initial_layout.block_type} layers) and the final one ({final_source}: "
            f"{final_layout.num_layers} {final_layout.block_type} layers) are not of the same model"
        )
    return RunHistory(
        run_dir=run_dir,
        initial_layout=initial_layout,
        initial_source=initial_source,
        final_layout=final_layout,
        final_step=final_step,
        final_source=final_source,
        train=[r for r in records if r["kind"] == "train"],
        step_losses=[r for r in records if r["kind"] == "step_loss"],
        events=events,
        recoveries={r["event"]: r for r in records if r["kind"] == "event_recovery"},
        evals=[r for r in records if r["kind"] == "eval"],
    )
