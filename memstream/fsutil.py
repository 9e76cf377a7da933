"""Durability helpers shared by the file log and the file key store, and the data dir's
scratch space."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a create, rename or unlink in it) survive a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Scratch space for work that writes plaintext to disk outside the projection (an export the
# server builds before sending it). It lives under the data dir, never the system temp dir,
# so the next start and every erasure can reach what a crashed process left.
SCRATCH = "tmp"
_HELD = ".held"


@contextmanager
def scratch_dir(data_dir: Path, prefix: str) -> Iterator[Path]:
    """A private directory under `<data_dir>/tmp`, deleted on exit. A lock held for its life
    tells `drop_scratch` in other processes that it is in use."""
    root = data_dir / SCRATCH
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    fd = os.open(path / _HELD, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def drop_scratch(data_dir: Path) -> list[str]:
    """Delete the scratch directories no live process holds (a crash left them); returns
    their names. Called at start and by every erasure: they may hold plaintext."""
    root, dropped = data_dir / SCRATCH, list[str]()
    if not root.is_dir():
        return dropped
    for path in root.iterdir():
        if not path.is_dir():
            path.unlink(missing_ok=True)
            continue
        try:
            fd = os.open(path / _HELD, os.O_RDWR)
        except FileNotFoundError:  # being created (lock to follow) or being removed
            if not path.exists() or time.time() - path.stat().st_mtime < 60:
                continue
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # in use by a live process
            finally:
                os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        dropped.append(path.name)
    return dropped
