"""What every cloud provides: its Packer source, and the checks and sharing around it."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from imageforge.errors import ImageforgeError
from imageforge.hcl import Raw

if TYPE_CHECKING:
    from imageforge.buildsecrets import KeyPair
    from imageforge.config import Project
    from imageforge.matrix import Cell
    from imageforge.state import BuildRecord

# Default login user of each base OS, the way the OS vendors' cloud images ship it.
OS_USERS = {"debian-12": "debian", "ubuntu-22.04": "ubuntu", "ubuntu-24.04": "ubuntu"}


@dataclass(frozen=True)
class Sharing:
    """Who may use a published image: everyone, or named accounts/projects/members."""

    public: bool = True
    accounts: tuple[str, ...] = ()
    organizations: tuple[str, ...] = ()

    def describe(self) -> str:
        named = [*self.accounts, *self.organizations]
        if self.public:
            return "public"
        return "shared with " + ", ".join(named) if named else "private"


@dataclass
class Outcome:
    """What publish, unpublish, prune or sweep did in one place (a region, a project)."""

    where: str
    subject: str
    changes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.changes)


class Cloud(ABC):
    """One cloud: render its Packer source; checks and sharing come with each implementation."""

    name: ClassVar[str]
    builder: ClassVar[str]

    def ssh_username(self, os_name: str) -> str:
        return OS_USERS[os_name]

    @abstractmethod
    def source(self, project: Project, cell: Cell) -> dict[str, Any]:
        """Template context for templates/sources/<cloud>.pkr.hcl.j2."""

    @contextlib.contextmanager
    def validation_env(self, project: Project, scratch: Path) -> Iterator[dict[str, str]]:
        """Environment that lets `packer validate` check a template with no real account."""
        yield {}

    def base_image(self, project: Project, cell: Cell, *, refresh: bool = False) -> dict[str, Any]:
        """The image a build starts from, when imageforge makes it (local builds): its path,
        sha256, recipe hash and installed package versions. refresh rebuilds it."""
        return {}

    def build_env(
        self, project: Project, cell: Cell, record: BuildRecord, scratch: Path, key: KeyPair
    ) -> dict[str, str]:
        """Extra environment for `packer build` (PKR_VAR_* values that vary per build)."""
        return {}

    def collect_artifacts(self, record: BuildRecord) -> list[dict[str, Any]]:
        """The build's artifacts as state.describe() entries, once Packer has finished."""
        return []

    def doctor(self, project: Project, cell: Cell) -> list[str]:
        """Preflight: what was checked and found; raise ImageforgeError naming what is missing."""
        return []

    def artifact_ids(self, record: BuildRecord) -> dict[str, str]:
        """Image ids by region (or project), from Packer's manifest ("region:id,region:id")."""
        return {}

    def publish(self, project: Project, record: BuildRecord, sharing: Sharing) -> list[Outcome]:
        """Share a verified image; idempotent: a second run changes nothing."""
        raise ImageforgeError(f"publishing on {self.name} is not supported")

    def unpublish(self, project: Project, record: BuildRecord, sharing: Sharing) -> list[Outcome]:
        """Remove exactly what publish added."""
        raise ImageforgeError(f"unpublishing on {self.name} is not supported")

    def prune(self, project: Project, flavor: str, keep: int, *, apply: bool) -> list[Outcome]:
        """Delete this pipeline's images of a flavor beyond the newest `keep` (dry run unless
        apply); never a published image, the newest verified one, or anything not ours."""
        raise ImageforgeError(f"pruning on {self.name} is not supported")

    def sweep(self, project: Project, *, apply: bool) -> list[Outcome]:
        """Find (and with apply, delete) resources a killed build of this pipeline left behind."""
        raise ImageforgeError(f"sweeping on {self.name} is not supported")

    def image_name(self, project: Project, cell: Cell, pattern: str) -> Raw:
        """An image-name pattern as an HCL string with the build id left to Packer."""
        text = pattern.replace("{prefix}", project.images.settings.name_prefix)
        text = text.replace("{flavor}", cell.flavor_name).replace("{build_id}", "${var.build_id}")
        return Raw(f'"{text}"')

    def metadata(self, project: Project, cell: Cell, extra: dict[str, str]) -> dict[str, Any]:
        """Build metadata plus the user's tags: the same keys on every cloud."""
        ours: dict[str, Any] = {
            "imageforge-flavor": cell.flavor_name,
            "imageforge-build-id": Raw("var.build_id"),
            "imageforge-git-commit": Raw("var.git_commit"),
            "imageforge-template-hash": Raw("var.template_hash"),
            "imageforge-version": Raw("var.imageforge_version"),
        }
        return {**project.images.defaults.tags, **cell.flavor.tags, **extra, **ours}
