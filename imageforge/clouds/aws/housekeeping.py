"""AWS prune (AMIs and their snapshots) and sweep (what killed builds left in EC2)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from imageforge.clouds import housekeeping
from imageforge.clouds.aws.client import ec2, errors, regions, tags
from imageforge.clouds.aws.launch import VERIFY_PREFIX
from imageforge.clouds.common import BUILD_KEY, FLAVOR_KEY, Outcome
from imageforge.clouds.housekeeping import PACKER_NAME, Image, packer_made, report, still_needed
from imageforge.clouds.sdkerrors import errors_into

if TYPE_CHECKING:
    from imageforge.config import Project

LIVE = ["pending", "running", "stopping", "stopped"]
# Packer's temporary key pairs and groups, and those of a verification instance (launch.py).
TEMPORARY = re.compile(PACKER_NAME.pattern + "|^" + re.escape(VERIFY_PREFIX) + "[0-9a-z-]+$")


class AwsHousekeeping:
    def prune(self, project: Project, flavor: str, keep: int, *, apply: bool) -> list[Outcome]:
        images = []
        for region in regions(project):
            client = ec2(region)
            with errors(client, "list images"):
                found = client.describe_images(
                    Owners=["self"], Filters=[{"Name": f"tag:{FLAVOR_KEY}", "Values": [flavor]}]
                )["Images"]
            images += [
                Image(region, i["ImageId"], i.get("Name", ""), i["CreationDate"], tags(i), i)
                for i in found
            ]
        return housekeeping.prune(
            project, flavor, images, keep, apply=apply, kept_because=_kept, delete=_delete
        )

    def sweep(self, project: Project, *, apply: bool, min_age_minutes: int) -> list[Outcome]:
        outcomes = []
        for region in regions(project):
            with errors(ec2(region), "sweep"):
                outcomes += RegionSweep(project, region, min_age_minutes).run(apply)
        return outcomes


def _kept(image: Image) -> str:
    client = ec2(image.where)
    shared = client.describe_image_attribute(ImageId=image.ident, Attribute="launchPermission")
    return "published" if shared.get("LaunchPermissions") else ""


def _delete(image: Image) -> None:
    client = ec2(image.where)
    snapshots = [
        m["Ebs"]["SnapshotId"]
        for m in image.handle.get("BlockDeviceMappings", [])
        if m.get("Ebs", {}).get("SnapshotId")
    ]
    client.deregister_image(ImageId=image.ident)
    for snapshot in snapshots:
        client.delete_snapshot(SnapshotId=snapshot)


class RegionSweep:
    """Build and verification instances with our tags; Packer's packer_* and verification
    imageforge-verify-* key pairs and security groups, and our tagged volumes, even when
    their instance is gone."""

    def __init__(self, project: Project, region: str, min_age_minutes: int) -> None:
        self.project, self.region, self.client = project, region, ec2(region)
        self.minutes = min_age_minutes
        self.builds = housekeeping.builds_by_status(project)

    def run(self, apply: bool) -> list[Outcome]:
        reservations = self.client.describe_instances(
            Filters=[
                {"Name": "tag-key", "Values": [BUILD_KEY]},
                {"Name": "instance-state-name", "Values": LIVE},
            ]
        )["Reservations"]
        found = [i for r in reservations for i in r["Instances"]]
        live = [i for i in found if packer_made(self.project, _name(i), tags(i))]
        instances = {i["InstanceId"]: self.why_kept(i, i["LaunchTime"]) for i in live}
        doomed = [i for i in live if not instances[i["InstanceId"]]]
        kept = [i for i in live if instances[i["InstanceId"]]]
        keys = self.key_pairs(doomed, kept)
        groups = self.security_groups(doomed, kept)
        volumes = self.volumes()
        outcomes = [
            report(self.region, f"instance {i['InstanceId']} (build {tags(i)[BUILD_KEY]})",
                   instances[i["InstanceId"]], apply)
            for i in live
        ]  # fmt: skip
        outcomes += [report(self.region, f"key pair {k}", r, apply) for k, r in keys.items()]
        outcomes += [
            report(self.region, f"security group {g}", r, apply) for g, r in groups.items()
        ]
        outcomes += [report(self.region, f"volume {v}", r, apply) for v, r in volumes.items()]
        if apply:
            self.remove(outcomes, [i["InstanceId"] for i in doomed], keys, groups, volumes)
        return outcomes

    def why_kept(self, resource: dict[str, Any], created: Any) -> str:
        found = tags(resource)
        return still_needed(found.get(BUILD_KEY, ""), created, self.minutes, self.builds, found)

    def key_pairs(self, doomed: list[dict[str, Any]], kept: list[dict[str, Any]]) -> dict[str, str]:
        """Temporary key pairs of our builds: by tag and age, or used by a doomed instance."""
        used = {i.get("KeyName") for i in doomed}
        busy = {i.get("KeyName") for i in kept}
        found = {}
        for key in self.client.describe_key_pairs()["KeyPairs"]:
            name = key["KeyName"]
            if not TEMPORARY.match(name) or name in busy:
                continue
            if name in used:
                found[name] = ""
            elif tags(key).get(BUILD_KEY):
                found[name] = self.why_kept(key, key.get("CreateTime"))
        return found

    def security_groups(
        self, doomed: list[dict[str, Any]], kept: list[dict[str, Any]]
    ) -> dict[str, str]:
        """Temporary groups (they have no creation time): those of a doomed instance, or
        tagged with a build that ended here, in neither case used by another instance."""

        def group_ids(instances: list[dict[str, Any]]) -> set[str]:
            """The instances' groups, their network interfaces' included (moto lists a group
            given through NetworkInterfaces only there)."""
            interfaces = [n for i in instances for n in i.get("NetworkInterfaces", [])]
            groups = [g for i in instances for g in i.get("SecurityGroups", [])]
            groups += [g for n in interfaces for g in n.get("Groups", [])]
            return {g["GroupId"] for g in groups}

        used, busy = group_ids(doomed), group_ids(kept)
        found = {}
        for group in self.client.describe_security_groups()["SecurityGroups"]:
            gid, build = group["GroupId"], tags(group).get(BUILD_KEY, "")
            if not TEMPORARY.match(group.get("GroupName", "")) or gid in busy:
                continue
            ended = self.builds.get(build) not in (None, "building")
            if gid in used or ended:
                found[gid] = ""
        return found

    def volumes(self) -> dict[str, str]:
        available = self.client.describe_volumes(
            Filters=[
                {"Name": "tag-key", "Values": [BUILD_KEY]},
                {"Name": "status", "Values": ["available"]},
            ]
        )["Volumes"]
        return {v["VolumeId"]: self.why_kept(v, v.get("CreateTime")) for v in available}

    def remove(
        self,
        outcomes: list[Outcome],
        instances: list[str],
        keys: dict[str, str],
        groups: dict[str, str],
        volumes: dict[str, str],
    ) -> None:
        """Terminate first (and wait): key pairs, groups and volumes are free only then."""
        by_subject = {o.subject: o for o in outcomes if o.changes}
        if instances:
            self.client.terminate_instances(InstanceIds=instances)
            self.client.get_waiter("instance_terminated").wait(
                InstanceIds=instances, WaiterConfig={"Delay": 2, "MaxAttempts": 150}
            )
        steps: list[tuple[str, Callable[[], object]]] = [
            *((f"key pair {k}", lambda k=k: self.client.delete_key_pair(KeyName=k)) for k in keys),
            *((f"security group {g}", lambda g=g: self.client.delete_security_group(GroupId=g))
              for g in groups),
            *((f"volume {v}", lambda v=v: self.client.delete_volume(VolumeId=v)) for v in volumes),
        ]  # fmt: skip
        for subject, step in steps:
            outcome = by_subject.get(subject)
            if outcome is not None:
                with errors_into(outcome):
                    step()
                if outcome.error:
                    outcome.changes = []


def _name(instance: dict[str, Any]) -> str:
    """An instance's Name tag; Packer tags its build instance "Packer Builder"."""
    return tags(instance).get("Name", "")
