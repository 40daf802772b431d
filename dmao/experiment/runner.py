"""Running a grid: each cell is a ``dmao train`` process; finished cells are skipped, interrupted ones resumed.

The grid directory is the only shared state, so a grid can be continued another day or by several machines at once
(a shared file system with working ``flock``, e.g. a local disk or NFSv4):

* ``runs/<arm>/seed<seed>/`` is the cell's run directory (checkpoints, metrics, transcripts);
* ``locks/<arm>.seed<seed>.lock`` is held (``flock``) by whoever trains the cell; the kernel drops it when that
  process dies, however it dies, so a crashed machine never blocks a cell for good;
* ``cells/<arm>.seed<seed>.json`` records every attempt: host, pid, git revision, command, exit status, wall time;
* ``logs/<arm>.seed<seed>.<attempt>.log`` is the training log of each attempt;
* ``invocations.jsonl`` records every ``dmao experiment`` that trained here (command, host, revision, times).

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
from dmao.config import load_yaml
from dmao.device import cpu_name, device_name, resolve_device
from dmao.experiment.spec import Cell, ExperimentSpec
from dmao.training.checkpoint import checkpoint_step, list_checkpoints
from dmao.training.config import run_changes
from dmao.training.metrics import read_metrics

log = logging.getLogger(__name__)


def git_revision() -> str | None:
    """The commit of the dmao checkout this runs from, with ``-dirty`` for uncommitted changes; None outside git."""
    root = Path(__file__).resolve().parents[2]
    try:
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                             check=True)  # fmt: skip
        if Path(top.stdout.strip()).resolve() != root:  # an installed package inside some other repository
            return None
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
    return all(
        split in evaluated and (cell.run_dir / f"hyp_{split}.txt").is_file() for split in cfg.evaluation_splits()
    )


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

    def log(self, cell: Cell, attempt: int) -> Path:
        """The training log of the cell's attempt (1, 2, ...)."""
        return self.root / "logs" / f"{cell.slug}.{attempt}.log"


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


def config_change(cell: Cell) -> str | None:
    """How the cell's recorded run differs from what the spec asks of it now (None: it does not, or no run yet):
    such a run is not this cell's result, and resuming it would be refused."""
    path = cell.run_dir / "config.yaml"
    if not path.is_file():
        return None
    changes = run_changes(load_yaml(path), cell.config().as_recorded())
    return "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items()) or None


def cell_status(cell: Cell, paths: GridPaths) -> str:
    """stale (its run was made with other settings), done, running (another process holds the cell), waiting (for
    its layout source), failed (the last attempt), partial (checkpoints, resumable) or pending."""
    change = config_change(cell)
    if change:
        return f"stale: its run in {cell.run_dir} has other settings ({change}); move that run away to redo the cell"
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
        return f"failed (exit {rc}{at}; {attempts[-1].get('log', paths.log(cell, len(attempts)))})"
    return f"partial{at}" if checkpoints else "pending"


UNFINISHED = 3
"""Exit status of a run that failed nothing but left cells unfinished (held by another process, or waiting)."""


def machine_description(device: str) -> str:
    """What a cell trains on: the configured device's name (the CPU's for CPU runs), CPU cores, torch version."""
    try:
        where = device_name(resolve_device(device))
    except ValueError:
        where = device
    cpu = cpu_name()
    return f"{where}{'' if where == cpu else f' with {cpu}'}, {os.cpu_count()} CPUs, torch {torch.__version__}"


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
        self.stopped: set[str] = set()
        """Cells stopped by a signal this runner did not send (a user's kill, a scheduler): not restarted here."""
        self._finished: set[str] = set()
        self.stale = {c.name for c in self.cells if config_change(c)}
        """Cells whose run was made with other settings than the spec's now: never trained over, never reported."""
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
        if cell.name in self.failed | self.stopped | self.stale or self._done(cell):
            return False
        return cell.source is None or self._done(cell.source)

    def _launch(self, cell: Cell) -> Running | None:
        lock = self.paths.lock(cell)
        for _ in range(5):  # a dry run elsewhere may probe the lock for an instant
            if lock.try_acquire():
                break
            time.sleep(0.1)
        else:
            return None
        if is_finished(cell):  # finished elsewhere between the check and the claim
            lock.release()
            return None
        command = train_command(cell)
        record = read_record(self.paths.record(cell))
        log_path = self.paths.log(cell, len(record["attempts"]) + 1)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        cfg = cell.config()
        if cfg.train.threads:
            env["OMP_NUM_THREADS"] = str(cfg.train.threads)
        with open(log_path, "w") as handle:  # the child keeps its own copy of the descriptor
            # Its own session: a Ctrl-C in the terminal reaches the runner only, which stops each cell once (a second
            # signal would make the trainer quit without its checkpoint). The child inherits the cell's lock, so the
            # cell stays claimed as long as it trains, even if this runner dies.
            process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True, pass_fds=(lock.fd,))  # fmt: skip
        attempt = {
            "host": socket.gethostname(),
            "machine": machine_description(cfg.train.device),
            "pid": process.pid,
            "git_revision": git_revision(),
            "command": command,
            "log": str(log_path),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "rc": None,
        }
        record.update(arm=cell.arm, seed=cell.seed, run_dir=str(cell.run_dir))
        record["attempts"].append(attempt)
        _write_record(self.paths.record(cell), record)
        log.info("started %s (pid %d): log %s", cell.name, process.pid, log_path)
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
            if self._stop_signal is None:
                self.stopped.add(run.cell.name)
            log.warning("%s stopped on a signal; it resumes from its last checkpoint next time", run.cell.name)
        else:
            self.failed.add(run.cell.name)
            what = f"exit status {rc}" if rc else "exit status 0 without its final checkpoint and evaluation"
            log.error("%s stopped with %s: see %s", run.cell.name, what, attempt["log"])

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

    def _stop_all(self, running: list[Running]) -> None:
        """SIGTERM to every running cell, once (each checkpoints its step and exits), and wait for them."""
        for run in running:
            with contextlib.suppress(ProcessLookupError):
                run.process.send_signal(signal.SIGTERM)
        for run in running:
            self._finish(run, run.process.wait())
        running.clear()

    def _run(self) -> int:
        self.prepare_data()
        running: list[Running] = []
        stop_on = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {s: signal.signal(s, self._on_signal) for s in stop_on}
        try:
            while True:
                if self._stop_signal is not None:
                    self._stop_all(running)
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
            if running:  # an error in this loop: the cells must not train on unwatched
                self._stop_all(running)
            for s, handler in previous.items():
                signal.signal(s, handler)
        left = [c.name for c in self.cells if c.name in self.stale or not is_finished(c)]
        if left:
            log.warning("not finished: %s", ", ".join(left))
        if self.failed:
            return 1
        return UNFINISHED if left else 0

    def listing(self) -> str:
        """The cells in run order with their status and command (the dry run)."""
        lines = [f"grid {self.paths.root} ({len(self.cells)} cells)"]
        statuses = [cell_status(cell, self.paths) for cell in self.cells]
        lines += [f"{cell.name:<32} {status}" for cell, status in zip(self.cells, statuses)]
        lines.append(f"{statuses.count('done')} of {len(self.cells)} done")
        first = next((c for c, status in zip(self.cells, statuses) if status != "done"), None)
        if first is not None:
            lines.append(f"command of {first.name}: " + " ".join(train_command(first)))
        return "\n".join(lines)
