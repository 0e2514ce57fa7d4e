"""What makes a layer's disk the same, bit for bit, each time its recipe is built.

Two cold builds of one recipe with the same package versions give the same sha256, so anyone can
rebuild a layer and compare it with the one a record (and its provenance) names. Everything that
would otherwise come from the clock or from a random number generator is pinned here:

- time: one fixed SOURCE_DATE_EPOCH for every tool that writes a date (dpkg's maintainer scripts
  through mmdebstrap, e2fsprogs through E2FSPROGS_FAKE_TIME, pip's byte-compiling), file times
  clamped to it before mke2fs copies them, and the inode times mke2fs takes from the build
  host's clock (ctime, and atime once a file has been read) set to it afterwards;
- identity: the disk identifier, the filesystem UUID and the directory hash seed, which sfdisk
  and mke2fs would draw at random, derived from the recipe digest instead. One recipe, one
  identity: two layers of different recipes still differ in them, as two random ones would.

EPOCH is a fixed date, not the time of the build nor of the newest package: a date that moves
with the packages would need them all read first, and the record says when a layer was built.
Package files older than EPOCH keep their times; newer ones show EPOCH like everything the build
wrote (directories, configuration, caches), so no cache a maintainer script made looks older
than what it was made from. Python's byte code does not depend on it: with SOURCE_DATE_EPOCH
set, py_compile writes hash-checked .pyc files (all 1262 of the slurm-node layer are).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

EPOCH = 1735689600  # 2025-01-01T00:00:00Z
# Tools honour SOURCE_DATE_EPOCH (dpkg, initramfs-tools, shadow's useradd, py_compile: which
# then writes hash-checked .pyc files) or, e2fsprogs, E2FSPROGS_FAKE_TIME (mkfs and write times).
ENVIRONMENT = {"SOURCE_DATE_EPOCH": str(EPOCH), "E2FSPROGS_FAKE_TIME": str(EPOCH)}
# The derived UUIDs live in a namespace of their own: uuid5(namespace, purpose:digest).
NAMESPACE = uuid.UUID("5b6f8d2e-3c1a-4e7b-9f0d-2a4c6e8b1d3f")


@dataclass(frozen=True)
class Pins:
    """A layer's identifiers, derived from its recipe digest instead of drawn at random."""

    disk_id: int  # the MBR's disk signature (sfdisk's label-id); PARTUUIDs are made from it
    fs_uuid: str  # the ext4 filesystem's UUID (mke2fs -U); also seeds its metadata checksums
    hash_seed: str  # the seed of ext4's directory index hashes (mke2fs -E hash_seed=)

    @property
    def label_id(self) -> str:
        return f"0x{self.disk_id:08x}"


def pins_for(recipe_digest: str) -> Pins:
    """The identifiers of the layer built from the recipe with this digest."""
    signature = int.from_bytes(hashlib.sha256(f"disk:{recipe_digest}".encode()).digest()[:4])
    return Pins(
        disk_id=signature or 1,  # 0 would mean "no signature": sfdisk would draw one
        fs_uuid=str(uuid.uuid5(NAMESPACE, f"filesystem:{recipe_digest}")),
        hash_seed=str(uuid.uuid5(NAMESPACE, f"hash-seed:{recipe_digest}")),
    )


def walk(rootfs: Path) -> Iterator[tuple[Path, str]]:
    """Every path in the tree (the tree itself first), in sorted order, with its path inside
    the filesystem ("/", "/etc", ...). Symbolic links are listed, never followed."""
    yield rootfs, "/"
    for directory, dirs, files in os.walk(rootfs):
        dirs.sort()
        inside = "/" + os.path.relpath(directory, rootfs).removeprefix(".").lstrip("/")
        for name in sorted((*dirs, *files)):
            yield Path(directory, name), os.path.join(inside, name)


def clamp_times(rootfs: Path, epoch: int = EPOCH) -> None:
    """No file newer than epoch, and every atime equal to its mtime: what mke2fs -d copies.

    Older package files keep their times; what the build wrote itself gets epoch. Links are
    changed themselves (follow_symlinks=False), never what they point to. The tree is listed
    first: listing a directory moves its atime.
    """
    for path, _ in list(walk(rootfs)):
        mtime = min(int(path.lstat().st_mtime), epoch)
        os.utime(path, (mtime, mtime), follow_symlinks=False)


def inode_time_commands(rootfs: Path, epoch: int = EPOCH) -> str:
    """debugfs commands that set each file's ctime and atime in the filesystem to epoch.

    mke2fs -d copies ctime from the tree, where it is the moment of the build's last change
    (no call can set it), and atime, which reading the file may move to now (relatime).
    """
    lines = []
    for _, inside in walk(rootfs):
        if "\n" in inside:
            raise ValueError(f"a file name with a line break: {inside!r}")
        quoted = '"' + inside.replace('"', '""') + '"'
        lines += [f"sif {quoted} ctime @{epoch}", f"sif {quoted} atime @{epoch}"]
    return "\n".join(lines) + "\n"
