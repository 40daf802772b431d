"""Run logs: metrics as JSON lines and TensorBoard scalars in the run directory, and the progress display."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

log = logging.getLogger(__name__)


class MetricsLog:
    """Appends one JSON object per record to ``metrics.jsonl`` and mirrors numbers to TensorBoard: ``<kind>/<key>``,
    or ``<kind>/<split>/<key>`` for a record naming its ``split`` (dev and test scores at one step are two curves).

    A run that goes on from ``step`` (a resumed run, or a new one, ``step`` 0, in a run directory of its own) first
    drops what it is about to write again: the records of later steps (trained again after the checkpoint), and those
    of the kinds ``replayed`` at ``step`` itself (an event written after the checkpoint that precedes it); TensorBoard
    hides the events after ``step`` likewise. So the file holds exactly one record per step and kind (and split)."""

    def __init__(self, run_dir: str | Path, step: int = 0, replayed: Collection[str] = ()) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        dropped = drop_records_after(self.path, step, replayed)
        if dropped:
            log.info("%s: dropped %d records of steps the run goes on from step %d to write again", self.path.name,
                     dropped, step)  # fmt: skip
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=step + 1)

    def write(self, kind: str, step: int, **values: Any) -> None:
        record = {"kind": kind, "step": step, "time": time.time(), **values}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record, default=str) + "\n")
        split = values.get("split")
        prefix = f"{kind}/{split}" if isinstance(split, str) else kind
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        self.writer.close()


def drop_records_after(path: Path, step: int, replayed: Collection[str] = ()) -> int:
    """Rewrite ``path`` (atomically: a complete temporary file renamed over it) without the records of steps after
    ``step`` and those of the kinds ``replayed`` at ``step``; returns how many were dropped. A torn last line (a
    process killed while appending it) is dropped with a warning; any other line that is not a record is an error
    naming the file and line, and nothing is changed."""
    if not path.is_file():
        return 0
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    kept = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or type(record.get("step")) is not int:
                raise ValueError("no integer 'step'")
        except ValueError as err:
            if number == len(lines) and not line.endswith("\n"):
                log.warning("%s:%d: dropped a torn last record (its writer was killed): %.80r", path, number, line)
                continue
            raise ValueError(f"{path}:{number}: not a metrics record ({err}): {line.strip()!r:.120}") from None
        if record["step"] < step or (record["step"] == step and record.get("kind") not in replayed):
            kept.append(line)
    dropped = len([line for line in lines if line.strip()]) - len(kept)
    if dropped:
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(temporary, "w") as handle:
            handle.writelines(kept)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    return dropped


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics log (is {run_dir} a dmao run directory?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def best_validated(records: list[dict[str, Any]], count: int, split: str | None = None) -> list[dict[str, Any]]:
    """The ``count`` ``valid`` records (of ``split``, if given) of lowest WER, best first; among equal WERs the
    earlier step first. Their ``checkpoint`` names the file ``train.keep_best`` keeps."""
    valid = [r for r in records if r.get("kind") == "valid" and (split is None or r.get("split") == split)]
    return sorted(valid, key=lambda r: (r["wer"], r["step"]))[:count]


class Progress:
    """A progress bar with step/total, loss, learning rate, audio seconds per second and ETA (tqdm's own)."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.enabled = enabled
        interactive = sys.stderr.isatty()
        self.bar = tqdm(
            total=total,
            initial=initial,
            disable=not enabled,
            unit="step",
            dynamic_ncols=True,
            mininterval=0.5 if interactive else 15.0,
            file=sys.stderr,
            desc="train",
        )
        self.audio_seconds = 0.0
        self.started = time.monotonic()

    def update(self, steps: int, audio_seconds: float, loss: float, lr: float) -> None:
        self.audio_seconds += audio_seconds
        rate = self.audio_seconds / max(time.monotonic() - self.started, 1e-6)
        self.bar.set_postfix_str(f"loss {loss:.3f}  lr {lr:.2e}  {rate:.0f} audio-s/s", refresh=False)
        self.bar.update(steps)

    def write(self, message: str) -> None:
        self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


class TrainingWindow:
    """What the ``train`` records of metrics.jsonl average over the steps since the last record: the loss, audio
    seconds per second, the share of wall time spent waiting for the next batch (data loading that does not keep up),
    and the share of the batches' samples that are padding (what bucketing wastes). Utterances and seconds "per
    batch" are per optimizer step (all its micro-batches)."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.started = self._iteration_end = time.monotonic()
        self.steps = 0
        self.loss = self.audio_seconds = self.waiting = 0.0
        self.samples = self.padded_samples = self.utterances = 0

    def batch_arrived(self) -> None:
        self.waiting += time.monotonic() - self._iteration_end

    def iteration_done(self) -> None:
        self._iteration_end = time.monotonic()

    def step_done(self, loss: float, batches: list[Any]) -> None:
        """One optimizer step of ``loss`` on ``batches`` (its micro-batches: one unless gradients accumulate)."""
        self.steps += 1
        self.loss += loss
        for batch in batches:
            self.audio_seconds += batch.seconds
            self.samples += int(batch.audio_lens.sum())
            self.padded_samples += batch.audio.numel()
            self.utterances += len(batch.cut_ids)

    def record(self) -> dict[str, float]:
        """The averages, and a new window from now."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        values = {
            "loss": self.loss / max(self.steps, 1),
            "audio_seconds_per_second": self.audio_seconds / elapsed,
            "data_wait_share": self.waiting / elapsed,
            "padding_share": 1.0 - self.samples / max(self.padded_samples, 1),
            "utterances_per_batch": self.utterances / max(self.steps, 1),
            "seconds_per_batch": self.audio_seconds / max(self.steps, 1),
        }
        self.restart()
        return values
