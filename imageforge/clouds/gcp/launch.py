"""A Compute Engine instance of a build's image for verification, torn down on every exit path.

Names derive from the build id, so teardown (and a rerun, and `invoke sweep`) finds what a
verification made even when a signal came between an API call and its answer: the instance
`<prefix>-verify-<flavor>-<build id>` (with our labels) and the firewall rule
`<prefix>-verify-<build id>` (firewall rules have no labels: its description names the build),
which admits tcp/22 from one CIDR to the instance's network tag of the same name.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from imageforge import log
from imageforge.clouds.common import (
    BUILD_KEY,
    WIDEST_SSH_SOURCE,
    Instance,
    LaunchRequest,
    build_tags,
    described_build,
    label,
    launched,
    verify_prefix,
)
from imageforge.clouds.gcp.connection import Gce
from imageforge.clouds.gcp.sharing import locate
from imageforge.clouds.sdkerrors import remove_all
from imageforge.config import oses
from imageforge.errors import ImageforgeError

if TYPE_CHECKING:
    from imageforge.config import Project
    from imageforge.config.matrix import Cell
    from imageforge.records.record import BuildRecord

GCE_NAME_LENGTH = 63
# The firewall rule's description names its build: sweep reads it back.
DESCRIPTION = "imageforge verification SSH from {source}; " + BUILD_KEY + "={build}"


def wide_ssh_rules(rules: Iterable[Any], network: str) -> list[str]:
    """'RULE (RANGES)' for each enabled rule of network that lets SSH in, to every instance,
    from a range wider than verification itself would admit (common.WIDEST_SSH_SOURCE)."""
    found = []
    for rule in rules:
        if rule.network != network or rule.disabled or rule.direction != "INGRESS":
            continue
        if rule.target_tags or rule.target_service_accounts:
            continue  # applies to tagged instances only; ours carries its own tag alone
        if not any(_admits_ssh(allowed) for allowed in rule.allowed):
            continue
        wide = [r for r in rule.source_ranges if _wider_than_allowed(r)]
        if wide:
            found.append(f"{rule.name} ({', '.join(wide)})")
    return found


def _admits_ssh(allowed: Any) -> bool:
    if allowed.I_p_protocol not in ("tcp", "all", "6"):
        return False
    for ports in allowed.ports or ["0-65535"]:
        low, _, high = ports.partition("-")
        if int(low) <= 22 <= int(high or low):
            return True
    return False


def _wider_than_allowed(cidr: str) -> bool:
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False
    return network.prefixlen < WIDEST_SSH_SOURCE[network.version]


def gce_name(text: str) -> str:
    """A resource name as GCE allows it ([a-z]([-a-z0-9]*[a-z0-9])?, 63 at most); a longer one
    is cut and keeps a hash of the whole, so it stays unique."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    if len(name) > GCE_NAME_LENGTH:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = name[: GCE_NAME_LENGTH - 9].rstrip("-") + "-" + digest
    return name


class GcpLauncher:
    def launch(self, request: LaunchRequest) -> contextlib.AbstractContextManager[Instance]:
        return launched(Verification(request.project, request.cell, request.record), request)


class Verification:
    """The instance and firewall rule of one build's verification in the configured zone."""

    def __init__(self, project: Project, cell: Cell, record: BuildRecord) -> None:
        self.settings = project.images.clouds.gcp
        self.record, self.zone = record, self.settings.zone
        where, self.image = locate(project, record)
        self.gce = Gce(where)
        self.rule = gce_name(f"{verify_prefix(project)}{record.id}")
        self.tag = self.rule
        self.name = gce_name(f"{verify_prefix(project)}{cell.flavor_name}-{record.id}")
        self.user = oses.get(cell.os).login_user
        tags = build_tags(project, cell, record, self.settings.labels)
        self.labels = {label(k): label(v) for k, v in tags.items()}

    @property
    def endpoint(self) -> str:
        return self.gce.endpoint

    # --- creation ---------------------------------------------------------------------------

    def start(
        self, public_key: str, user_data: str, source: ipaddress.IPv4Network | ipaddress.IPv6Network
    ) -> Instance:
        from google.cloud import compute_v1

        gce, instances = self.gce, self.gce.client("InstancesClient")
        image = f"projects/{gce.project}/global/images/{self.image}"
        with gce.errors(f"create the verification instance {self.name} of {self.image}"):
            gce.wait(
                instances.insert_unary(
                    project=gce.project,
                    zone=self.zone,
                    instance_resource=self.instance(image, public_key, user_data),
                )
            )
            created = instances.get(project=gce.project, zone=self.zone, instance=self.name)
        log.info(f"launched {self.name} from {self.image} in {self.zone}")
        interface = created.network_interfaces[0]
        rule = compute_v1.Firewall(
            name=self.rule,
            description=DESCRIPTION.format(source=source, build=self.record.id),
            network=interface.network,
            direction="INGRESS",
            allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=["22"])],
            source_ranges=[str(source)],
            target_tags=[self.tag],
        )
        with gce.errors(f"create the firewall rule {self.rule}"):
            firewalls = gce.client("FirewallsClient")
            gce.wait(firewalls.insert_unary(project=gce.project, firewall_resource=rule))
        with gce.errors(f"list the firewall rules of {interface.network}"):
            others = wide_ssh_rules(firewalls.list(project=gce.project), interface.network)
        if others:
            log.warn(
                f"the network {interface.network.rsplit('/', 1)[-1]} also admits SSH from "
                f"{', '.join(others)}: the verification instance is reachable from there, not "
                f"only from {source}; set clouds.gcp.network to a network whose rules you control"
            )
        external = [c.nat_i_p for c in interface.access_configs if c.nat_i_p]
        return Instance(self.name, (external or [interface.network_i_p])[0], self.zone)

    def instance(self, image: str, public_key: str, user_data: str) -> Any:
        """The instance: boot disk from the image (deleted with it), the network of the build
        with an external address, cloud-init's user-data, the key, our labels and tag."""
        from google.cloud import compute_v1

        metadata = {"user-data": user_data, "ssh-keys": f"{self.user}:{public_key.strip()}"}
        return compute_v1.Instance(
            name=self.name,
            machine_type=f"zones/{self.zone}/machineTypes/{self.settings.machine_type}",
            disks=[
                compute_v1.AttachedDisk(
                    boot=True,
                    auto_delete=True,
                    initialize_params=compute_v1.AttachedDiskInitializeParams(
                        source_image=image, labels=self.labels
                    ),
                )
            ],
            network_interfaces=[self.interface()],
            metadata=compute_v1.Metadata(
                items=[compute_v1.Items(key=k, value=v) for k, v in metadata.items()]
            ),
            labels=self.labels,
            tags=compute_v1.Tags(items=[self.tag]),
        )

    def interface(self) -> Any:
        from google.cloud import compute_v1

        interface = compute_v1.NetworkInterface(
            access_configs=[compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")]
        )
        network, subnetwork = self.settings.network, self.settings.subnetwork
        if network:
            interface.network = network if "/" in network else f"global/networks/{network}"
        if subnetwork:
            region = self.zone.rsplit("-", 1)[0]
            interface.subnetwork = (
                subnetwork if "/" in subnetwork else f"regions/{region}/subnetworks/{subnetwork}"
            )
        return interface

    # --- teardown ---------------------------------------------------------------------------

    def remove(self) -> BaseException | None:
        """Delete the instance (waiting until it is gone), then the firewall rule, each even
        when the other failed; failures are warnings. An interrupt that came meanwhile is
        returned, for the caller to raise unless an error is already on its way."""
        steps: list[tuple[str, Callable[[], None]]] = [
            (f"delete the verification instance {self.name}", self.remove_instance),
            (f"delete the firewall rule {self.rule}", self.remove_rule),
        ]
        return remove_all(steps, f"GCP ({self.gce.project}/{self.zone})", self.record.id, "gcp")

    def remove_instance(self) -> None:
        from google.api_core import exceptions

        instances = self.gce.client("InstancesClient")
        try:
            found = instances.get(project=self.gce.project, zone=self.zone, instance=self.name)
        except exceptions.NotFound:
            return
        if found.labels.get(BUILD_KEY) != label(self.record.id):
            raise ImageforgeError(f"instance {self.name} is not labelled as build {self.record.id}")
        self.gce.wait(
            instances.delete_unary(project=self.gce.project, zone=self.zone, instance=self.name)
        )
        log.info(f"deleted {self.name} in {self.zone}")

    def remove_rule(self) -> None:
        from google.api_core import exceptions

        firewalls = self.gce.client("FirewallsClient")
        try:
            found = firewalls.get(project=self.gce.project, firewall=self.rule)
        except exceptions.NotFound:
            return
        if described_build(found.description) != self.record.id:
            raise ImageforgeError(f"firewall rule {self.rule} does not name build {self.record.id}")
        self.gce.wait(firewalls.delete_unary(project=self.gce.project, firewall=self.rule))
