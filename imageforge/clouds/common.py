"""What every cloud shares: the metadata keys, the outcome types, the manifest reader, the
bookkeeping of what publish added, and the ownership and age rules of housekeeping."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

# Tag prefixes images.yml `tags:` may not use (checked in config): ours and the clouds' own.
from imageforge import __version__
from imageforge.config import oses
from imageforge.config.configtypes import RESERVED_TAG_PREFIXES  # noqa: F401
from imageforge.config.publishpolicy import Sharing  # noqa: F401 (what a Sharer is asked)
from imageforge.errors import ImageforgeError
from imageforge.packer.hcl import Raw

if TYPE_CHECKING:
    from imageforge.config import Project
    from imageforge.config.matrix import Cell
    from imageforge.process.buildsecrets import KeyPair
    from imageforge.process.qemu import VirtualMachine
    from imageforge.records.record import BuildRecord

# The metadata every image, instance and volume of a build carries, on every cloud.
FLAVOR_KEY = "imageforge-flavor"
BUILD_KEY = "imageforge-build-id"
COMMIT_KEY = "imageforge-git-commit"
TEMPLATE_KEY = "imageforge-template-hash"
VERSION_KEY = "imageforge-version"


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


@dataclass(frozen=True)
class BuildEnv:
    """What a cloud adds to `packer build`: environment, and facts for the build record."""

    env: dict[str, str] = field(default_factory=dict)
    facts: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Instance:
    """A verification instance, as far as the verify stage needs it."""

    id: str
    address: str  # where its SSH answers (per the cloud's ssh_interface setting)
    where: str  # region, zone or clouds.yaml entry
    port: int = 22
    # A VM on this machine (local): its QEMU process, watched while SSH comes up, and the
    # flavor's other guest ports forwarded to 127.0.0.1 ({guest port: host port}).
    vm: VirtualMachine | None = None
    forwards: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class LaunchRequest:
    """One verification instance of the build's image, with a fresh key pair for public_key and
    the cloud-config user_data, reachable over SSH (tcp/22) from the CIDR ssh_from only."""

    project: Project
    cell: Cell
    record: BuildRecord
    public_key: str
    user_data: str
    ssh_from: str


@dataclass(frozen=True)
class Published:
    """What publish (or unpublish) did, and the complete bookkeeping of what it added that
    is still in place (JSON-serialisable; {} when nothing is left)."""

    outcomes: list[Outcome]
    added: dict[str, Any]


class SourceDefaults:
    """The parts of a Packer source most clouds leave as they are."""

    name: str
    # How long Packer may take, after Ctrl-C or SIGTERM, to delete what it made: in a cloud an
    # instance, its key pair and security group, which take minutes to go.
    packer_grace_seconds: float = 300.0
    # Whether the flavor's packages go in from a step in the build VM (else: the base layer).
    installs_packages_in_vm: bool = True
    # Whether a build keeps its disk after each step (stages.stepcache); whether its VM runs
    # here, where --on-error=keep keeps it (stages.keep).
    caches_steps: bool = False
    vm_on_this_machine: bool = False

    def ssh_username(self, os_name: str) -> str:
        """The default login user of os_name's official images on this cloud."""
        return oses.get(os_name).login_user

    def cloud_init_packages(self, os_name: str) -> tuple[str, ...]:
        """What a build here installs so that its instances run cloud-init, which the first-boot
        programs and verification read user-data through; nothing where the image has it."""
        return ()

    machine_setting = ""

    def machine(self, settings: Any) -> str:
        """The build instance's type, from the cloud's setting that names it."""
        return str(getattr(settings, self.machine_setting))

    @contextlib.contextmanager
    def validation_env(self, project: Project, scratch: Path) -> Iterator[dict[str, str]]:
        """Environment that lets `packer validate` check a template with no real account."""
        yield {}

    def base_image(self, project: Project, cell: Cell, *, refresh: bool = False) -> dict[str, Any]:
        return {}

    def build_env(
        self, project: Project, cell: Cell, build_id: str, scratch: Path, key: KeyPair
    ) -> BuildEnv:
        return BuildEnv()

    def finish_artifacts(self, directory: Path, flavor: str) -> None:
        """Make Packer's output the artifact it ships (local: one compressed qcow2)."""

    def collect_artifacts(self, directory: Path, flavor: str) -> list[dict[str, Any]]:
        return []


# --- names and metadata -----------------------------------------------------------------------


def metadata(project: Project, cell: Cell, extra: dict[str, str]) -> dict[str, Any]:
    """Build metadata plus the user's tags: the same keys on every cloud; ours win."""
    ours: dict[str, Any] = {
        FLAVOR_KEY: cell.flavor_name,
        BUILD_KEY: Raw("var.build_id"),
        COMMIT_KEY: Raw("var.git_commit"),
        TEMPLATE_KEY: Raw("var.template_hash"),
        VERSION_KEY: Raw("var.imageforge_version"),
    }
    return {**project.images.defaults.tags, **cell.flavor.tags, **extra, **ours}


def label(text: str) -> str:
    """A key or value as a GCP label: lowercase letters, digits, '_' and '-', 63 at most."""
    return re.sub(r"[^a-z0-9_-]", "_", text.lower())[:63]


def image_name(project: Project, cell: Cell, pattern: str) -> Raw:
    """An image-name pattern as an HCL string with the build id left to Packer."""
    text = name(project, pattern, cell.flavor_name, "${var.build_id}")
    return Raw(f'"{text}"')


def name(project: Project, pattern: str, flavor: str, build_id: str) -> str:
    """An image name from a pattern of images.yml ({prefix}, {flavor}, {build_id})."""
    prefix = project.images.settings.name_prefix
    return (
        pattern.replace("{prefix}", prefix)
        .replace("{flavor}", flavor)
        .replace("{build_id}", build_id)
    )


# --- Packer's manifest ------------------------------------------------------------------------


def manifest_artifacts(directory: Path, builder: str) -> list[dict[str, Any]]:
    """The manifest.json entries of a builder, the last Packer run's if the manifest says."""
    try:
        data = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return []
    builds = [
        b
        for b in data.get("builds", [])
        if b.get("builder_type") == builder and b.get("artifact_id")
    ]
    last = [b for b in builds if b.get("packer_run_uuid") == data.get("last_run_uuid")]
    return last or builds


# --- what publish added ---------------------------------------------------------------------


def added_before(record: BuildRecord, place: str) -> dict[str, Any]:
    """What an earlier publish added at a place (a cloud's name) and is still there."""
    return record.added(place)


def merge_added(before: dict[str, list[Any]], new: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Per place, what was added before plus what is new, each once, in order."""
    merged = {k: list(v) for k, v in before.items()}
    for where, items in new.items():
        merged[where] = [
            *merged.get(where, []),
            *(i for i in items if i not in merged.get(where, [])),
        ]
    return {k: v for k, v in merged.items() if v}


def remove_added(before: dict[str, list[Any]], gone: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Per place, what was added before less what is gone now."""
    left = {k: [i for i in v if i not in gone.get(k, [])] for k, v in before.items()}
    return {k: v for k, v in left.items() if v}


def recorded_ids(record: BuildRecord) -> dict[str, str]:
    """Image ids by place that a build recorded: built (artifact_ids) and imported."""
    return {**record.artifact_ids, **getattr(record, "imported", {})}


# Where verification (and AWS build) instances admit SSH from, when not this machine's address.
SSH_FROM = "IMAGEFORGE_VERIFY_SSH_FROM"


def ssh_source(ssh_from: str, endpoint: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The network a verification instance admits SSH from: ssh_from if given (an address or
    CIDR, never everyone), else this machine's own address on the route to the cloud's API
    endpoint, as a single address (a UDP connect only picks the route: nothing is sent)."""
    if not ssh_from.strip():
        parts = urlsplit(endpoint if "//" in endpoint else f"//{endpoint}")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((parts.hostname or endpoint, parts.port or 443))
            ssh_from = probe.getsockname()[0]
    try:
        network = ipaddress.ip_network(ssh_from.strip(), strict=False)
    except ValueError:
        raise ImageforgeError(
            f"ssh_from: {ssh_from!r} is not an IP address or CIDR (like 203.0.113.7/32)"
        ) from None
    widest = WIDEST_SSH_SOURCE[network.version]
    if network.prefixlen == 0:
        raise ImageforgeError(f"ssh_from: {ssh_from} would admit SSH from everyone")
    if network.prefixlen < widest:
        raise ImageforgeError(
            f"ssh_from: {ssh_from} would admit SSH from {network.num_addresses:,} addresses; "
            f"the widest allowed is /{widest} (IPv{network.version}): name your own address "
            "or network"
        )
    return network


# The widest network a verification instance admits SSH from, by IP version: a site, not the
# internet (0.0.0.0/1 is half of it).
WIDEST_SSH_SOURCE = {4: 16, 6: 48}


# Verification resources that cannot carry tags (firewall rules, security groups, floating
# IPs) name their build in their description: "...; imageforge-build-id=<id>".
DESCRIBED_BUILD = re.compile(re.escape(BUILD_KEY) + r"=(\S+)")


def verify_prefix(project: Project) -> str:
    """The name prefix of everything a verification makes."""
    return f"{project.images.settings.name_prefix}-verify-"


def described_build(description: str | None) -> str:
    """The build id a verification resource's description names, or ""."""
    match = DESCRIBED_BUILD.search(description or "")
    return match[1] if match else ""


def build_tags(
    project: Project, cell: Cell, record: BuildRecord, cloud_tags: dict[str, str]
) -> dict[str, str]:
    """The tags of a verification's resources: the user's, then this build's own keys."""
    return {
        **project.images.defaults.tags,
        **cell.flavor.tags,
        **cloud_tags,
        **build_keys(record),
    }


def build_keys(record: BuildRecord, version: str = __version__) -> dict[str, str]:
    """A build's own keys, the same on every cloud's resources and images."""
    return {
        FLAVOR_KEY: record.flavor,
        BUILD_KEY: record.id,
        COMMIT_KEY: record.git_commit or "unknown",
        TEMPLATE_KEY: record.template_hash or "unknown",
        VERSION_KEY: version,
    }


class Removable(Protocol):
    def remove(self) -> BaseException | None:
        """Delete everything of this verification that exists; the first error, not raised."""
        ...


class Verifying(Removable, Protocol):
    """One build's verification resources in one cloud (each cloud's Verification)."""

    @property
    def endpoint(self) -> str:
        """The cloud API's URL, whose route tells this machine's own address."""
        ...

    def start(
        self, public_key: str, user_data: str, source: ipaddress.IPv4Network | ipaddress.IPv6Network
    ) -> Instance:
        """Make the key pair, the rule admitting SSH from source, and the running instance."""
        ...


@contextlib.contextmanager
def torn_down(verification: Removable) -> Iterator[None]:
    """Clear what a killed verification of the same build left, then make sure everything made
    inside is deleted on every way out; a teardown error surfaces only when nothing else did."""
    pending = verification.remove()
    if pending is not None:
        raise pending
    failed = True
    try:
        yield
        failed = False
    finally:
        pending = verification.remove()
        if pending is not None and not failed:
            raise pending


@contextlib.contextmanager
def launched(verification: Verifying, request: LaunchRequest) -> Iterator[Instance]:
    """Every cloud's verification launch: the instance, SSH from request.ssh_from (else this
    machine), and everything deleted on every way out (what a killed run left, first)."""
    source = ssh_source(request.ssh_from, verification.endpoint)
    with torn_down(verification):
        yield verification.start(request.public_key, request.user_data, source)
