"""The base operating systems an image can start from, and what each one means.

Debian 13 is the default everywhere. Debian releases are built locally from Debian's packages
(so what the laptop verifies is what the clouds get); Ubuntu is a cloud-only choice that
nothing here boots, and every task that renders, builds or publishes it says so once.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

from imageforge import log

OsName = Literal["debian-13", "debian-12", "ubuntu-24.04", "ubuntu-22.04"]
LocalOsName = Literal["debian-13", "debian-12"]
DEFAULT_OS: LocalOsName = "debian-13"


@dataclass(frozen=True)
class OperatingSystem:
    """One base OS: its distribution, release and how its official cloud images log in."""

    name: str
    distro: str  # the package URL namespace: debian, ubuntu
    suite: str  # the release's code name
    python: str  # the exact version of its python3 package (wheels are chosen for it)
    login_user: str  # the default user of its official cloud images
    aws_login_user: str  # the same on AWS, where Debian's images log in as admin

    @property
    def verified_locally(self) -> bool:
        """Whether imageforge builds and boots this OS on the local cloud."""
        return self.name in typing.get_args(LocalOsName)


SYSTEMS: dict[str, OperatingSystem] = {
    os.name: os
    for os in (
        OperatingSystem("debian-13", "debian", "trixie", "3.13.5", "debian", "admin"),
        OperatingSystem("debian-12", "debian", "bookworm", "3.11.2", "debian", "admin"),
        OperatingSystem("ubuntu-24.04", "ubuntu", "noble", "3.12.3", "ubuntu", "ubuntu"),
        OperatingSystem("ubuntu-22.04", "ubuntu", "jammy", "3.10.12", "ubuntu", "ubuntu"),
    )
}
assert set(SYSTEMS) == set(typing.get_args(OsName))


def get(name: str) -> OperatingSystem:
    """The OS called name (names are checked by the config model before they get here)."""
    return SYSTEMS[name]


def by_suite(suite: str) -> OperatingSystem:
    """The Debian release whose code name is suite."""
    for system in SYSTEMS.values():
        if system.suite == suite:
            return system
    raise KeyError(suite)


UNVERIFIED_NOTE = (
    "not verified locally: {what}. imageforge builds and boots only Debian on this machine, so "
    "these images are tested only by their cloud's own verification, never by a local build"
)


class _Cell(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def os(self) -> str: ...


def unverified_note(cells: Iterable[_Cell]) -> str | None:
    """The one warning line for every cell in cells whose OS is not verified locally (grouped by
    OS: "ubuntu-24.04 (slurm-node-aws, slurm-node-gcp)"), or None when there is none."""
    by_os: dict[str, list[str]] = {}
    for cell in cells:
        if not get(cell.os).verified_locally:
            by_os.setdefault(cell.os, []).append(cell.name)
    if not by_os:
        return None
    what = "; ".join(f"{name} ({', '.join(cells_)})" for name, cells_ in by_os.items())
    return UNVERIFIED_NOTE.format(what=what)


def warn_unverified(cells: Iterable[_Cell]) -> None:
    """What a task that renders, builds or publishes cells says once (one line for all of them)
    when some start from an OS that imageforge never boots locally."""
    note = unverified_note(cells)
    if note is not None:
        log.warn(note)
