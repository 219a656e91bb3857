"""Temporary files of interrupted writes: a writer holds a lock on its temp file (or folder) while it works, so the
next run can tell a dead writer's leftover from a live one's work in progress and remove only the former. A child
process (ffmpeg) is tied to its parent so that killing a run cannot leave it finishing an orphaned file."""

from __future__ import annotations

import ctypes
import glob
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so leftovers are kept (never a live writer's file removed)
    fcntl = None

# A temp this young may belong to a writer that created it and has not locked it yet.
MIN_AGE_S = 30.0


@contextmanager
def holding(tmp: Path) -> Iterator[None]:
    """Hold an exclusive lock on `tmp` (a file or folder that exists) while the body writes it."""
    if fcntl is None:
        yield
        return
    fd = os.open(tmp, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def remove_stale(folder: Path, pattern: str) -> list[Path]:
    """Remove the temp files or folders matching `pattern` in `folder` whose writer is gone (nobody holds their
    lock) and that are older than MIN_AGE_S. Returns what was removed."""
    removed: list[Path] = []
    if fcntl is None:
        return removed
    for name in glob.glob(pattern, root_dir=folder, include_hidden=True):
        path = folder / name
        try:
            if time.time() - path.lstat().st_mtime < MIN_AGE_S or not _unlocked(path):
                continue
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            removed.append(path)
        except OSError:  # gone meanwhile, or not ours to remove: leave it
            continue
    return removed


def _unlocked(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def die_with_parent() -> None:
    """For subprocess.Popen(preexec_fn=...): the kernel kills the child when the process that started it dies
    (Linux PR_SET_PDEATHSIG; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
