"""What a cloud can do, one small Protocol per concern; a cloud implements only what it has."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from imageforge.clouds.common import BuildEnv, Instance, LaunchRequest, Outcome, Published
from imageforge.config.publishpolicy import Sharing

if TYPE_CHECKING:
    from imageforge.config import Project
    from imageforge.config.matrix import Cell
    from imageforge.process.buildsecrets import KeyPair
    from imageforge.records.record import BuildRecord


@runtime_checkable
class PackerSource(Protocol):
    """Render a cell's Packer source, and prepare and read back its build."""

    name: ClassVar[str]
    builder: ClassVar[str]
    datasource: ClassVar[str]
    packer_grace_seconds: ClassVar[float]
    # Whether the flavor's packages go in from a step in the build VM (else: the base layer).
    installs_packages_in_vm: ClassVar[bool]
    # Whether a build keeps its disk after each step, and resumes from the last kept one.
    caches_steps: ClassVar[bool]
    # Whether the build VM runs on this machine (--on-error=keep keeps it here).
    vm_on_this_machine: ClassVar[bool]

    def ssh_username(self, os_name: str) -> str: ...

    def cloud_init_packages(self, os_name: str) -> tuple[str, ...]:
        """What a build here installs so that its instances run cloud-init."""
        ...

    def machine(self, settings: Any) -> str:
        """The build machine, as the cost plan names it (an instance type, a local VM's size)."""
        ...

    def source(self, project: Project, cell: Cell) -> dict[str, Any]:
        """Template context for templates/sources/<cloud>.pkr.hcl.j2."""
        ...

    def validation_env(
        self, project: Project, scratch: Path
    ) -> contextlib.AbstractContextManager[dict[str, str]]: ...

    def base_image(
        self, project: Project, cell: Cell, *, refresh: bool = False
    ) -> dict[str, Any]: ...

    def build_env(
        self, project: Project, cell: Cell, build_id: str, scratch: Path, key: KeyPair
    ) -> BuildEnv: ...

    def finish_artifacts(self, directory: Path, flavor: str) -> None:
        """Make Packer's output the artifact it ships, once Packer has finished."""
        ...

    def collect_artifacts(self, directory: Path, flavor: str) -> list[dict[str, Any]]:
        """The build's files as state.describe() entries, once Packer has finished."""
        ...

    def artifact_ids(self, directory: Path) -> dict[str, str]:
        """Image ids by place from Packer's manifest.json; read once, at build time."""
        ...


@runtime_checkable
class Preflight(Protocol):
    def doctor(self, project: Project, cell: Cell) -> list[str]:
        """What was checked and found; raise ImageforgeError naming what is missing."""
        ...


@runtime_checkable
class Priced(Protocol):
    """A cloud whose builds cost money: the settings images.yml's price table is keyed by."""

    machine_setting: ClassVar[str]  # clouds.<cloud>.<this> names the build instance
    disk_setting: ClassVar[str]  # clouds.<cloud>.<this> gives the image's size in GB

    def image_regions(self, settings: Any) -> tuple[str, ...]:
        """Where the verified image is kept (each region is paid for)."""
        ...


@runtime_checkable
class Sharer(Protocol):
    def publish(self, project: Project, record: BuildRecord, sharing: Sharing) -> Published:
        """Share a verified image; idempotent: a second run changes nothing."""
        ...

    def unpublish(self, project: Project, record: BuildRecord, sharing: Sharing) -> Published:
        """Remove exactly what publish added (record.added(<cloud>))."""
        ...


@runtime_checkable
class Tagger(Protocol):
    def tag(self, project: Project, record: BuildRecord, key: str, value: str) -> list[Outcome]:
        """Tag, label or set a property key=value on every image of the build."""
        ...


@runtime_checkable
class Housekeeper(Protocol):
    def prune(self, project: Project, flavor: str, keep: int, *, apply: bool) -> list[Outcome]:
        """Delete this pipeline's images of a flavor beyond the newest `keep` (>= 1)."""
        ...

    def sweep(self, project: Project, *, apply: bool, min_age_minutes: int) -> list[Outcome]:
        """Find (with apply, delete) what killed builds of this pipeline left behind."""
        ...


@runtime_checkable
class Importer(Protocol):
    def import_build(self, project: Project, record: BuildRecord) -> dict[str, str]:
        """Upload a verified local build; the new image ids by place, for the caller to record."""
        ...


@runtime_checkable
class Launcher(Protocol):
    def launch(self, request: LaunchRequest) -> contextlib.AbstractContextManager[Instance]:
        """The requested instance, with a firewall rule that admits SSH from request.ssh_from
        only; everything tagged with the build id. Leaving the context (however: success,
        error, Ctrl-C) deletes all of it, waiting until the instance is gone."""
        ...


@runtime_checkable
class Distributor(Protocol):
    def distribute(self, project: Project, record: BuildRecord) -> dict[str, str]:
        """Copy a verified image to the configured regions (never an unverified one); the new
        image ids by region, for the caller to record with state.distributed."""
        ...


# What each capability lets a user do, for "<cloud> cannot <verb>" messages.
VERBS: dict[type, str] = {
    PackerSource: "build",
    Preflight: "check its account (doctor)",
    Sharer: "publish",
    Housekeeper: "prune or sweep",
    Importer: "import",
    Launcher: "verify in a cloud VM",
    Distributor: "copy images to other regions",
}
