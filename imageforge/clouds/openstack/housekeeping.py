"""OpenStack prune (Glance images) and sweep (build and verification servers, their key pairs,
volumes, security groups and floating IPs)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imageforge.clouds import housekeeping
from imageforge.clouds.common import BUILD_KEY, Outcome, described_build, verify_prefix
from imageforge.clouds.housekeeping import PACKER_NAME, Image, packer_made, report, still_needed
from imageforge.clouds.openstack.connection import cloud_name, connect, errors, properties
from imageforge.clouds.openstack.launch import DESCRIPTION
from imageforge.clouds.sdkerrors import errors_into

if TYPE_CHECKING:
    from imageforge.config import Project


class OpenstackHousekeeping:
    def prune(self, project: Project, flavor: str, keep: int, *, apply: bool) -> list[Outcome]:
        """Besides every cloud's rules, never public, community, shared or protected images."""
        cloud = cloud_name(project)
        conn = connect(project)
        with errors(cloud, "list images", conn):
            listed = list(conn.image.images(owner=conn.current_project_id))
        images = [
            Image(cloud, i.id, i.name or "", i.created_at or "", properties(i), i) for i in listed
        ]

        def kept_because(image: Image) -> str:
            if image.handle.visibility in ("public", "community", "shared"):
                return str(image.handle.visibility)
            return "protected" if image.handle.is_protected else ""

        def delete(image: Image) -> None:
            conn.image.delete_image(image.handle, ignore_missing=True)

        return housekeeping.prune(
            project, flavor, images, keep, apply=apply, kept_because=kept_because, delete=delete
        )

    def sweep(self, project: Project, *, apply: bool, min_age_minutes: int) -> list[Outcome]:
        """Build and verification servers by their imageforge metadata (the rendered source
        sets it as instance_metadata), the packer_<uuid> key pairs they use and their volumes;
        and what verifications made besides: key pairs named <prefix>-verify-<build id>,
        security groups of that name and floating IPs whose description names the build."""
        cloud = cloud_name(project)
        conn = connect(project)
        builds = housekeeping.builds_by_status(project)
        with errors(cloud, "sweep", conn):
            servers = [
                s
                for s in conn.compute.servers(details=True)
                if packer_made(project, s.name or "", dict(s.metadata or {}))
            ]
            kept = {
                s.id: still_needed(
                    s.metadata[BUILD_KEY], s.created_at, min_age_minutes, builds, s.metadata
                )
                for s in servers
            }
            doomed = [s for s in servers if not kept[s.id]]
            wanted = {s.key_name for s in doomed if s.key_name and PACKER_NAME.match(s.key_name)}
            keys = sorted(k.name for k in conn.compute.keypairs() if k.name in wanted)
            volumes = sorted({v["id"] for s in doomed for v in _volumes(s)})
            verifying = _verification_leftovers(conn, project)
        outcomes = [
            report(cloud, f"server {s.id} {s.name} (build {s.metadata[BUILD_KEY]})", kept[s.id],
                   apply)
            for s in servers
        ]  # fmt: skip
        outcomes += [report(cloud, f"key pair {k}", "", apply) for k in keys]
        outcomes += [report(cloud, f"volume {v}", "", apply) for v in volumes]
        gone: list[tuple[str, Any]] = []
        for kind, handle, subject, build, created in verifying:
            reason = still_needed(build, created, min_age_minutes, builds)
            outcomes.append(report(cloud, f"{kind} {subject} (build {build})", reason, apply))
            gone += [] if reason else [(kind, handle)]
        if apply:
            with errors_into(outcomes[0] if outcomes else Outcome(cloud, "sweep")):
                _remove(conn, doomed, keys, volumes)
                _remove_verification(conn, gone)
        return outcomes


def _verification_leftovers(conn: Any, project: Project) -> list[tuple[str, Any, str, str, Any]]:
    """(kind, handle, subject, build id, created) of what verifications made besides servers."""
    prefix = verify_prefix(project)
    found: list[tuple[str, Any, str, str, Any]] = []
    for ip in conn.network.ips():
        build = described_build(ip.description)
        if build and ip.description == DESCRIPTION.format(build=build):
            found.append(("floating IP", ip, ip.floating_ip_address, build, ip.created_at))
    for group in conn.network.security_groups():
        build = described_build(group.description)
        if build and group.name == prefix + build:
            found.append(("security group", group, group.name, build, group.created_at))
    for key in conn.compute.keypairs():
        if key.name.startswith(prefix) and len(key.name) > len(prefix):
            created = conn.compute.get_keypair(key.name).created_at  # the list has no dates
            found.append(("key pair", key.name, key.name, key.name[len(prefix) :], created))
    return found


def _remove_verification(conn: Any, gone: list[tuple[str, Any]]) -> None:
    """Floating IPs, security groups, key pairs: in that order, after the servers went."""
    for kind, handle in gone:
        if kind == "floating IP":
            conn.network.delete_ip(handle, ignore_missing=True)
    for kind, handle in gone:
        if kind == "security group":
            conn.network.delete_security_group(handle, ignore_missing=True)
    for kind, handle in gone:
        if kind == "key pair":
            conn.compute.delete_keypair(handle, ignore_missing=True)


def _volumes(server: Any) -> list[dict[str, Any]]:
    return [dict(v) for v in (server.attached_volumes or [])]


def _remove(conn: Any, servers: list[Any], keys: list[str], volumes: list[str]) -> None:
    for server in servers:
        conn.compute.delete_server(server, ignore_missing=True)
    for server in servers:
        conn.compute.wait_for_delete(server, interval=2, wait=600)
    for key in keys:
        conn.compute.delete_keypair(key, ignore_missing=True)
    for volume in volumes:
        conn.block_storage.delete_volume(volume, ignore_missing=True)
