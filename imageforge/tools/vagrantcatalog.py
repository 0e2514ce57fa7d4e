"""The Vagrant box catalog: one `metadata.json` per flavor that `vagrant box add URL` reads.

Each verified local build with a box is one version of `<name_prefix>/<flavor>`, with the
libvirt provider's url and sha256, and the url of the build's signed provenance (`provenance`,
beside the box) when the build has one. The catalog only grows: a build already in it is left
as it is, and a version that would be written with another checksum is refused, never
rewritten.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imageforge.errors import ImageforgeError
from imageforge.records import provenance, state
from imageforge.records.record import BuildRecord

CATALOG = "metadata.json"


@dataclass(frozen=True)
class Entry:
    """One box of a verified build, as the catalog lists it."""

    version: str
    build_id: str
    box: Path
    sha256: str
    description: str
    provenance: Path | None = None  # the signed provenance.intoto.jsonl


def version_of(build_id: str) -> str:
    """A Vagrant version from a build id: 20261204-213114-… → 20261204.213114."""
    date, time = build_id.split("-")[:2]
    return f"{int(date)}.{int(time)}"


def entries(records: list[BuildRecord]) -> list[Entry]:
    """The boxes of the verified builds whose box is still the one recorded, oldest first."""
    found = []
    for record in sorted(records, key=lambda r: r.id):
        if state.unbound_reason(record) is not None:
            continue
        for artifact in record.derived:
            path = record.directory / artifact.path
            if path.suffix == ".box" and path.is_file() and state.sha256(path) == artifact.sha256:
                described = f"build {record.id} (git {record.git_commit[:12] or 'unknown'})"
                envelope = record.directory / provenance.FILE
                signed = envelope if envelope.is_file() else None
                version = version_of(record.id)
                found.append(Entry(version, record.id, path, artifact.sha256, described, signed))
    return found


def load(path: Path) -> dict[str, Any] | None:
    """The catalog as written before, or None."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ImageforgeError(f"{path}: not a box catalog: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("versions"), list):
        raise ImageforgeError(f"{path}: not a box catalog: no 'versions' list")
    return data


def merge(
    old: dict[str, Any] | None,
    name: str,
    description: str,
    new: list[tuple[Entry, str, str | None]],
) -> tuple[dict[str, Any], list[str]]:
    """The catalog with new (entry, box url, provenance url) versions added; returns it and
    the versions added. A version listed before gets the provenance url it lacked."""
    catalog = old or {"name": name, "description": description, "versions": []}
    if catalog.get("name") != name:
        raise ImageforgeError(f"the catalog is for {catalog.get('name')!r}, not {name!r}")
    known = {v["version"]: v for v in catalog["versions"]}
    added = []
    for entry, url, signed in new:
        existing = known.get(entry.version)
        if existing is not None:
            sums = {p.get("checksum") for p in existing.get("providers", [])}
            if entry.sha256 not in sums:
                raise ImageforgeError(
                    f"version {entry.version} of {name} is already in the catalog with "
                    f"another box (build {existing.get('description', '?')}); "
                    "a published version is never rewritten"
                )
            if signed and "provenance" not in existing:
                existing["provenance"] = signed
            continue
        version = {
            "version": entry.version,
            "description": entry.description,
            "providers": [
                {"name": "libvirt", "url": url, "checksum_type": "sha256", "checksum": entry.sha256}
            ],
        }
        if signed:
            version["provenance"] = signed
        catalog["versions"].append(version)
        known[entry.version] = version
        added.append(entry.version)
    catalog["versions"].sort(key=lambda v: [int(p) for p in v["version"].split(".")])
    return catalog, added


def place(box: Path, destination: Path) -> None:
    """The box in the catalog's directory: a hard link where possible, else a copy."""
    if destination.exists():
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        os.link(box, partial)
    except OSError:
        shutil.copyfile(box, partial)
    partial.replace(destination)


def write(
    records: list[BuildRecord],
    flavor: str,
    name: str,
    out: Path,
    base_url: str | None = None,
    description: str = "",
) -> tuple[Path, list[str]]:
    """Add every verified box of a flavor to `out/<flavor>/metadata.json`; returns the
    catalog's path and the versions added. Boxes are laid out under the catalog, so the
    directory can be served as it is; without base_url the urls are file:// ones."""
    directory = out / flavor
    path = directory / CATALOG
    root = (base_url.rstrip("/") + f"/{flavor}") if base_url else directory.resolve().as_uri()
    new = []
    for entry in entries(records):
        relative = f"{entry.version}/{flavor}.box"
        place(entry.box, directory / relative)
        signed = f"{root}/{entry.version}/{provenance.FILE}" if entry.provenance else None
        new.append((entry, f"{root}/{relative}", signed))
    catalog, added = merge(load(path), name, description, new)
    for entry, _, _ in new:  # once merge took them: a refused version gets nothing
        if entry.provenance is not None:
            target = directory / entry.version / provenance.FILE
            partial = target.with_name(f".{target.name}.partial")
            partial.unlink(missing_ok=True)
            shutil.copyfile(entry.provenance, partial)
            partial.replace(target)  # a link planted at the target is replaced, not followed
    directory.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(CATALOG + ".partial")
    partial.write_text(json.dumps(catalog, indent=2) + "\n")
    partial.replace(path)
    return path, added
