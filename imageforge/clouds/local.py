"""local: QEMU on this machine, from a Debian base image that imageforge builds offline."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imageforge.clouds.base import Cloud

if TYPE_CHECKING:
    from imageforge.config import Project
    from imageforge.matrix import Cell


class LocalCloud(Cloud):
    name = "local"
    builder = "qemu"

    def source(self, project: Project, cell: Cell) -> dict[str, Any]:
        local = project.images.clouds.local
        return {
            "cpus": local.cpus,
            "memory": local.memory_mb,
            "disk_size": f"{local.disk_size_gb * 1024}M",
            "ssh_username": self.ssh_username(cell.os),
            "ssh_timeout": f"{local.ssh_timeout_minutes}m",
            "vm_name": f"{cell.flavor_name}.qcow2",
            "metadata": self.metadata(project, cell, {}),
            "vagrant": "vagrant" in local.formats,
        }

    @contextlib.contextmanager
    def validation_env(self, project: Project, scratch: Path) -> Iterator[dict[str, str]]:
        base = scratch / "base.qcow2"
        base.write_bytes(b"")
        seed = scratch / "seed"
        seed.mkdir(exist_ok=True)
        for name in ("user-data", "meta-data"):
            (seed / name).write_text("")
        yield {"PKR_VAR_base_image": str(base), "PKR_VAR_seed_dir": str(seed)}


CLOUD = LocalCloud()
