"""The run directory: claimed with a marker, locked for the whole run, checked for writability before training.

* A new run goes only into a directory that is empty, absent, or already a dmao run directory (its ``.dmao-run``
  marker, or checkpoints of an older version): nothing of a stranger's is overwritten or deleted.
* One run at a time: an exclusive ``flock`` on ``.dmao-lock``, which holds the owner's pid and host for the message
  a second run gets. The kernel releases the lock when its process dies, however it dies, so a stale lock file
  never blocks anyone; its old contents are simply overwritten. Forked children (DataLoader workers) close their
  copy of the descriptor at once, so an orphaned worker cannot keep a dead run's lock.
* A probe file is written, synced and removed before any work starts, so a read-only directory or a full disk is one
  line naming the path, not a traceback from the first checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

MARKER = ".dmao-run"
LOCK = ".dmao-lock"
_PROBE = ".dmao-write-probe"


class RunDirError(RuntimeError):
    """The run directory cannot be used; the message names it and says why."""


_HELD_LOCKS: set[int] = set()
"""Descriptors of the locks this process holds."""


def _close_locks_in_child() -> None:
    # Closing a forked copy releases nothing while the parent's descriptor is open; it only stops the child from
    # holding the lock after the parent has died.
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_close_locks_in_child)


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds a dmao run (its marker)."""
    return (path / MARKER).is_file()


def claim_run_dir(path: Path) -> None:
    """Create ``path`` if needed and mark it as a dmao run directory; refuse a file, or a non-empty directory that is
    not a dmao run; then check that files can be written into it."""
    if path.exists() and not path.is_dir():
        raise RunDirError(f"out_dir {path} is a file, not a directory: choose another out_dir")
    if path.is_dir() and any(path.iterdir()) and not is_run_dir(path):
        legacy = (
            f" (if it is a run of a dmao version from before the marker, add it: touch {path / MARKER})"
            if any((path / "checkpoints").glob("ckpt-*.pt"))
            else ""
        )
        raise RunDirError(
            f"out_dir {path} is not empty and is not a dmao run directory (no {MARKER} marker): dmao writes a run "
            f"only into a new or empty directory or into its own; choose another out_dir{legacy}"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"cannot create out_dir {path}: {err.strerror or err}") from None
    for sub in ("checkpoints", "tokenizer", "tensorboard"):
        if (path / sub).exists() and not (path / sub).is_dir():
            raise RunDirError(f"{path / sub} is a file, but the run needs a directory there: move it away")
    if not (path / MARKER).is_file():  # first, so that nothing we write can sit in an unmarked directory
        created = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(), "pid": os.getpid()}
        try:
            (path / MARKER).write_text(json.dumps(created) + "\n")
        except OSError as err:
            raise RunDirError(f"cannot write into out_dir {path}: {err.strerror or err}") from None
    probe_writable(path)


def probe_writable(path: Path, size: int = 1 << 20) -> None:
    """Write ``size`` bytes into ``path``, sync and delete them: a read-only directory or a full disk fails here."""
    probe = path / _PROBE
    try:
        with open(probe, "wb") as handle:
            handle.write(b"\0" * size)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        reason = "the disk is full" if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else err.strerror
        raise RunDirError(f"cannot write into out_dir {path}: {reason or err}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


class RunLock:
    """An exclusive lock on a run directory for the lifetime of a run (``with RunLock(path): ...``)."""

    def __init__(self, path: Path) -> None:
        self.path = path / LOCK
        self._handle = None

    def acquire(self) -> None:
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the whole run: the lock lives on it
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise RunDirError(
                f"out_dir {self.path.parent} is in use by {owner}: two runs must not share a run directory "
                f"(wait for it to finish, or choose another out_dir)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on host {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self._handle = handle
        _HELD_LOCKS.add(handle.fileno())

    def release(self) -> None:
        if self._handle is not None:
            _HELD_LOCKS.discard(self._handle.fileno())
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
