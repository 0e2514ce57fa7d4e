"""Reaping at start-up: what an earlier run left when it was killed.

A run removes its scratch directories (the build's private key, seeds, VM overlays) in
`finally`, which SIGKILL skips. So every scratch directory names its owner, the process id and
start time in OWNER_FILE, and each task first removes those whose owner is gone. A directory
without an owner file, or whose owner still runs, is left alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from imageforge import log
from imageforge.records import state

PREFIX = "imageforge-"
OWNER_FILE = ".imageforge-owner"


def scratch_dir(prefix: str = PREFIX) -> Path:
    """A new private temporary directory (mode 0700) owned by this process."""
    if not prefix.startswith(PREFIX):
        raise ValueError(f"scratch prefixes start with {PREFIX!r}: {prefix!r}")
    return claim(Path(tempfile.mkdtemp(prefix=prefix)))


def claim(path: Path, owner: str | None = None) -> Path:
    """Name this process (or the process whose token is `owner`) as the owner of a temporary
    directory (imageforge-* in /tmp).

    The owner file appears whole (written aside, then renamed): a reaper that read it half
    written would take a live run's directory for an orphan."""
    token = owner or process_token(os.getpid()) or str(os.getpid())
    partial = path / f"{OWNER_FILE}.partial"
    partial.write_text(token)
    partial.replace(path / OWNER_FILE)
    return path


def owned_here(path: Path) -> bool:
    """Whether this process still owns a scratch directory (a kept VM may have taken it)."""
    try:
        token = (path / OWNER_FILE).read_text()
    except OSError:
        return True
    return token in (process_token(os.getpid()), str(os.getpid()))


@contextlib.contextmanager
def scratch(prefix: str = PREFIX) -> Iterator[Path]:
    """scratch_dir, removed on the way out (and by the next run's reap if we are killed)."""
    path = scratch_dir(prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def process_token(pid: int) -> str | None:
    """'pid starttime' of a live process (not a zombie), or None; a reused pid differs."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command name: field 3 (state) is fields[0], field 22 (starttime) fields[19].
    return None if fields[0] in ("Z", "X") else f"{pid} {fields[19]}"


def owner_alive(token: str) -> bool:
    """Whether the process a token names still runs (the same process, not a reused pid)."""
    parts = token.split()
    if not parts or not parts[0].isdigit():
        return False
    if len(parts) == 1:  # written where there is no procfs: the pid alone must do
        try:
            os.kill(int(parts[0]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return process_token(int(parts[0])) == " ".join(parts)


def reap_scratch(directory: Path | None = None) -> list[Path]:
    """Remove this user's scratch directories whose owner is gone; return them."""
    removed = []
    for path in sorted(Path(directory or tempfile.gettempdir()).glob(f"{PREFIX}*")):
        try:
            info = path.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                continue
            token = (path / OWNER_FILE).read_text()
        except OSError:
            continue  # not ours, not readable, or still being made: leave it
        if not owner_alive(token):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def reap(project_root: Path) -> list[str]:
    """Clean up after killed runs: scratch directories, then records stuck in `building`."""
    found = [f"scratch directory {path}" for path in reap_scratch()]
    found += [f"build {build_id} left in `building`" for build_id in state.reap_stale(project_root)]
    for what in found:
        log.info(f"removed what a killed run left: {what}")
    return found
