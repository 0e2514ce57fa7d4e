"""The per-build record, artifacts/<flavor>/<build-id>/build.json: what happened, and what came out.

A rerun reads these records to know what already exists: a build with the same content hash
that was verified is reused, and publish refuses a build whose record is not verified.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imageforge.errors import ImageforgeError

RECORD = "build.json"
STATUSES = ("building", "built", "verified", "failed", "interrupted")


@dataclass
class BuildRecord:
    """Everything imageforge knows about one build."""

    id: str
    flavor: str
    cloud: str
    status: str = "building"
    verified: bool = False
    git_commit: str = ""
    template_hash: str = ""
    content_hash: str = ""
    packer_version: str = ""
    qemu_version: str = ""
    accelerator: str = ""
    base_image: dict[str, Any] = field(default_factory=dict)
    packages: dict[str, str] = field(default_factory=dict)  # installed name: version (local)
    python_packages: dict[str, str] = field(default_factory=dict)  # the layer's venv (local)
    build_public_key: str = ""
    started_at: str = ""
    finished_at: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    boot: dict[str, float] = field(default_factory=dict)  # seconds to SSH in the build VM
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    artifact_ids: dict[str, str] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)
    published: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def directory(self) -> Path:
        return self._directory

    def bind(self, directory: Path) -> BuildRecord:
        self._directory = directory
        return self

    def save(self) -> None:
        """Write atomically, so an interrupted write never leaves half a record."""
        path = self.directory / RECORD
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, directory: Path) -> BuildRecord:
        data = json.loads((directory / RECORD).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known}).bind(directory)


def artifacts_root(project_root: Path) -> Path:
    return project_root / "artifacts"


def records(project_root: Path, flavor: str, cloud: str | None = None) -> list[BuildRecord]:
    """Every record of a flavor (optionally on one cloud), oldest first."""
    base = artifacts_root(project_root) / flavor
    found = []
    for path in sorted(base.glob(f"*/{RECORD}")):
        try:
            record = BuildRecord.load(path.parent)
        except (ValueError, TypeError):
            continue
        if cloud is None or record.cloud == cloud:
            found.append(record)
    return found


def find(project_root: Path, flavor: str, cloud: str, build_id: str | None) -> BuildRecord:
    """A build by id, or the newest one of the flavor on the cloud."""
    found = records(project_root, flavor, cloud)
    if build_id:
        for record in found:
            if record.id == build_id:
                return record
        ids = ", ".join(r.id for r in found[-5:]) or "none"
        raise ImageforgeError(f"no build {build_id!r} of {flavor} on {cloud} (recent: {ids})")
    if not found:
        raise ImageforgeError(
            f"no build of {flavor} on {cloud} yet",
            hint=f"run `invoke build --image {flavor} --cloud {cloud}`",
        )
    return found[-1]


def reusable(project_root: Path, flavor: str, cloud: str, content_hash: str) -> BuildRecord | None:
    """The newest verified build with this content hash whose artifacts are all still intact."""
    for record in reversed(records(project_root, flavor, cloud)):
        if record.verified and record.content_hash == content_hash and artifacts_intact(record):
            return record
    return None


def artifacts_intact(record: BuildRecord) -> bool:
    """Every recorded artifact still has its recorded size (hashing gigabytes takes too long)."""
    for artifact in record.artifacts:
        path = record.directory / artifact["path"]
        if not path.is_file() or path.stat().st_size != artifact["size"]:
            return False
    return True


def describe(path: Path, root: Path) -> dict[str, Any]:
    """An artifact's entry: path relative to the build directory, size and sha256."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return {
        "path": str(path.relative_to(root)),
        "size": path.stat().st_size,
        "sha256": digest.hexdigest(),
    }
