"""The host's apt sources, read from /etc/apt in both formats, for building images from them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from debian.deb822 import Deb822

from imageforge.errors import ImageforgeError

# Debian's release names, newest first: the host's sources are found by them.
DEBIAN_RELEASES = ("forky", "trixie", "bookworm", "bullseye", "buster")


class SourceEntry(NamedTuple):
    """One apt 'deb' source: options such as signed-by, a URI, a suite and components."""

    options: tuple[str, ...]
    uri: str
    suite: str
    components: tuple[str, ...]

    def line(self) -> str:
        options = f"[{' '.join(self.options)}] " if self.options else ""
        return f"deb {options}{self.uri} {self.suite} {' '.join(self.components)}".strip()


def host_sources(suite: str, apt_dir: Path = Path("/etc/apt")) -> tuple[str, ...]:
    """The host's apt 'deb' entries for suite and suite-updates/-security/..., one-line style.

    A host of another Debian release (a Debian 12 host building Debian 13) has no entries for
    suite: its own release's entries are used with the release's name replaced, the same
    mirrors and keyring (Debian's archive keyring carries the next release's keys).
    """
    parts = apt_dir / "sources.list.d"
    entries = [
        entry
        for path in [apt_dir / "sources.list", *sorted(parts.glob("*.list"))]
        if path.is_file()
        for entry in _one_line_entries(path.read_text())
    ]
    entries += [e for p in sorted(parts.glob("*.sources")) for e in _deb822_entries(p.read_text())]
    lines = [e.line() for e in entries if _of_suite(e, suite)]
    if not lines:
        lines = [e.line() for e in _renamed(entries, suite)]
    if not lines:
        raise ImageforgeError(
            f"the host's apt sources ({apt_dir}) have no 'deb' entry for {suite} "
            "nor for another Debian release",
            hint=f'pass BaseRecipe(sources=("deb <mirror URI> {suite} main", ...))',
        )
    return tuple(dict.fromkeys(lines))


def _of_suite(entry: SourceEntry, suite: str) -> bool:
    return re.fullmatch(rf"{re.escape(suite)}([-/].*)?", entry.suite) is not None


def _renamed(entries: list[SourceEntry], suite: str) -> list[SourceEntry]:
    """The entries of the host's Debian release, moved to suite (bookworm/updates, the old
    security suite's name, becomes suite-security)."""
    releases = [r for r in DEBIAN_RELEASES if any(_of_suite(e, r) for e in entries)]
    if not releases:
        return []
    host = releases[0]  # the newest Debian release the host has sources for
    renamed = []
    for entry in entries:
        if _of_suite(entry, host):
            tail = entry.suite[len(host) :]
            tail = "-security" if tail == "/updates" else tail
            renamed.append(entry._replace(suite=suite + tail))
    return renamed


def _one_line_entries(text: str) -> Iterator[SourceEntry]:
    for raw in text.splitlines():
        match = re.fullmatch(r"\s*deb\s+(?:\[([^]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)", raw.split("#")[0])
        if match:
            options, uri, suite, components = match.groups()
            yield SourceEntry(tuple((options or "").split()), uri, suite, tuple(components.split()))


def _deb822_entries(text: str) -> Iterator[SourceEntry]:
    """Entries of a deb822 .sources file (python-debian parses the paragraphs)."""
    for fields in Deb822.iter_paragraphs(text.splitlines()):  # keys are case-insensitive
        if "deb" not in fields.get("Types", "").split() or fields.get("Enabled") == "no":
            continue
        options = []
        signed_by = fields.get("Signed-By", "").strip()
        if signed_by and "\n" not in signed_by:  # a key file, not an inline key
            options.append(f"signed-by={signed_by}")
        if "Architectures" in fields:
            options.append("arch=" + ",".join(fields["Architectures"].split()))
        components = tuple(fields.get("Components", "").split())
        for uri in fields.get("URIs", "").split():
            for suite in fields.get("Suites", "").split():
                yield SourceEntry(tuple(options), uri, suite, components)
