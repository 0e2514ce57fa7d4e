"""GCP prune (images) and sweep (instances, disks and firewall rules a killed build left)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from imageforge.clouds import housekeeping
from imageforge.clouds.common import (
    BUILD_KEY,
    FLAVOR_KEY,
    Outcome,
    described_build,
    label,
    verify_prefix,
)
from imageforge.clouds.gcp.connection import Gce, project_id
from imageforge.clouds.gcp.sharing import IMAGE_USER, get_policy
from imageforge.clouds.housekeeping import Image, packer_made, report, still_needed
from imageforge.clouds.sdkerrors import errors_into

if TYPE_CHECKING:
    from imageforge.config import Project


class GcpHousekeeping:
    def prune(self, project: Project, flavor: str, keep: int, *, apply: bool) -> list[Outcome]:
        """Never deleted beyond the rules of all clouds: an image still being created, or one
        whose IAM policy grants roles/compute.imageUser to anyone."""
        gce = Gce(project_id(project))
        with gce.errors("list images"):
            listed = gce.list_images(f"labels.{FLAVOR_KEY} = {json.dumps(label(flavor))}")
        images = [
            Image(gce.project, i.name, i.name, i.creation_timestamp, dict(i.labels), i)
            for i in listed
        ]

        def kept_because(image: Image) -> str:
            if image.handle.status == "PENDING":
                return "still being created (PENDING)"
            policy = get_policy(gce, image.name)
            shared = [m for b in policy.bindings if b.role == IMAGE_USER for m in b.members]
            return f"shared with {', '.join(shared)}" if shared else ""

        def delete(image: Image) -> None:
            gce.wait(gce.images.delete_unary(project=gce.project, image=image.name))

        return housekeeping.prune(
            project, flavor, images, keep, apply=apply, kept_because=kept_because, delete=delete
        )

    def sweep(self, project: Project, *, apply: bool, min_age_minutes: int) -> list[Outcome]:
        """Build and verification instances (both carry our labels), the boot disks of build
        instances (Packer creates them with autoDelete off), our labelled disks that no other
        instance uses, and verification firewall rules (named <prefix>-verify-..., their build
        in the description)."""
        gce = Gce(project_id(project))
        builds = housekeeping.builds_by_status(project)

        def why_kept(resource: Any) -> str:
            build = resource.labels[BUILD_KEY]
            created, labels = resource.creation_timestamp, dict(resource.labels)
            return still_needed(build, created, min_age_minutes, builds, labels)

        with gce.errors("list instances and disks"):
            instances = [
                (zone, i)
                for zone, i in _labelled(gce, "InstancesClient", "instances")
                if packer_made(project, i.name, dict(i.labels))
            ]
            disks_found = _labelled(gce, "DisksClient", "disks")
            rules = _verification_rules(gce, project)
        kept = {i.self_link: why_kept(i) for _, i in instances}
        doomed = {link for link, reason in kept.items() if not reason}
        disks: dict[str, tuple[str, str, str]] = {}
        going = set()  # autoDelete disks of doomed instances: they go with the instance
        for zone, instance in instances:
            for attached in instance.disks:
                if attached.boot and not attached.auto_delete:
                    name = attached.source.rsplit("/", 1)[-1]
                    disks[attached.source] = (zone, name, kept[instance.self_link])
                elif attached.auto_delete and instance.self_link in doomed:
                    going.add(attached.source)
        for zone, disk in disks_found:
            free = disk.self_link not in {*disks, *going} and set(disk.users) <= doomed
            if free and packer_made(project, disk.name, dict(disk.labels)):
                disks[disk.self_link] = (zone, disk.name, why_kept(disk))
        outcomes = []
        for zone, instance in instances:
            build = instance.labels[BUILD_KEY]
            subject = f"instance {instance.name} (build {build})"
            outcome = report(f"{gce.project}/{zone}", subject, kept[instance.self_link], apply)
            outcomes.append(
                _remove(gce, outcome, apply, "InstancesClient", zone, instance=instance.name)
            )
        for zone, name, reason in disks.values():
            outcome = report(f"{gce.project}/{zone}", f"disk {name}", reason, apply)
            outcomes.append(_remove(gce, outcome, apply, "DisksClient", zone, disk=name))
        for rule, build in rules:
            reason = still_needed(build, rule.creation_timestamp, min_age_minutes, builds)
            outcome = report(
                gce.project, f"firewall rule {rule.name} (build {build})", reason, apply
            )
            outcomes.append(_remove(gce, outcome, apply, "FirewallsClient", "", firewall=rule.name))
        return outcomes


def _verification_rules(gce: Gce, project: Project) -> list[tuple[Any, str]]:
    """(rule, build id) of every firewall rule a verification made: our name and its build."""
    found = gce.client("FirewallsClient").list(request={"project": gce.project})
    return [
        (rule, described_build(rule.description))
        for rule in found
        if rule.name.startswith(verify_prefix(project)) and described_build(rule.description)
    ]


def _labelled(gce: Gce, kind: str, attribute: str) -> list[tuple[str, Any]]:
    """(zone, resource) for every instance or disk carrying our build label."""
    pages = gce.client(kind).aggregated_list(
        request={"project": gce.project, "filter": f"labels.{BUILD_KEY}:*"}
    )
    return [
        (scope.rsplit("/", 1)[-1], item)
        for scope, scoped in pages
        for item in getattr(scoped, attribute)
        if BUILD_KEY in item.labels
    ]


def _remove(
    gce: Gce, outcome: Outcome, apply: bool, kind: str, zone: str, **resource: str
) -> Outcome:
    if apply and outcome.changes:
        with errors_into(outcome):
            client = gce.client(kind)
            scope = {"zone": zone} if zone else {}
            gce.wait(client.delete_unary(project=gce.project, **scope, **resource))
        if outcome.error:
            outcome.changes = []
    return outcome
