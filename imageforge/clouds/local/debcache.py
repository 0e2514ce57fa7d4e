"""The host's cache of downloaded .deb files, shared by every base image and layer build.

mmdebstrap is handed the cache through hooks: before apt runs, every cached .deb is hard-linked
into the new tree's /var/cache/apt/archives (apt checks each one's checksum and downloads only
what is missing or different); after the packages are installed, the tree's archives are
linked out again, and what was new is added to the cache and counted as downloaded.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

ARCHIVES = "/var/cache/apt/archives"


@dataclass(frozen=True)
class Harvest:
    """What one build fetched: packages downloaded, and packages the cache already had."""

    downloaded: int
    reused: int


class DebCache:
    """A flat directory of .deb files named as the archive names them (name_version_arch.deb)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def mmdebstrap_options(self, outbox: Path) -> list[str]:
        """Hooks that link the cache into the tree, and the tree's archives out into outbox.

        --skip=essential/unlink keeps the essential packages' files for the way out.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        outbox.mkdir(parents=True, exist_ok=True)
        cache, out = shlex.quote(str(self.directory)), shlex.quote(str(outbox))
        link_in = (
            f'mkdir -p "$1{ARCHIVES}" && '
            f'find {cache} -maxdepth 1 -name "*.deb" -type f '
            f'-exec cp -l -t "$1{ARCHIVES}" {{}} +'
        )
        link_out = (
            f'find "$1{ARCHIVES}" -maxdepth 1 -name "*.deb" -type f -exec cp -l -t {out} {{}} +'
        )
        return [
            "--skip=essential/unlink",
            f"--setup-hook={link_in}",
            f"--customize-hook={link_out}",
        ]

    def harvest(self, outbox: Path) -> Harvest:
        """Move outbox's packages into the cache; those it did not have were downloaded."""
        downloaded = reused = 0
        for deb in sorted(outbox.glob("*.deb")):
            cached = self.directory / deb.name
            if cached.is_file() and os.path.samestat(cached.stat(), deb.stat()):
                reused += 1
                deb.unlink()
                continue
            downloaded += 1
            os.replace(deb, cached)
        return Harvest(downloaded=downloaded, reused=reused)

    def count(self) -> int:
        return sum(1 for _ in self.directory.glob("*.deb")) if self.directory.is_dir() else 0
