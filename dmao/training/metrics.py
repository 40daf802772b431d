"""Run logs: metrics as JSON lines and TensorBoard scalars in the run directory, and the progress display."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm


class MetricsLog:
    """Appends one JSON object per record to ``metrics.jsonl`` and mirrors numbers to TensorBoard."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def write(self, kind: str, step: int, **values: Any) -> None:
        record = {"kind": kind, "step": step, "time": time.time(), **values}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record, default=str) + "\n")
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        self.writer.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics log (is {run_dir} a dmao run directory?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Progress:
    """A progress bar with step/total, loss, learning rate, audio seconds per second and ETA (tqdm's own)."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
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
    and the share of the batches' samples that are padding (what bucketing wastes)."""

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

    def step_done(self, loss: float, batch: Any) -> None:
        self.steps += 1
        self.loss += loss
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
