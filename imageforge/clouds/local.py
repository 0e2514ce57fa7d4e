"""local: QEMU on this machine, from a Debian base image that imageforge builds offline."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imageforge import qemu, state
from imageforge.clouds.base import Cloud

if TYPE_CHECKING:
    from imageforge.buildsecrets import KeyPair
    from imageforge.config import Project
    from imageforge.matrix import Cell
    from imageforge.state import BuildRecord


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

    def base_image(self, project: Project, cell: Cell, *, refresh: bool = False) -> dict[str, Any]:
        """The flavor's layer: the base recipe plus its declared packages, built natively."""
        from imageforge import base

        python = cell.flavor.python
        recipe = base.BaseRecipe(
            extra_packages=cell.flavor.packages,
            python_venv=python.venv if python else "",
            python_packages=python.packages if python else (),
        )
        return base.ensure_base(recipe, force=refresh).record()

    def build_env(
        self, project: Project, cell: Cell, record: BuildRecord, scratch: Path, key: KeyPair
    ) -> dict[str, str]:
        accelerator = qemu.probe_accelerator(project.images.clouds.local.accelerator)
        record.accelerator = accelerator
        record.qemu_version = qemu.qemu_version()
        seed = qemu.make_seed(
            scratch / "seed.iso",
            user_data=seed_user_data(key.public),
            meta_data=f"instance-id: imageforge-build-{record.id}\nlocal-hostname: debian\n",
        )
        return {
            "PKR_VAR_base_image": record.base_image["path"],
            "PKR_VAR_base_image_checksum": f"sha256:{record.base_image['sha256']}",
            "PKR_VAR_accelerator": accelerator,
            "PKR_VAR_seed_iso": str(seed),
        }

    def collect_artifacts(self, record: BuildRecord) -> list[dict[str, Any]]:
        names = [f"image/{record.flavor}.qcow2", f"{record.flavor}.box", "manifest.json"]
        paths = [record.directory / n for n in names if (record.directory / n).is_file()]
        return [state.describe(p, record.directory) for p in paths]

    @contextlib.contextmanager
    def validation_env(self, project: Project, scratch: Path) -> Iterator[dict[str, str]]:
        base = scratch / "base.qcow2"
        base.write_bytes(b"")
        seed = scratch / "seed.iso"
        seed.write_bytes(b"")
        yield {"PKR_VAR_base_image": str(base), "PKR_VAR_seed_iso": str(seed)}


def seed_user_data(public_key: str, extra: dict[str, Any] | None = None) -> str:
    """cloud-init user-data that lets exactly one key log in as the image's default user,
    with any further cloud-config keys (such as a flavor's own block) after it."""
    text = (
        "#cloud-config\n"
        "ssh_pwauth: false\n"
        "disable_root: true\n"
        "ssh_authorized_keys:\n"
        f"  - {public_key}\n"
    )
    if extra:
        import json

        import yaml

        plain = json.loads(json.dumps(extra))  # YAML's own mapping types, as plain dicts
        text += yaml.safe_dump(plain, default_flow_style=False, sort_keys=False)
    return text


CLOUD = LocalCloud()
