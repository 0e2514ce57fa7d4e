"""What each image still carries: the packages of a cell's newest verified build that its
suite, `-updates` or `-security` now has newer, and the CVEs each security update fixes.

The installed packages come from the build's SBOM (sbom.cdx.json); the current versions from
the suite's indexes, fetched by the host's apt (aptarchive). The CVEs are read from the new
package's own changelog.Debian, between the installed and the new version; the .deb goes into
the shared .deb cache, where a `--refresh` build takes it.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from debian.debfile import DebError, DebFile
from debian.debian_support import Version

from imageforge import log
from imageforge.clouds.local import aptsources, recipe
from imageforge.config import oses, settings
from imageforge.config.matrix import Cell
from imageforge.errors import ImageforgeError
from imageforge.records import registry
from imageforge.records.record import BuildRecord
from imageforge.stages import sbom
from imageforge.tools.aptarchive import Candidate, SuiteArchive

# The exit code of `invoke outdated` when a security update is pending (0: none).
SECURITY_PENDING = 100
# ... when no security update is known to be pending, but a verified build could not be checked.
CHECK_FAILED = 1
CVE = re.compile(r"CVE-\d{4}-\d{4,}")


@dataclass(frozen=True)
class Installed:
    """A deb package as the build's SBOM records it."""

    name: str
    version: str
    arch: str


@dataclass(frozen=True)
class Update:
    """An installed package with a newer candidate; cves is None when they are unknown (no
    changelog in the new .deb, or it could not be downloaded)."""

    name: str
    installed: str
    candidate: str
    security: bool
    cves: tuple[str, ...] | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "installed": self.installed,
            "candidate": self.candidate,
            "security": self.security,
            "cves": list(self.cves) if self.cves is not None else None,
        }


@dataclass(frozen=True)
class CellReport:
    """One cell: its newest verified build and its updates, or why it was not checked."""

    flavor: str
    cloud: str
    build: str | None = None
    updates: tuple[Update, ...] = ()
    unchecked: str | None = None

    @property
    def security_pending(self) -> bool:
        return any(update.security for update in self.updates)

    @property
    def failed(self) -> bool:
        """A verified build that could not be checked (not: a cell with no build yet)."""
        return self.build is not None and self.unchecked is not None

    def as_json(self) -> dict[str, Any]:
        return {
            "flavor": self.flavor,
            "cloud": self.cloud,
            "build": self.build,
            "packages": [update.as_json() for update in self.updates],
            "unchecked": self.unchecked,
        }


def read_sbom(path: Path) -> list[Installed]:
    """The deb packages of a CycloneDX SBOM (pkg:deb/... package URLs with their arch)."""
    found = [
        Installed(url.name, url.version, str(url.qualifiers.get("arch", "")))
        for url in sbom.package_urls(path)  # ValueError: the cell is unchecked
        if url.type == "deb" and url.version
    ]
    if not found:
        raise ValueError("it lists no deb package")
    return found


def architecture(packages: Sequence[Installed]) -> str:
    """The image's architecture: the one most of its arch-specific packages have."""
    counted = Counter(p.arch for p in packages if p.arch and p.arch != "all")
    if not counted:
        raise ValueError("no package names an architecture")
    return counted.most_common(1)[0][0]


def newest_verified(root: Path, flavor: str, cloud: str) -> BuildRecord | None:
    """The cell's newest build that is verified (the registry lists newest first)."""
    return next((r for r in registry.builds(root, flavor=flavor, cloud=cloud) if r.verified), None)


def compare(
    installed: Sequence[Installed], candidates: dict[str, list[Candidate]]
) -> list[tuple[Installed, Candidate, bool]]:
    """Each installed package with a newer version: the newest candidate, and whether a newer
    version is in -security."""
    found = []
    for package in installed:
        current = Version(package.version)
        newer = [
            c
            for c in candidates.get(package.name, [])
            if c.arch in (package.arch, "all") and c.version > current
        ]
        if newer:
            best = max(newer, key=lambda c: (c.version, c.pocket == "security"))
            found.append((package, best, any(c.pocket == "security" for c in newer)))
    return found


def cves(deb: Path, installed: str, candidate: str) -> tuple[str, ...] | None:
    """The CVEs the .deb's changelog.Debian names in the entries newer than installed, up to
    candidate; None when the .deb has no changelog (its doc directory may be a link to
    another package's, shipped in another .deb)."""
    try:
        changelog = DebFile(str(deb)).changelog()
    except (DebError, OSError, EOFError, ValueError) as exc:
        log.warn(f"{deb.name}: unreadable ({exc})")
        return None
    if changelog is None:
        return None
    low, high = Version(installed), Version(candidate)
    found: dict[str, None] = {}
    for block in changelog:
        if block.version is None or not low < block.version <= high:
            continue
        for line in block.changes():
            found.update(dict.fromkeys(CVE.findall(line)))
    return tuple(sorted(found))


class Archives:
    """The suite archives of one run, each fetched once (cells share suites)."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self.stack = stack
        self.fetched: dict[tuple[str, str], SuiteArchive | ImageforgeError] = {}

    def get(self, suite: str, arch: str) -> SuiteArchive:
        key = (suite, arch)
        if key not in self.fetched:
            try:
                self.fetched[key] = self._fetch(suite, arch)
            except ImageforgeError as exc:
                self.fetched[key] = exc
        found = self.fetched[key]
        if isinstance(found, ImageforgeError):
            raise found
        return found

    def _fetch(self, suite: str, arch: str) -> SuiteArchive:
        apt_dir = settings.current().apt_sources or Path("/etc/apt")
        sources = aptsources.host_sources(suite, apt_dir)
        workdir = Path(self.stack.enter_context(tempfile.TemporaryDirectory(prefix="outdated-")))
        archive = SuiteArchive(suite, arch, sources, workdir)
        with log.step(f"apt-get update: {suite} ({arch})"):
            archive.update()
        return archive


def check(root: Path, cells: Sequence[Cell]) -> list[CellReport]:
    """The report of every cell; a cell that cannot be checked says why, never vanishes."""
    with contextlib.ExitStack() as stack:
        archives = Archives(stack)
        return [check_cell(root, cell, archives) for cell in cells]


def check_cell(root: Path, cell: Cell, archives: Archives) -> CellReport:
    """One cell's report against the current archive."""
    flavor, cloud = cell.flavor_name, cell.cloud
    record = newest_verified(root, flavor, cloud)
    if record is None:
        return CellReport(flavor, cloud, unchecked="no verified build")
    try:
        updates = list(_updates(record, record.os or cell.os, archives))
    except (ImageforgeError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0]
        return CellReport(flavor, cloud, record.id, unchecked=reason)
    return CellReport(flavor, cloud, record.id, tuple(updates))


def _updates(record: BuildRecord, os_name: str, archives: Archives) -> Iterator[Update]:
    system = oses.get(os_name)
    if system.distro != "debian":
        raise ImageforgeError(f"only Debian images are checked, not {os_name}")
    path = record.directory / sbom.FILE
    if not path.is_file():
        raise ImageforgeError(f"build {record.id} has no {sbom.FILE}")
    try:
        installed = read_sbom(path)
        arch = architecture(installed)
    except (ValueError, KeyError) as exc:
        raise ImageforgeError(f"{path}: {exc}") from None
    archive = archives.get(system.suite, arch)
    candidates = archive.candidates({p.name for p in installed})
    for package, candidate, security in compare(installed, candidates):
        found = _security_cves(archive, system.suite, package, candidate) if security else None
        yield Update(package.name, package.version, str(candidate.version), security, found)


def _security_cves(
    archive: SuiteArchive, suite: str, package: Installed, candidate: Candidate
) -> tuple[str, ...] | None:
    try:
        deb = archive.download(candidate, recipe.deb_cache(suite))
    except ImageforgeError as exc:
        log.warn(f"{candidate.name} {candidate.version}: not downloaded, CVEs unknown ({exc})")
        return None
    return cves(deb, package.version, str(candidate.version))
