"""The googlecompute Packer source, its validation environment and its image name."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imageforge.clouds.common import (
    VERSION_KEY,
    SourceDefaults,
    image_name,
    label,
    manifest_artifacts,
    metadata,
)
from imageforge.clouds.housekeeping import instance_tags
from imageforge.config import oses
from imageforge.packer import hcl
from imageforge.packer.hcl import Raw

if TYPE_CHECKING:
    from imageforge.config import Project
    from imageforge.config.matrix import Cell


class GcpSource(SourceDefaults):
    name = "gcp"
    builder = "googlecompute"
    # cloud-init's datasource on this cloud's own images (datasource_list, then None)
    datasource = "GCE"
    machine_setting = "machine_type"
    disk_setting = "disk_size_gb"

    def cloud_init_packages(self, os_name: str) -> tuple[str, ...]:
        """Debian's GCE images have no cloud-init (they carry google-guest-agent and OS
        Login instead): the build installs it."""
        return ("cloud-init",) if oses.get(os_name).distro == "debian" else ()

    def image_regions(self, settings: Any) -> tuple[str, ...]:
        """Where the verified image is kept."""
        return (settings.zone.rsplit("-", 1)[0],)  # the image's storage location

    def source(self, project: Project, cell: Cell) -> dict[str, Any]:
        gcp = project.images.clouds.gcp
        image = gcp.source_image[cell.os]
        labels = {
            label(key): (value if isinstance(value, Raw) else label(value))
            for key, value in metadata(project, cell, gcp.labels).items()
        }
        labels[VERSION_KEY] = Raw('replace(var.imageforge_version, ".", "-")')
        return {
            "project_id": hcl.value(gcp.project) if gcp.project else "var.gcp_project_id",
            "zone": gcp.zone,
            "machine_type": gcp.machine_type,
            "source_image_family": image.family,
            "source_image_project": [image.project],
            "image_name": image_name(project, cell, gcp.image_name),
            "image_family": image_name(project, cell, gcp.image_family),
            "description": cell.flavor.description or f"imageforge {cell.flavor_name}",
            "disk_size": gcp.disk_size_gb,
            "network": gcp.network,
            "subnetwork": gcp.subnetwork,
            "ssh_username": self.ssh_username(cell.os),
            "label_attributes": hcl.attributes(
                {"image_labels": labels, "labels": instance_tags(labels)}
            ),
        }

    @contextlib.contextmanager
    def validation_env(self, project: Project, scratch: Path) -> Iterator[dict[str, str]]:
        yield {"GOOGLE_CLOUD_PROJECT": "imageforge-validate"}

    def artifact_ids(self, directory: Path) -> dict[str, str]:
        """{project: image name} of the last Packer run; the project is the one the build
        used ($GOOGLE_CLOUD_PROJECT), "" when clouds.gcp.project names it."""
        built = manifest_artifacts(directory, self.builder)
        if not built:
            return {}
        return {os.environ.get("GOOGLE_CLOUD_PROJECT", ""): built[-1]["artifact_id"]}
