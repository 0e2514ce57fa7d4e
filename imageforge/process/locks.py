"""One build at a time per flavor and cloud: an flock held from render to the end of verify.

The kernel releases the lock when its holder dies, however it dies, so a killed run never
leaves a stale lock behind; the lock file itself stays and only says who held it last.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from imageforge.errors import ImageforgeError

_HELD: dict[Path, int] = {}  # lock path: how many times this process holds it


def path(project_root: Path, flavor: str, cloud: str) -> Path:
    return project_root / "artifacts" / flavor / f".{cloud}.lock"


@contextlib.contextmanager
def cell(project_root: Path, flavor: str, cloud: str, what: str) -> Iterator[None]:
    """Hold the cell's lock (re-entrant within this process), or refuse with who holds it."""
    lock = path(project_root, flavor, cloud)
    if lock in _HELD:
        _HELD[lock] += 1
        try:
            yield
        finally:
            _HELD[lock] -= 1
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock.read_text(errors="replace").strip() or "another process"
            raise ImageforgeError(
                f"{flavor} on {cloud} is busy: {holder}",
                hint="wait for that run to finish, or stop it; one build of a cell at a time",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{what} (pid {os.getpid()})\n".encode())
        _HELD[lock] = 1
        try:
            yield
        finally:
            del _HELD[lock]
    finally:
        os.close(fd)


def held(project_root: Path, flavor: str, cloud: str) -> bool:
    """Whether some live process holds the cell's lock right now."""
    lock = path(project_root, flavor, cloud)
    if lock in _HELD:
        return True
    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
