"""openstack: openstack builds; publishing sets the Glance image visibility or members."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imageforge import hcl, keystone_stub
from imageforge.clouds.base import Cloud

if TYPE_CHECKING:
    from imageforge.config import Project
    from imageforge.matrix import Cell


class OpenstackCloud(Cloud):
    name = "openstack"
    builder = "openstack"

    def source(self, project: Project, cell: Cell) -> dict[str, Any]:
        cfg = project.images.clouds.openstack
        image = cfg.source_image[cell.os]
        return {
            "cloud": cfg.cloud,
            "flavor": cfg.flavor,
            "source_image_name": image.name,
            "source_image_filter": hcl.attributes(image.filter, indent=6) if image.filter else "",
            "networks": list(cfg.networks),
            "floating_ip_pool": cfg.floating_ip_pool,
            "security_groups": list(cfg.security_groups),
            "image_name": self.image_name(project, cell, cfg.image_name),
            "use_blockstorage_volume": cfg.use_blockstorage_volume,
            "volume_size": cfg.volume_size_gb if cfg.use_blockstorage_volume else None,
            "ssh_username": self.ssh_username(cell.os),
            # Images start private; `invoke publish` sets the visibility once verified.
            "metadata_attributes": hcl.attributes(
                {"metadata": self.metadata(project, cell, cfg.metadata)}
            ),
        }

    @contextlib.contextmanager
    def validation_env(self, project: Project, scratch: Path) -> Iterator[dict[str, str]]:
        """A clouds.yaml with dummy credentials, authenticated by a local token endpoint."""
        with keystone_stub.serve() as auth_url:
            yield self._validation_env(project, scratch, auth_url)

    def _validation_env(self, project: Project, scratch: Path, auth_url: str) -> dict[str, str]:
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
        return {"OS_CLIENT_CONFIG_FILE": str(clouds_yaml)}


def _yaml_key(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


CLOUD = OpenstackCloud()
