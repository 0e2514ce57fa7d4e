"""The host's apt sources, read from /etc/apt in both formats, for building images from them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from imageforge.errors import ImageforgeError


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
    """The host's apt 'deb' entries for suite and suite-updates/-security/..., one-line style."""
    parts = apt_dir / "sources.list.d"
    entries = [
        entry
        for path in [apt_dir / "sources.list", *sorted(parts.glob("*.list"))]
        if path.is_file()
        for entry in _one_line_entries(path.read_text())
    ]
    entries += [e for p in sorted(parts.glob("*.sources")) for e in _deb822_entries(p.read_text())]
    lines = [e.line() for e in entries if re.fullmatch(rf"{re.escape(suite)}([-/].*)?", e.suite)]
    if not lines:
        raise ImageforgeError(
            f"the host's apt sources ({apt_dir}) have no 'deb' entry for {suite}",
            hint=f'pass BaseRecipe(sources=("deb <mirror URI> {suite} main", ...))',
        )
    return tuple(dict.fromkeys(lines))


def _one_line_entries(text: str) -> Iterator[SourceEntry]:
    for raw in text.splitlines():
        match = re.fullmatch(r"\s*deb\s+(?:\[([^]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)", raw.split("#")[0])
        if match:
            options, uri, suite, components = match.groups()
            yield SourceEntry(tuple((options or "").split()), uri, suite, tuple(components.split()))


def _deb822_entries(text: str) -> Iterator[SourceEntry]:
    for paragraph in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in paragraph.splitlines():
            if line.startswith("#"):
                continue
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled") == "no":
            continue
        options = []
        if "\n" not in fields.get("signed-by", "\n"):  # a key file, not an inline key
            options.append(f"signed-by={fields['signed-by']}")
        if "architectures" in fields:
            options.append("arch=" + ",".join(fields["architectures"].split()))
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                components = tuple(fields.get("components", "").split())
                yield SourceEntry(tuple(options), uri, suite, components)
