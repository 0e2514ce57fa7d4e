"""A Nova server of a build's Glance image for verification, torn down on every exit path.

Everything is found again by name and build id, so teardown (and a rerun, and `invoke sweep`)
finds what a verification made even when a signal came between an API call and its answer:
the key pair and the Neutron security group `<prefix>-verify-<build id>`, the server
`<prefix>-verify-<flavor>-<build id>` (with our metadata), and the floating IP (from
`clouds.openstack.floating_ip_pool`, when set) whose description names the build, as the
security group's does.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

from imageforge import log
from imageforge.clouds.common import (
    BUILD_KEY,
    Instance,
    LaunchRequest,
    build_tags,
    described_build,
    launched,
    verify_prefix,
)
from imageforge.clouds.openstack.connection import cloud_name, connect, errors, image_id
from imageforge.clouds.sdkerrors import remove_all
from imageforge.errors import ImageforgeError

if TYPE_CHECKING:
    from imageforge.config import Project
    from imageforge.config.matrix import Cell
    from imageforge.records.record import BuildRecord

DESCRIPTION = "imageforge verification SSH; " + BUILD_KEY + "={build}"
SERVER_WAIT_SECONDS = 900
POLL_SECONDS = 2.0
GROUP_FREE_SECONDS = 120.0


class OpenstackLauncher:
    def launch(self, request: LaunchRequest) -> contextlib.AbstractContextManager[Instance]:
        return launched(Verification(request.project, request.cell, request.record), request)


class Verification:
    """The key pair, security group, server and floating IP of one build's verification."""

    def __init__(self, project: Project, cell: Cell, record: BuildRecord) -> None:
        self.settings = project.images.clouds.openstack
        self.cloud, self.record = cloud_name(project), record
        self.image = image_id(project, record)
        self.conn = connect(project)
        self.name = f"{verify_prefix(project)}{record.id}"
        self.server_name = f"{verify_prefix(project)}{cell.flavor_name}-{record.id}"
        self.description = DESCRIPTION.format(build=record.id)
        self.metadata = build_tags(project, cell, record, self.settings.metadata)

    @property
    def endpoint(self) -> str:
        url: str = self.conn.compute.get_endpoint()
        return url

    # --- creation ---------------------------------------------------------------------------

    def start(
        self, public_key: str, user_data: str, source: ipaddress.IPv4Network | ipaddress.IPv6Network
    ) -> Instance:
        conn, name = self.conn, self.name
        with errors(self.cloud, f"create the key pair {name}", conn):
            conn.compute.create_keypair(name=name, public_key=public_key.strip())
        with errors(self.cloud, f"create the security group {name}", conn):
            group = conn.network.create_security_group(name=name, description=self.description)
            conn.network.create_security_group_rule(
                security_group_id=group.id,
                direction="ingress",
                ethertype=f"IPv{source.version}",
                protocol="tcp",
                port_range_min=22,
                port_range_max=22,
                remote_ip_prefix=str(source),
            )
        with errors(self.cloud, f"find the flavor {self.settings.flavor}", conn):
            flavor = conn.compute.find_flavor(self.settings.flavor, ignore_missing=False)
        networks: Any = [{"uuid": n} for n in self.settings.networks] or "auto"
        with errors(self.cloud, f"launch a server of image {self.image}", conn):
            server = conn.compute.create_server(
                name=self.server_name,
                image_id=self.image,
                flavor_id=flavor.id,
                networks=networks,
                key_name=name,
                security_groups=[{"name": name}],
                metadata=self.metadata,
                user_data=base64.b64encode(user_data.encode()).decode(),
            )
        log.info(f"launched server {server.id} of {self.image} in cloud {self.cloud!r}")
        with errors(self.cloud, f"wait for server {server.id} to be ACTIVE", conn):
            server = conn.compute.wait_for_server(
                server, status="ACTIVE", failures=["ERROR"], interval=POLL_SECONDS,
                wait=SERVER_WAIT_SECONDS,
            )  # fmt: skip
        if self.settings.floating_ip_pool:
            return Instance(server.id, self.floating_ip(server), self.cloud)
        return Instance(server.id, fixed_address(server), self.cloud)

    def floating_ip(self, server: Any) -> str:
        pool = self.settings.floating_ip_pool
        conn = self.conn
        with errors(self.cloud, f"give server {server.id} a floating IP from {pool}", conn):
            network = conn.network.find_network(pool, ignore_missing=False)
            port = next(iter(conn.network.ports(device_id=server.id)), None)
            if port is None:
                raise ImageforgeError(f"server {server.id} has no port for a floating IP")
            ip = conn.network.create_ip(
                floating_network_id=network.id, port_id=port.id, description=self.description
            )
        return str(ip.floating_ip_address)

    # --- teardown ---------------------------------------------------------------------------

    def remove(self) -> BaseException | None:
        """Delete the server (waiting until it is gone), the floating IP, the security group
        and the key pair, each even when another failed; failures are warnings. An interrupt
        that came meanwhile is returned, for the caller to raise unless an error is already on
        its way."""
        steps: list[tuple[str, Callable[[], None]]] = [
            (f"delete the server {self.server_name}", self.remove_servers),
            ("release the floating IP", self.remove_ips),
            (f"delete the security group {self.name}", self.remove_groups),
            (f"delete the key pair {self.name}", self.remove_keypair),
        ]
        return remove_all(steps, f"OpenStack cloud {self.cloud!r}", self.record.id, "openstack")

    def remove_servers(self) -> None:
        compute = self.conn.compute
        found = [
            s
            for s in compute.servers(name=f"^{re.escape(self.server_name)}$")
            if s.name == self.server_name and (s.metadata or {}).get(BUILD_KEY) == self.record.id
        ]
        for server in found:
            compute.delete_server(server, ignore_missing=True)
        for server in found:
            compute.wait_for_delete(server, interval=POLL_SECONDS, wait=SERVER_WAIT_SECONDS)
            log.info(f"deleted server {server.id}")

    def remove_ips(self) -> None:
        for ip in list(self.conn.network.ips(description=self.description)):
            self.conn.network.delete_ip(ip, ignore_missing=True)

    def remove_groups(self) -> None:
        from openstack import exceptions as os_exc

        groups = [
            g
            for g in self.conn.network.security_groups(name=self.name)
            if described_build(g.description) == self.record.id
        ]
        # Neutron may still hold the server's port for a moment after the server is gone.
        retrying = Retrying(
            retry=retry_if_exception(lambda e: isinstance(e, os_exc.ConflictException)),
            wait=wait_fixed(POLL_SECONDS),
            stop=stop_after_delay(GROUP_FREE_SECONDS),
            reraise=True,
        )
        for group in groups:
            retrying(self.conn.network.delete_security_group, group, ignore_missing=True)

    def remove_keypair(self) -> None:
        self.conn.compute.delete_keypair(self.name, ignore_missing=True)


def fixed_address(server: Any) -> str:
    """The server's first fixed address, IPv4 first."""
    found = [
        a
        for addresses in (server.addresses or {}).values()
        for a in addresses
        if a.get("OS-EXT-IPS:type", "fixed") == "fixed"
    ]
    found.sort(key=lambda a: a.get("version", 4) != 4)
    if not found:
        raise ImageforgeError(
            f"server {server.id} has no fixed address",
            hint="set clouds.openstack.networks, or floating_ip_pool for a floating IP",
        )
    return str(found[0]["addr"])
