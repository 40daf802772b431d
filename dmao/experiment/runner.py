"""Running a grid: each cell is a ``dmao train`` process; finished cells are skipped, interrupted ones resumed.

The grid directory is the only shared state, so a grid can be continued another day or by several machines at once
(a shared file system with working ``flock``, e.g. a local disk or NFSv4):

* ``runs/<arm>/seed<seed>/`` is the cell's run directory (checkpoints, metrics, transcripts);
* ``locks/<arm>.seed<seed>.lock`` is held (``flock``) by whoever trains the cell; the kernel drops it when that
  process dies, however it dies, so a crashed machine never blocks a cell for good;
* ``cells/<arm>.seed<seed>.json`` records every attempt: host, pid, git revision, command, exit status, wall time;
* ``logs/<arm>.seed<seed>.log`` is the training log of the last attempt.

A cell is done when its run has evaluated every configured split at its final step.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dmao.analysis.run import superseded_removed
from dmao.device import cpu_name
from dmao.experiment.spec import Cell, ExperimentSpec
from dmao.training.checkpoint import checkpoint_step, list_checkpoints
from dmao.training.metrics import read_metrics

log = logging.getLogger(__name__)


def git_revision() -> str | None:
    """The commit of the dmao checkout this runs from, with ``-dirty`` for uncommitted changes; None outside git."""
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def is_finished(cell: Cell) -> bool:
    """Whether the cell's run reached its final step (its checkpoint) and evaluated every configured split there."""
    cfg = cell.config()
    checkpoints = list_checkpoints(cell.run_dir / "checkpoints")
    if not checkpoints or checkpoint_step(checkpoints[-1]) != cfg.train.steps:
        return False
    try:
        records = superseded_removed(read_metrics(cell.run_dir))
    except (FileNotFoundError, ValueError, KeyError):
        return False
    evaluated = {r.get("split") for r in records if r.get("kind") == "eval" and r.get("step") == cfg.train.steps}
    return all(split in evaluated and (cell.run_dir / f"hyp_{split}.txt").is_file() for split in cfg.train.eval_splits)


class CellLock:
    """The exclusive claim on one cell (see the module text); non-blocking."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def try_acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        self.fd = fd
        return True

    def holder(self) -> str:
        with contextlib.suppress(OSError):
            return self.path.read_text().strip()
        return "?"

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass
class GridPaths:
    root: Path

    @property
    def invocations(self) -> Path:
        return self.root / "invocations.jsonl"

    def lock(self, cell: Cell) -> CellLock:
        return CellLock(self.root / "locks" / f"{cell.slug}.lock")

    def record(self, cell: Cell) -> Path:
        return self.root / "cells" / f"{cell.slug}.json"

    def log(self, cell: Cell) -> Path:
        return self.root / "logs" / f"{cell.slug}.log"


def read_record(path: Path) -> dict[str, Any]:
    """A cell's attempt record; an absent or unreadable one is empty (it only informs, the run directory decides)."""
    with contextlib.suppress(OSError, json.JSONDecodeError):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("attempts"), list):
            return data
    return {"attempts": []}


def _write_record(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(temporary, path)


def cell_status(cell: Cell, paths: GridPaths) -> str:
    """done, running (another process holds the cell), waiting (for its layout source), failed (the last attempt),
    partial (checkpoints, resumable) or pending."""
    if is_finished(cell):
        return "done"
    lock = paths.lock(cell)
    if lock.path.exists():
        if not lock.try_acquire():
            return f"running ({lock.holder()})"
        lock.release()
    if cell.source is not None and not is_finished(cell.source):
        return f"waiting for {cell.source.name}"
    attempts = read_record(paths.record(cell))["attempts"]
    checkpoints = list_checkpoints(cell.run_dir / "checkpoints")
    at = f" at step {checkpoint_step(checkpoints[-1])}" if checkpoints else ""
    rc = attempts[-1].get("rc") if attempts else None
    if rc is not None and rc != 0 and not interrupted(rc):
        return f"failed (exit {rc}{at}; {paths.log(cell)})"
    return f"partial{at}" if checkpoints else "pending"


def interrupted(rc: int) -> bool:
    """Whether an exit status is a stop on SIGINT/SIGTERM (the trainer's 128 + signal, or killed by it): the cell
    resumes, it did not fail."""
    return rc in (-signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGTERM)


def train_command(cell: Cell) -> list[str]:
    resume = ["resume=true"] if list_checkpoints(cell.run_dir / "checkpoints") else []
    return [sys.executable, "-m", "dmao.cli", "train", str(cell.config_path), *cell.overrides, "train.progress=false",
            *resume]  # fmt: skip


@dataclass
class Running:
    cell: Cell
    process: subprocess.Popen
    lock: CellLock
    started: float
    attempt: dict[str, Any]


class GridRunner:
    """Runs the unfinished cells of a spec, ``jobs`` at a time, in the spec's order."""

    def __init__(self, spec: ExperimentSpec, grid_dir: Path, jobs: int = 1, arms: tuple[str, ...] = ()) -> None:
        if jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {jobs}")
        unknown = sorted(set(arms) - set(spec.arms))
        if unknown:
            raise ValueError(f"--arms: no arm {', '.join(unknown)} in the spec (arms: {', '.join(spec.arms)})")
        self.spec, self.jobs = spec, jobs
        grid_dir = grid_dir.resolve()  # cells record absolute paths: a run is then the same from any directory
        self.paths = GridPaths(grid_dir)
        self.cells = [c for c in spec.cells(grid_dir) if not arms or c.arm in arms]
        self.failed: set[str] = set()
        self._finished: set[str] = set()
        self._stop_signal: int | None = None

    def prepare_data(self) -> None:
        """Build or prepare each distinct corpus of the cells once, here, before cells race to build it."""
        from dmao.data.corpus import load_splits

        seen = []
        for cell in self.cells:
            cfg = cell.config()
            if cfg.data not in seen and not is_finished(cell):
                seen.append(cfg.data)
                try:
                    load_splits(cfg.data, cfg.model.features.sample_rate, num_jobs=os.cpu_count() or 1)
                except Exception as err:  # each of its cells then fails with this error in its own log
                    log.warning("the corpus of %s could not be prepared: %s", cell.name, err)

    def _done(self, cell: Cell) -> bool:
        """:func:`is_finished`, remembered once true (the loop asks every second)."""
        if cell.name not in self._finished and is_finished(cell):
            self._finished.add(cell.name)
        return cell.name in self._finished

    def _startable(self, cell: Cell) -> bool:
        if cell.name in self.failed or self._done(cell):
            return False
        return cell.source is None or self._done(cell.source)

    def _launch(self, cell: Cell) -> Running | None:
        lock = self.paths.lock(cell)
        if not lock.try_acquire():
            return None
        if is_finished(cell):  # finished elsewhere between the check and the claim
            lock.release()
            return None
        command = train_command(cell)
        self.paths.log(cell).parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        threads = cell.config().train.threads
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        with open(self.paths.log(cell), "w") as handle:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
        attempt = {
            "host": socket.gethostname(),
            "machine": f"{cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
            "pid": process.pid,
            "git_revision": git_revision(),
            "command": command,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "rc": None,
        }
        record = read_record(self.paths.record(cell))
        record.update(arm=cell.arm, seed=cell.seed, run_dir=str(cell.run_dir))
        record["attempts"].append(attempt)
        _write_record(self.paths.record(cell), record)
        log.info("started %s (pid %d): log %s", cell.name, process.pid, self.paths.log(cell))
        return Running(cell, process, lock, time.monotonic(), attempt)

    def _finish(self, run: Running, rc: int) -> None:
        record = read_record(self.paths.record(run.cell))
        attempt = record["attempts"][-1] if record["attempts"] else run.attempt
        attempt.update(rc=rc, wall_seconds=round(time.monotonic() - run.started, 1),
                       ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"))  # fmt: skip
        record["attempts"][-1:] = [attempt]
        _write_record(self.paths.record(run.cell), record)
        run.lock.release()
        if rc == 0 and is_finished(run.cell):
            log.info("finished %s in %.0f s", run.cell.name, attempt["wall_seconds"])
        elif interrupted(rc):
            log.warning("%s stopped on a signal; it resumes from its last checkpoint next time", run.cell.name)
        else:
            self.failed.add(run.cell.name)
            log.error("%s stopped with exit status %d: see %s", run.cell.name, rc, self.paths.log(run.cell))

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop_signal = signum

    def run(self, command: str = "") -> int:
        """Train until every cell is done, failed, or held by another process; 0 when nothing failed. SIGINT or
        SIGTERM stops the running cells (each writes a checkpoint to resume from) and returns. ``command`` (how this
        was started) is recorded with the time, host and revision in ``GRID/invocations.jsonl``."""
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        status = 1
        try:
            status = self._run()
        finally:
            self.paths.root.mkdir(parents=True, exist_ok=True)
            with open(self.paths.invocations, "a") as handle:
                handle.write(json.dumps({
                    "command": command, "jobs": self.jobs, "host": socket.gethostname(), "git_revision": git_revision(),
                    "started": started, "ended": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "status": status,
                }) + "\n")  # fmt: skip
        return status

    def _run(self) -> int:
        self.prepare_data()
        running: list[Running] = []
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while True:
                if self._stop_signal is not None:
                    for run in running:
                        with contextlib.suppress(ProcessLookupError):
                            run.process.send_signal(signal.SIGTERM)
                    for run in running:
                        self._finish(run, run.process.wait())
                    log.warning("stopped on signal %d; run the same command again to resume", self._stop_signal)
                    return 128 + self._stop_signal
                for run in [r for r in running if r.process.poll() is not None]:
                    running.remove(run)
                    self._finish(run, run.process.returncode)
                busy = {r.cell.name for r in running}
                for cell in self.cells:
                    if len(running) >= self.jobs:
                        break
                    if cell.name not in busy and self._startable(cell):
                        started = self._launch(cell)
                        if started is not None:
                            running.append(started)
                            busy.add(cell.name)
                if not running:
                    break
                time.sleep(1.0)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        left = [c.name for c in self.cells if not is_finished(c)]
        if left:
            log.warning("not finished: %s", ", ".join(left))
        return 1 if self.failed else 0

    def listing(self) -> str:
        """The cells in run order with their status and command (the dry run)."""
        lines = [f"grid {self.paths.root} ({len(self.cells)} cells)"]
        for cell in self.cells:
            lines.append(f"{cell.name:<32} {cell_status(cell, self.paths)}")
        done = sum(is_finished(c) for c in self.cells)
        lines.append(f"{done} of {len(self.cells)} done")
        first = next((c for c in self.cells if not is_finished(c)), None)
        if first is not None:
            lines.append(f"command of {first.name}: " + " ".join(train_command(first)))
        return "\n".join(lines)
