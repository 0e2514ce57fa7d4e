"""gcp: googlecompute builds; publishing is an IAM binding on the image."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imageforge import hcl
from imageforge.clouds.base import Cloud
from imageforge.hcl import Raw

if TYPE_CHECKING:
    from imageforge.config import Project
    from imageforge.matrix import Cell


def label(text: str) -> str:
    """GCP labels take lowercase letters, digits, '_' and '-', at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]", "_", text.lower())[:63]


class GcpCloud(Cloud):
    name = "gcp"
    builder = "googlecompute"

    def source(self, project: Project, cell: Cell) -> dict[str, Any]:
        gcp = project.images.clouds.gcp
        image = gcp.source_image[cell.os]
        labels = {
            label(key): (value if isinstance(value, Raw) else label(value))
            for key, value in self.metadata(project, cell, gcp.labels).items()
        }
        labels["imageforge-version"] = Raw('replace(var.imageforge_version, ".", "-")')
        return {
            "project_id": hcl.value(gcp.project) if gcp.project else "var.gcp_project_id",
            "zone": gcp.zone,
            "machine_type": gcp.machine_type,
            "source_image_family": image.family,
            "source_image_project": [image.project],
            "image_name": self.image_name(project, cell, gcp.image_name),
            "image_family": self.image_name(project, cell, gcp.image_family),
            "description": cell.flavor.description or f"imageforge {cell.flavor_name}",
            "disk_size": gcp.disk_size_gb,
            "network": gcp.network,
            "subnetwork": gcp.subnetwork,
            "ssh_username": self.ssh_username(cell.os),
            "label_attributes": hcl.attributes({"image_labels": labels, "labels": labels}),
        }

    @contextlib.contextmanager
    def validation_env(self, project: Project, scratch: Path) -> Iterator[dict[str, str]]:
        yield {"GOOGLE_CLOUD_PROJECT": "imageforge-validate"}


CLOUD = GcpCloud()
