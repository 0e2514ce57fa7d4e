"""local: QEMU on this machine, from a Debian base image that imageforge builds offline."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imageforge.clouds.common import BuildEnv, Instance, LaunchRequest, SourceDefaults, metadata
from imageforge.clouds.local import base, disk
from imageforge.clouds.local.recipe import BaseRecipe
from imageforge.config import oses
from imageforge.process import qcow2, qemu, reap
from imageforge.records import state

if TYPE_CHECKING:
    from imageforge.config import Project
    from imageforge.config.matrix import Cell
    from imageforge.process.buildsecrets import KeyPair

# The build VM's monitor in the build's scratch: the step cache copies its disk through it.
QMP_SOCKET = "qmp.sock"


class LocalCloud(SourceDefaults):
    name = "local"
    installs_packages_in_vm = False  # the layer has them, installed natively
    builder = "qemu"
    # cloud-init's datasource on this cloud's own images (datasource_list, then None)
    datasource = "NoCloud"
    packer_grace_seconds = 20.0  # a local VM is gone at once
    caches_steps = True
    vm_on_this_machine = True

    def machine(self, settings: Any) -> str:
        return f"QEMU, {settings.cpus} CPUs, {settings.memory_mb} MiB"

    def __init__(self) -> None:
        self._layers: dict[str, dict[str, Any]] = {}  # cell name: the layer this run chose

    def source(self, project: Project, cell: Cell) -> dict[str, Any]:
        local = project.images.clouds.local
        return {
            "cpus": local.cpus,
            "memory": local.memory_mb,
            "disk_size": f"{local.disk_size_gb * 1024}M",
            "ssh_username": self.ssh_username(cell.os),
            "ssh_timeout": f"{local.ssh_timeout_minutes}m",
            "vm_name": f"{cell.flavor_name}.qcow2",
            "tcg_cpu": qemu.TCG_CPU,
            "metadata": metadata(project, cell, {}),
        }

    def base_image(self, project: Project, cell: Cell, *, refresh: bool = False) -> dict[str, Any]:
        """The flavor's layer: the base recipe plus its declared packages, built natively."""
        python = cell.flavor.python
        recipe = BaseRecipe(
            suite=oses.get(cell.os).suite,
            extra_packages=cell.flavor.packages,
            python_venv=python.venv if python else "",
            python_packages=python.packages if python else (),
            python_build=python.build if python else (),
        )
        layer = base.ensure_base(recipe, force=refresh).record()
        self._layers[cell.name] = layer
        return layer

    def build_env(
        self, project: Project, cell: Cell, build_id: str, scratch: Path, key: KeyPair
    ) -> BuildEnv:
        """The layer base_image chose, the accelerator and the cloud-init seed; the
        accelerator and QEMU version are facts for the record."""
        layer = self._layers.get(cell.name) or self.base_image(project, cell)
        accelerator = qemu.probe_accelerator(project.images.clouds.local.accelerator)
        seed = qemu.make_seed(
            scratch / "seed.iso",
            user_data=seed_user_data(key.public),
            meta_data=f"instance-id: imageforge-build-{build_id}\nlocal-hostname: debian\n",
        )
        env = {
            "PKR_VAR_base_image": layer["path"],
            "PKR_VAR_base_image_checksum": f"sha256:{layer['sha256']}",
            "PKR_VAR_accelerator": accelerator,
            "PKR_VAR_seed_iso": str(seed),
            "PKR_VAR_qmp_socket": str(scratch / QMP_SOCKET),
        }
        return BuildEnv(env, {"accelerator": accelerator, "qemu_version": qemu.qemu_version()})

    def finish_artifacts(self, directory: Path, flavor: str) -> None:
        """Packer leaves an overlay of the layer (or of a cached step's disk): the artifact is
        that chain flattened into one compressed qcow2, written beside it, then renamed."""
        image = directory / "image" / f"{flavor}.qcow2"
        flat = image.with_name(f".{image.name}.flat")
        try:
            disk.to_qcow2(image, flat, directory / "build.log", compress=True)
            flat.replace(image)
        finally:
            flat.unlink(missing_ok=True)

    def collect_artifacts(self, directory: Path, flavor: str) -> list[dict[str, Any]]:
        names = [f"image/{flavor}.qcow2", "manifest.json"]
        paths = [directory / n for n in names if (directory / n).is_file()]
        return [state.describe(p, directory) for p in paths]

    def artifact_ids(self, directory: Path) -> dict[str, str]:
        return {}  # a local build's artifacts are files, bound by their sha256

    @contextlib.contextmanager
    def launch(self, request: LaunchRequest) -> Iterator[Instance]:
        """The image in QEMU on a throwaway overlay, with a NoCloud seed carrying the user-data
        (which holds the public key); restricted user networking, SSH and the flavor's other
        ports forwarded on 127.0.0.1 only (ssh_from does not apply). Leaving stops the VM and
        removes the overlay and the seed."""
        record, cell = request.record, request.cell
        local = request.project.images.clouds.local
        with reap.scratch(f"imageforge-vm-{record.id}-") as scratch:
            image = record.directory / "image" / f"{record.flavor}.qcow2"
            overlay = qcow2.overlay(image, scratch / "overlay.qcow2")
            instance_id = f"imageforge-verify-{record.id}"
            seed = qemu.make_seed(
                scratch / "seed.iso",
                user_data=request.user_data,
                meta_data=f"instance-id: {instance_id}\nlocal-hostname: debian\n",
            )
            # The flavor's other ports, for suites that use them as a client would (e.g. VNC).
            forwards = {port: qemu.free_port() for port in cell.flavor.ports if port != 22}
            vm = qemu.VirtualMachine(
                forwards=forwards,
                disk=overlay,
                serial_log=record.directory / "verify-serial.log",
                seed=seed,
                cpus=local.cpus,
                memory_mb=local.memory_mb,
                accelerator=local.accelerator,
                restrict_network=True,
            )
            with vm:
                yield Instance(instance_id, qemu.LOCALHOST, self.name, vm.ssh_port, vm, forwards)

    @contextlib.contextmanager
    def validation_env(self, project: Project, scratch: Path) -> Iterator[dict[str, str]]:
        base = scratch / "base.qcow2"
        base.write_bytes(b"")
        seed = scratch / "seed.iso"
        seed.write_bytes(b"")
        yield {"PKR_VAR_base_image": str(base), "PKR_VAR_seed_iso": str(seed)}


def seed_user_data(public_key: str, extra: dict[str, Any] | None = None) -> str:
    """cloud-init user-data that lets exactly one key log in as the image's default user,
    with any further cloud-config keys (such as a flavor's own block) after it.

    No ssh_pwauth: the image's sshd already refuses passwords, and setting it makes cloud-init
    restart sshd in its final stage, dropping the connections of whoever logged in first."""
    text = f"#cloud-config\ndisable_root: true\nssh_authorized_keys:\n  - {public_key}\n"
    if extra:
        import json

        import yaml

        plain = json.loads(json.dumps(extra))  # YAML's own mapping types, as plain dicts
        text += yaml.safe_dump(plain, default_flow_style=False, sort_keys=False)
    return text


CLOUD = LocalCloud()
