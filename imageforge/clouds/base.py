"""What every cloud provides: its Packer source, and the checks and sharing around it."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from imageforge.hcl import Raw

if TYPE_CHECKING:
    from imageforge.config import Project
    from imageforge.matrix import Cell

# Default login user of each base OS, the way the OS vendors' cloud images ship it.
OS_USERS = {"debian-12": "debian", "ubuntu-22.04": "ubuntu", "ubuntu-24.04": "ubuntu"}

METADATA_KEYS = ("flavor", "build-id", "git-commit", "template-hash", "imageforge-version")


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
