"""The typed build record (artifacts/<flavor>/<build-id>/build.json) and its strict loading.

The record is frozen: only imageforge.records.state changes it, through named transitions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from imageforge.errors import ImageforgeError

RECORD = "build.json"
Status = Literal["building", "built", "verified", "failed", "interrupted"]
NEXT: dict[str, tuple[str, ...]] = {
    "building": ("built", "failed", "interrupted"),
    "built": ("verified", "failed", "interrupted"),
    "verified": ("verified", "failed", "interrupted"),
    "failed": ("verified", "failed", "interrupted"),
    "interrupted": ("verified", "failed", "interrupted"),  # a stopped verification, again
}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Artifact(_Strict):
    """A file a build made, relative to its build directory."""

    path: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Binding(_Strict):
    """What a verification saw: the artifacts' digests and the cloud image ids."""

    artifacts: dict[str, str]
    image_ids: dict[str, str]


class Publication(_Strict):
    """The sharing of a build at one place, and exactly what publish added there."""

    status: Literal["published", "revoked"]
    sharing: str | None
    outcomes: list[dict[str, Any]]
    added: dict[str, Any]
    at: str


class StepRun(_Strict):
    """A step of a local build: its key in the step cache, and whether it ran or its disk
    came from the cache."""

    index: int = Field(ge=1)
    script: str
    key: str = Field(pattern=r"^[0-9a-f]{64}$")
    source: Literal["ran", "cache"]


class BuildRecord(_Strict):
    """Everything imageforge knows about one build."""

    id: str = Field(pattern=r"^[0-9]{8}-[0-9]{6}-[0-9a-z-]+$")
    flavor: str
    cloud: str
    # the base OS (oses.OsName); "" in records from before it was kept
    os: str = ""
    status: Status = "building"
    git_commit: str = ""
    template_hash: str = ""
    content_hash: str = ""
    packer_version: str = ""
    qemu_version: str = ""
    accelerator: str = ""
    base_image: dict[str, Any] = Field(default_factory=dict)
    # images.yml's settings the build was made from: {"flavor": {...}, "cloud": {...}}
    settings: dict[str, Any] = Field(default_factory=dict)
    packages: dict[str, str] = Field(default_factory=dict)  # installed name: version (local)
    python_packages: dict[str, str] = Field(default_factory=dict)  # the layer's venv (local)
    build_public_key: str = ""
    started_at: str = ""
    finished_at: str = ""
    timings: dict[str, float] = Field(default_factory=dict)
    boot: dict[str, float] = Field(default_factory=dict)  # seconds to SSH in the build VM
    steps: list[StepRun] = Field(default_factory=list)  # local builds: the step cache's account
    artifacts: list[Artifact] = Field(default_factory=list)
    artifact_ids: dict[str, str] = Field(default_factory=dict)  # recorded once, at build time
    imported: dict[str, str] = Field(default_factory=dict)  # place: image id
    copies: dict[str, str] = Field(default_factory=dict)  # region: id, copied once verified
    derived: list[Artifact] = Field(default_factory=list)  # made from the verified image
    verification: dict[str, Any] = Field(default_factory=dict)
    binding: Binding | None = None
    published: dict[str, Publication] = Field(default_factory=dict)
    error: str = ""
    _directory: Path = PrivateAttr(default=Path("."))

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def verified(self) -> bool:
        return self.status == "verified" and self.binding is not None

    def added(self, place: str) -> dict[str, Any]:
        """What publish added at a place and is still there ({} if nothing)."""
        publication = self.published.get(place)
        return dict(publication.added) if publication else {}


def load(directory: Path) -> BuildRecord:
    """A record, strictly validated; a record that does not validate is refused with a reason."""
    path = directory / RECORD
    try:
        record = BuildRecord.model_validate_json(path.read_bytes(), strict=True)
    except OSError as exc:
        raise ImageforgeError(f"{path}: cannot read the build record: {exc.strerror}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ImageforgeError(
            f"{path}: not a valid build record: {where}: {first['msg']}",
            hint="the record was edited or written by another version; it is not used",
        ) from None
    record._directory = directory
    return record


def artifacts_root(project_root: Path) -> Path:
    """Where a project's builds are: artifacts/<flavor>/<build id>/."""
    return project_root / "artifacts"
