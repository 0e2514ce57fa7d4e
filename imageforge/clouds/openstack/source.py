"""The openstack Packer source, its validation environment and its Glance image id."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imageforge.clouds.common import SourceDefaults, image_name, manifest_artifacts, metadata
from imageforge.clouds.housekeeping import instance_tags
from imageforge.clouds.openstack import keystone_stub
from imageforge.clouds.openstack.connection import PLACE
from imageforge.packer import hcl

if TYPE_CHECKING:
    from imageforge.config import Project
    from imageforge.config.matrix import Cell


class OpenstackSource(SourceDefaults):
    name = "openstack"
    builder = "openstack"
    # cloud-init's datasource on this cloud's own images (datasource_list, then None)
    datasource = "OpenStack, ConfigDrive"
    machine_setting = "flavor"
    disk_setting = "volume_size_gb"

    def image_regions(self, settings: Any) -> tuple[str, ...]:
        """Where the verified image is kept."""
        return (settings.cloud,)

    def source(self, project: Project, cell: Cell) -> dict[str, Any]:
        cfg = project.images.clouds.openstack
        image = cfg.source_image[cell.os]
        tags = metadata(project, cell, cfg.metadata)
        return {
            "cloud": cfg.cloud,
            "flavor": cfg.flavor,
            "source_image_name": image.name,
            "source_image_filter": hcl.attributes(image.filter, indent=6) if image.filter else "",
            "networks": list(cfg.networks),
            "floating_ip_pool": cfg.floating_ip_pool,
            "security_groups": list(cfg.security_groups),
            "image_name": image_name(project, cell, cfg.image_name),
            "use_blockstorage_volume": cfg.use_blockstorage_volume,
            "volume_size": cfg.volume_size_gb if cfg.use_blockstorage_volume else None,
            "ssh_username": self.ssh_username(cell.os),
            # Images start private; `invoke publish` sets the visibility once verified.
            # The build server carries the same metadata, so `invoke sweep` can find it.
            "metadata_attributes": hcl.attributes(
                {"metadata": tags, "instance_metadata": instance_tags(tags)}
            ),
        }

    @contextlib.contextmanager
    def validation_env(self, project: Project, scratch: Path) -> Iterator[dict[str, str]]:
        """A clouds.yaml with dummy credentials, authenticated by a local token endpoint."""
        with keystone_stub.serve() as auth_url:
            clouds_yaml = scratch / "clouds.yaml"
            clouds_yaml.write_text(
                "clouds:\n"
                f"  {_yaml_key(project.images.clouds.openstack.cloud)}:\n"
                "    auth:\n"
                f"      auth_url: {auth_url}\n"
                "      username: validate\n"
                "      password: validate-only\n"
                "      project_name: validate\n"
                "      user_domain_name: Default\n"
                "      project_domain_name: Default\n"
                "    region_name: RegionOne\n"
            )
            yield {"OS_CLIENT_CONFIG_FILE": str(clouds_yaml)}

    def artifact_ids(self, directory: Path) -> dict[str, str]:
        """{"openstack": Glance image id}: the image is in the entry the build used."""
        built = manifest_artifacts(directory, self.builder)
        return {PLACE: built[-1]["artifact_id"]} if built else {}


def _yaml_key(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
