"""The current package indexes of a Debian suite, fetched by the host's own apt.

`apt-get update` runs with a private state, cache and sources list, so the host's apt
configuration (proxy, CA certificates, authentication) applies while the host's own package
lists stay untouched. The Packages files apt fetched are found with `apt-get indextargets` and
read with python-debian; versions compare with python-debian's Debian version rules.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from debian.deb822 import Packages
from debian.debian_support import Version

from imageforge.clouds.local.debcache import DebCache
from imageforge.errors import ImageforgeError
from imageforge.process import runner
from imageforge.records.state import sha256

# The suites an image takes updates from: its release, -updates and -security (no backports).
POCKETS = {"": "release", "-updates": "updates", "-security": "security"}
APT_HELPER = "/usr/lib/apt/apt-helper"
FIELDS = ["Package", "Version", "Architecture", "SHA256", "Source"]
SOURCE_LINE = re.compile(r"deb\s+(?:\[[^]]*\]\s+)?\S+\s+(\S+)")


@dataclass(frozen=True)
class Candidate:
    """One version of a binary package in one pocket of the suite."""

    name: str
    version: Version
    arch: str
    pocket: str  # "release", "updates" or "security"
    sha256: str
    source: str

    @property
    def deb_name(self) -> str:
        """The file name apt gives the .deb: name_version_arch.deb, an epoch's ':' as %3a."""
        return f"{self.name}_{str(self.version).replace(':', '%3a')}_{self.arch}.deb"


def pocket_sources(lines: Sequence[str], suite: str) -> list[str]:
    """The 'deb' lines of suite, suite-updates and suite-security (others, backports, left)."""
    wanted = {suite + tail for tail in POCKETS}
    return [line for line in lines if _suite(line) in wanted]


def _suite(line: str) -> str:
    match = SOURCE_LINE.match(line.strip())
    return match.group(1) if match else ""


class SuiteArchive:
    """The indexes of one suite's pockets for one architecture, in a private apt state."""

    def __init__(self, suite: str, arch: str, sources: Sequence[str], workdir: Path) -> None:
        self.suite = suite
        self.arch = arch
        self.sources = pocket_sources(sources, suite)
        self.workdir = workdir
        if not self.sources:
            raise ImageforgeError(f"no apt source for {suite}, {suite}-updates or {suite}-security")

    def options(self) -> list[str]:
        """apt's options for the private state: the host's configuration, these sources."""
        work = self.workdir
        settings = {
            "Dir::State": work / "state",
            "Dir::State::status": work / "status",
            "Dir::Cache": work / "cache",
            "Dir::Etc::SourceList": work / "sources.list",
            "Dir::Etc::SourceParts": work / "sources.list.d",
            "Acquire::GzipIndexes": "false",
            "Acquire::Languages": "none",
            "APT::Architecture": self.arch,
            "APT::Architectures": self.arch,
        }
        return [arg for key, value in settings.items() for arg in ("-o", f"{key}={value}")]

    def update(self) -> None:
        """Fetch the pockets' indexes (`apt-get update` in the private state)."""
        work = self.workdir
        for directory in ("state/lists/partial", "cache/archives/partial", "sources.list.d"):
            (work / directory).mkdir(parents=True, exist_ok=True)
        (work / "status").touch()
        (work / "sources.list").write_text("\n".join(self.sources) + "\n")
        work.chmod(0o755)  # apt's _apt sandbox user reads and writes its partial directories
        runner.run(["apt-get", *self.options(), "update"], stream=False, what="apt-get update")

    def indexes(self) -> dict[str, list[Path]]:
        """The fetched Packages files of each pocket ({"security": [...], ...})."""
        listed = runner.output(
            [
                "apt-get",
                *self.options(),
                "indextargets",
                "--format",
                "$(FILENAME)\t$(RELEASE)",
                "Created-By: Packages",
            ]
        )
        found: dict[str, list[Path]] = {}
        for line in listed.splitlines():
            filename, _, release = line.partition("\t")
            pocket = POCKETS.get(release.removeprefix(self.suite), "")
            if release.startswith(self.suite) and pocket and Path(filename).is_file():
                found.setdefault(pocket, []).append(Path(filename))
        if "release" not in found:
            raise ImageforgeError(
                f"apt fetched no package index of {self.suite} ({self.arch})",
                hint="check the host's apt sources and proxy: `apt-get update` must reach them",
            )
        return found

    def candidates(self, names: Collection[str]) -> dict[str, list[Candidate]]:
        """Every version of the named packages in the suite's pockets."""
        found: dict[str, list[Candidate]] = {}
        for pocket, paths in self.indexes().items():
            for path in paths:
                for candidate in _read(path, pocket, names):
                    found.setdefault(candidate.name, []).append(candidate)
        return found

    def download(self, candidate: Candidate, cache: DebCache) -> Path:
        """The candidate's .deb in cache: the cached file when its sha256 is the index's, or
        downloaded there (`apt-get download`) first."""
        cached = cache.directory / candidate.deb_name
        if cached.is_file() and sha256(cached) == candidate.sha256:
            return cached
        cache.directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache.directory, prefix=".outdated-") as tmp:
            runner.run(
                [
                    "apt-get",
                    *self.options(),
                    "download",
                    f"{candidate.name}:{candidate.arch}={candidate.version}",
                ],
                cwd=Path(tmp),
                stream=False,
                what=f"apt-get download {candidate.name}",
            )
            debs = sorted(Path(tmp).glob("*.deb"))
            if len(debs) != 1:
                raise ImageforgeError(f"apt-get download {candidate.name} gave no .deb")
            os.replace(debs[0], cached)
        return cached


def _read(path: Path, pocket: str, names: Collection[str]) -> Iterator[Candidate]:
    with _opened(path) as stream:
        for paragraph in Packages.iter_paragraphs(stream, fields=FIELDS, use_apt_pkg=False):
            name = paragraph.get("Package", "")
            if name in names and paragraph.get("Version"):
                yield Candidate(
                    name=name,
                    version=Version(paragraph["Version"]),
                    arch=paragraph.get("Architecture", ""),
                    pocket=pocket,
                    sha256=paragraph.get("SHA256", ""),
                    source=paragraph.get("Source", name).split(" ", 1)[0],
                )


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[IO[str]]:
    """A Packages file as text: read directly, or through apt-helper when apt kept it
    compressed (Acquire::GzipIndexes=false asks it not to)."""
    if path.name.endswith("Packages"):
        with path.open(encoding="utf-8", errors="replace") as stream:
            yield stream
    else:
        yield io.StringIO(runner.output([APT_HELPER, "cat-file", path], what="apt-helper cat-file"))
