"""The step cache: a local build's disk after each of its steps, kept by content.

A step's key is sha256 over the previous step's key (the first: the layer and the source) and
the step's own definition (its script's bytes, how it is run, its environment). A build whose
first k keys are all here starts from the disk after step k. Each entry is a qcow2 overlay of
the entry before it (the first: of the layer), holding only what its step changed, so a chain
is usable while every file in it is: dropping an entry drops every entry that stands on it.

Entries are made before cleanup, so they hold what the build VM held: the directory is 0700
and every file 0600, like the build VM's own disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from imageforge.errors import ImageforgeError

LOCK = ".lock"


class CacheBusy(ImageforgeError):
    """A build is using the cache."""


@dataclass(frozen=True)
class Entry:
    """One cached disk: the state after step `index` (`script`) of a build of `flavor`."""

    key: str
    parent: str  # the previous entry's key; "" for the first step (its backing is the layer)
    backing: str  # the file this overlay stands on
    flavor: str
    index: int
    script: str
    created: float
    size: int


def step_keys(start: str, definitions: Sequence[str]) -> list[str]:
    """The key of each step: key_j = sha256(key_{j-1}, definition_j), key_0 = start."""
    keys, previous = [], start
    for definition in definitions:
        previous = hashlib.sha256(f"{previous}\0{definition}".encode()).hexdigest()
        keys.append(previous)
    return keys


class StepCache:
    """The cache directory: <key>.qcow2 and <key>.json per entry."""

    def __init__(self, root: Path, limit_bytes: int) -> None:
        self.root, self.limit_bytes = root, limit_bytes

    def disk(self, key: str) -> Path:
        return self.root / f"{key}.qcow2"

    def _meta(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def _ensure(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)

    # --- reading ----------------------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        """The entry, if it and every entry (and the layer) below it are complete."""
        try:
            entry = Entry(**json.loads(self._meta(key).read_text()))
        except (OSError, ValueError, TypeError):
            return None
        if not self.disk(key).is_file() or not Path(entry.backing).is_file():
            return None
        if entry.parent and self.get(entry.parent) is None:
            return None
        return entry

    def entries(self) -> list[Entry]:
        """Every complete entry, oldest use first."""
        found = [self.get(meta.stem) for meta in self.root.glob("*.json")]
        return sorted((e for e in found if e), key=self.last_used)

    def resume_point(self, keys: Sequence[str]) -> int:
        """How many of the steps (from the first) have their disk here."""
        done = 0
        for key in keys:
            if self.get(key) is None:
                break
            done += 1
        return done

    def used(self, key: str) -> None:
        """Mark an entry (and so its chain) as just used, for the oldest-first eviction."""
        with contextlib.suppress(OSError):
            os.utime(self._meta(key))

    def last_used(self, entry: Entry) -> float:
        try:
            return self._meta(entry.key).stat().st_mtime
        except OSError:
            return 0.0

    def size(self) -> int:
        return sum(e.size for e in self.entries())

    # --- writing ----------------------------------------------------------------------------
    def partial(self, key: str) -> Path:
        """Where a disk copy is written before it is complete."""
        self._ensure()
        return self.root / f".partial-{key}-{os.getpid()}.qcow2"

    def add(self, entry: Entry, partial: Path) -> Entry | None:
        """Make a complete copy an entry: synced, the disk first, then its description, each
        by an atomic rename, so an interrupted add leaves no entry (and no half of one).
        An entry is never replaced (what stands on it was made from its disk): with one
        already there, the copy is dropped and None returned."""
        if self.get(entry.key) is not None:
            partial.unlink(missing_ok=True)
            return None
        for stale in self._described(parent=entry.key):  # made on a disk now gone
            self.remove(stale)
        partial.chmod(0o600)
        _fsync(partial)
        entry = Entry(**{**asdict(entry), "size": partial.stat().st_blocks * 512})
        os.replace(partial, self.disk(entry.key))
        meta = self.root / f".partial-{entry.key}-{os.getpid()}.json"
        fd = os.open(meta, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(entry), handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(meta, self._meta(entry.key))
        _fsync(self.root)
        return entry

    def _described(self, parent: str) -> list[str]:
        """The keys of every description naming parent, complete entries or not."""
        keys = []
        for meta in self.root.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                if json.loads(meta.read_text()).get("parent") == parent:
                    keys.append(meta.stem)
        return keys

    def remove(self, key: str) -> None:
        """An entry and every entry that stands on it."""
        for child in self._described(parent=key):
            self.remove(child)
        self._meta(key).unlink(missing_ok=True)  # the description first: no half entry is used
        self.disk(key).unlink(missing_ok=True)

    def tidy(self) -> list[str]:
        """Remove what no complete entry explains (partial copies, broken chains); their names."""
        removed = []
        keep = {e.key for e in self.entries()}
        for path in self.root.glob("*") if self.root.is_dir() else ():
            if path.name == LOCK or path.stem in keep:
                continue
            if path.name.startswith(".partial-") and _writer_alive(path.name):
                continue
            path.unlink(missing_ok=True)
            removed.append(path.name)
        return removed

    def evict(self) -> list[Entry]:
        """Drop the least recently used entries (with what stands on them) until the cache is
        within its limit; what was dropped."""
        dropped: list[Entry] = []
        entries = self.entries()
        total = sum(e.size for e in entries)
        # A chain is as recent as its most recently used step: its first step is used by every
        # resume, yet only the last one's use is marked.
        last = {
            e.key: max(self.last_used(d) for d in entries if _stands_on(d, e.key, self))
            for e in entries
        }
        for entry in sorted(entries, key=lambda e: last[e.key]):
            if total <= self.limit_bytes:
                break
            if self.get(entry.key) is None:  # already gone with a parent
                continue
            chain = [e for e in self.entries() if _stands_on(e, entry.key, self)]
            self.remove(entry.key)
            dropped += chain
            total -= sum(e.size for e in chain)
        return dropped

    def clear(self) -> int:
        """Everything; the bytes freed."""
        freed = self.size()
        for entry in self.entries():
            self.remove(entry.key)
        self.tidy()
        return freed

    # --- sharing with running builds ------------------------------------------------------------
    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Held by a build while its disk may stand on entries: nothing is removed meanwhile."""
        with self._lock(fcntl.LOCK_SH):
            yield

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """For eviction and clearing: fails at once (CacheBusy) while a build reads."""
        try:
            with self._lock(fcntl.LOCK_EX | fcntl.LOCK_NB):
                yield
        except BlockingIOError:
            raise CacheBusy(
                f"a build is using the step cache ({self.root}); try again when it is done"
            ) from None

    @contextlib.contextmanager
    def _lock(self, mode: int) -> Iterator[None]:
        self._ensure()
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)


def _stands_on(entry: Entry, key: str, cache: StepCache) -> bool:
    """Whether entry is key's entry or stands on it."""
    while True:
        if entry.key == key:
            return True
        parent = cache.get(entry.parent) if entry.parent else None
        if parent is None:
            return False
        entry = parent


def _writer_alive(name: str) -> bool:
    """Whether the process that writes a .partial-<key>-<pid> file still runs."""
    pid = name.rsplit(".", 1)[0].rsplit("-", 1)[-1]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def age(entry: Entry) -> float:
    """Seconds since the entry was made."""
    return time.time() - entry.created
