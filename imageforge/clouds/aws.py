"""aws: amazon-ebs builds; publishing is a LaunchPermission plus createVolumePermission."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imageforge import hcl
from imageforge.clouds.base import Cloud, Outcome, Sharing
from imageforge.errors import ImageforgeError

if TYPE_CHECKING:
    from imageforge.config import Project
    from imageforge.matrix import Cell
    from imageforge.state import BuildRecord


class AwsCloud(Cloud):
    name = "aws"
    builder = "amazon-ebs"

    def source(self, project: Project, cell: Cell) -> dict[str, Any]:
        aws = project.images.clouds.aws
        ami = aws.source_ami[cell.os]
        tags = self.metadata(project, cell, aws.tags)
        # Instances, volumes and key pairs carry the same tags, so a sweep finds leftovers.
        return {
            "region": aws.region,
            "instance_type": None if aws.spot else aws.instance_type,
            "spot_instance_types": [aws.instance_type] if aws.spot else None,
            "spot_price": "auto" if aws.spot else None,
            "subnet_id": aws.subnet_id,
            "vpc_id": aws.vpc_id,
            "ami_name": self.image_name(project, cell, aws.ami_name),
            "description": cell.flavor.description or f"imageforge {cell.flavor_name}",
            "copy_regions": list(aws.copy_regions),
            "encrypt_boot": aws.encrypt_boot,
            "communicator": aws.communicator,
            "ssh_username": self.ssh_username(cell.os),
            "ssh_interface": aws.ssh_interface,
            "associate_public_ip": True if aws.ssh_interface.startswith("public") else None,
            "source_ami_name": ami.name,
            "source_ami_owners": list(ami.owners),
            "volume_size": aws.volume_size_gb,
            "tag_attributes": hcl.attributes(
                {"tags": tags, "snapshot_tags": tags, "run_tags": tags, "run_volume_tags": tags}
            ),
        }

    @contextlib.contextmanager
    def validation_env(self, project: Project, scratch: Path) -> Iterator[dict[str, str]]:
        yield {
            "AWS_ACCESS_KEY_ID": "AKIAVALIDATEONLY0000",
            "AWS_SECRET_ACCESS_KEY": "validate-only",
            "AWS_DEFAULT_REGION": "eu-west-1",
            "AWS_CONFIG_FILE": str(scratch / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(scratch / "no-aws-credentials"),
        }

    def doctor(self, project: Project, cell: Cell) -> list[str]:
        return _doctor(project, cell)

    def artifact_ids(self, record: BuildRecord) -> dict[str, str]:
        return _artifact_ids(record)

    def collect_artifacts(self, record: BuildRecord) -> list[dict[str, Any]]:
        record.artifact_ids = _artifact_ids(record)
        return []

    def publish(self, project: Project, record: BuildRecord, sharing: Sharing) -> list[Outcome]:
        return _publish(project, record, sharing)

    def unpublish(self, project: Project, record: BuildRecord, sharing: Sharing) -> list[Outcome]:
        return _unpublish(project, record, sharing)

    def prune(self, project: Project, flavor: str, keep: int, *, apply: bool) -> list[Outcome]:
        return _prune(project, flavor, keep, apply)

    def sweep(self, project: Project, *, apply: bool) -> list[Outcome]:
        return _sweep(project, apply)


# --- sharing, housekeeping and preflight ------------------------------------------------------

FLAVOR_TAG = "imageforge-flavor"
BUILD_TAG = "imageforge-build-id"


def ec2(region: str) -> Any:
    """An EC2 client; boto3 finds credentials and endpoint (AWS_ENDPOINT_URL) as usual."""
    import boto3

    return boto3.client("ec2", region_name=region)


def _error_code(exc: Exception) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)


def _permissions(sharing: Any) -> list[dict[str, str]]:
    if sharing.public:
        return [{"Group": "all"}]
    return [{"UserId": a} for a in sharing.accounts] + [
        {"OrganizationArn" if ":organization/" in o else "OrganizationalUnitArn": o}
        for o in sharing.organizations
    ]


def _snapshot_args(permission: dict[str, str]) -> dict[str, list[str]] | None:
    """Snapshots share with accounts or everyone; organizations reach them through the AMI."""
    if "Group" in permission:
        return {"GroupNames": [permission["Group"]]}
    if "UserId" in permission:
        return {"UserIds": [permission["UserId"]]}
    return None


class _AwsSharing:
    """publish/unpublish for one AMI in one region."""

    def __init__(self, region: str, ami: str) -> None:
        self.region, self.ami, self.client = region, ami, ec2(region)

    def snapshots(self) -> list[dict[str, Any]]:
        image = self.client.describe_images(ImageIds=[self.ami])["Images"][0]
        ids = [
            m["Ebs"]["SnapshotId"]
            for m in image.get("BlockDeviceMappings", [])
            if "Ebs" in m and m["Ebs"].get("SnapshotId")
        ]
        return self.client.describe_snapshots(SnapshotIds=ids)["Snapshots"] if ids else []

    def block_public_access(self) -> str | None:
        """The account's image block-public-access state, where the API offers it."""
        try:
            return self.client.get_image_block_public_access_state()["ImageBlockPublicAccessState"]
        except Exception as exc:
            code = _error_code(exc)
            if code in (
                "InvalidAction",
                "NotImplemented",
                "UnsupportedOperation",
            ) or "parse" in str(exc):
                return None
            raise

    def launch_permissions(self) -> list[dict[str, str]]:
        attr = self.client.describe_image_attribute(ImageId=self.ami, Attribute="launchPermission")
        return attr.get("LaunchPermissions", [])

    def volume_permissions(self, snapshot: str) -> list[dict[str, str]]:
        attr = self.client.describe_snapshot_attribute(
            SnapshotId=snapshot, Attribute="createVolumePermission"
        )
        return attr.get("CreateVolumePermissions", [])

    def share(self, wanted: list[dict[str, str]], public: bool) -> list[str]:
        changes = []
        snapshots = self.snapshots()
        if public:
            encrypted = [s["SnapshotId"] for s in snapshots if s.get("Encrypted")]
            if encrypted:
                raise ImageforgeError(
                    f"snapshot {', '.join(encrypted)} is encrypted: AWS cannot share encrypted "
                    "snapshots publicly; share with named accounts instead, or build with "
                    "encrypt_boot: false"
                )
            state = self.block_public_access()
            if state == "block-new-sharing":
                raise ImageforgeError(
                    "image block public access is on for this account and region",
                    hint="aws ec2 disable-image-block-public-access, or share with accounts",
                )
        have = self.launch_permissions()
        missing = [p for p in wanted if p not in have]
        if missing:
            self.client.modify_image_attribute(ImageId=self.ami, LaunchPermission={"Add": missing})
            changes.append("launch permission " + ", ".join(_describe(p) for p in missing))
        for snapshot in snapshots:
            sid = snapshot["SnapshotId"]
            have_volume = self.volume_permissions(sid)
            for permission in wanted:
                args = _snapshot_args(permission)
                if args is None or permission in have_volume:
                    continue
                self.client.modify_snapshot_attribute(
                    SnapshotId=sid, Attribute="createVolumePermission", OperationType="add", **args
                )
                changes.append(f"createVolumePermission on {sid} for {_describe(permission)}")
        return changes

    def unshare(self, added: list[dict[str, str]]) -> list[str]:
        changes = []
        have = self.launch_permissions()
        present = [p for p in added if p in have]
        if present:
            self.client.modify_image_attribute(
                ImageId=self.ami, LaunchPermission={"Remove": present}
            )
            changes.append("removed launch permission " + ", ".join(_describe(p) for p in present))
        for snapshot in self.snapshots():
            sid = snapshot["SnapshotId"]
            have_volume = self.volume_permissions(sid)
            for permission in added:
                args = _snapshot_args(permission)
                if args is None or permission not in have_volume:
                    continue
                self.client.modify_snapshot_attribute(
                    SnapshotId=sid,
                    Attribute="createVolumePermission",
                    OperationType="remove",
                    **args,
                )
                changes.append(
                    f"removed createVolumePermission on {sid} for {_describe(permission)}"
                )
        return changes


def _describe(permission: dict[str, str]) -> str:
    key, value = next(iter(permission.items()))
    return "everyone" if permission == {"Group": "all"} else f"{key} {value}"


def _artifact_ids(record: BuildRecord) -> dict[str, str]:
    manifest = record.directory / "manifest.json"
    if not manifest.is_file():
        return dict(record.artifact_ids)
    builds = json.loads(manifest.read_text()).get("builds", [])
    ids: dict[str, str] = {}
    for entry in builds:
        if entry.get("builder_type") != "amazon-ebs":
            continue
        for pair in entry.get("artifact_id", "").split(","):
            if ":" in pair:
                region, ami = pair.split(":", 1)
                ids[region] = ami
    return ids or dict(record.artifact_ids)


def _regions(project: Project) -> list[str]:
    aws = project.images.clouds.aws
    return [aws.region, *[r for r in aws.copy_regions if r != aws.region]]


def _tag(resource: dict[str, Any], key: str) -> str | None:
    return next((t["Value"] for t in resource.get("Tags", []) if t["Key"] == key), None)


def _publish(project: Project, record: BuildRecord, sharing: Any) -> list[Outcome]:
    wanted = _permissions(sharing)
    outcomes = []
    added_before = record.published.get("aws_added", {})
    added: dict[str, list[dict[str, str]]] = dict(added_before)
    for region, ami in sorted(_artifact_ids(record).items()):
        outcome = Outcome(where=region, subject=ami)
        try:
            region_sharing = _AwsSharing(region, ami)
            before = region_sharing.launch_permissions()
            outcome.changes = region_sharing.share(wanted, sharing.public)
            newly = [p for p in wanted if p not in before]
            added[region] = [
                *added.get(region, []),
                *[p for p in newly if p not in added.get(region, [])],
            ]
        except ImageforgeError as exc:
            outcome.error = str(exc)
        except Exception as exc:
            outcome.error = f"{_error_code(exc)}: {exc}"
        outcomes.append(outcome)
    record.published = {**record.published, "aws_added": added}
    return outcomes


def _unpublish(project: Project, record: BuildRecord, sharing: Any) -> list[Outcome]:
    added: dict[str, list[dict[str, str]]] = record.published.get("aws_added", {})
    outcomes = []
    for region, ami in sorted(_artifact_ids(record).items()):
        outcome = Outcome(where=region, subject=ami)
        try:
            outcome.changes = _AwsSharing(region, ami).unshare(added.get(region, []))
            added = {**added, region: []}
        except Exception as exc:
            outcome.error = f"{_error_code(exc)}: {exc}"
        outcomes.append(outcome)
    record.published = {**record.published, "aws_added": added}
    return outcomes


def _is_published(client: Any, ami: str) -> bool:
    attr = client.describe_image_attribute(ImageId=ami, Attribute="launchPermission")
    return bool(attr.get("LaunchPermissions"))


def _prune(project: Project, flavor: str, keep: int, apply: bool) -> list[Outcome]:
    from imageforge import state

    verified = {
        ami
        for r in state.records(project.root, flavor, "aws")
        if r.verified
        for ami in _artifact_ids(r).values()
    }
    outcomes = []
    for region in _regions(project):
        client = ec2(region)
        images = client.describe_images(
            Owners=["self"], Filters=[{"Name": f"tag:{FLAVOR_TAG}", "Values": [flavor]}]
        )["Images"]
        images.sort(key=lambda i: i["CreationDate"], reverse=True)
        newest_verified = next((i["ImageId"] for i in images if i["ImageId"] in verified), None)
        for image in images[keep:]:
            ami = image["ImageId"]
            outcome = Outcome(where=region, subject=f"{ami} ({image.get('Name', '')})")
            if ami == newest_verified:
                outcome.changes = []
                outcome.error = None
                continue
            if _is_published(client, ami):
                continue
            snapshots = [
                m["Ebs"]["SnapshotId"]
                for m in image.get("BlockDeviceMappings", [])
                if m.get("Ebs", {}).get("SnapshotId")
            ]
            verb = "deleted" if apply else "would delete"
            if apply:
                client.deregister_image(ImageId=ami)
                for sid in snapshots:
                    client.delete_snapshot(SnapshotId=sid)
            outcome.changes = [f"{verb} image and snapshots {', '.join(snapshots) or '(none)'}"]
            outcomes.append(outcome)
    return outcomes


def _sweep(project: Project, apply: bool) -> list[Outcome]:
    outcomes = []
    verb = "removed" if apply else "would remove"
    for region in _regions(project):
        client = ec2(region)
        reservations = client.describe_instances(
            Filters=[
                {"Name": "tag-key", "Values": [BUILD_TAG]},
                {
                    "Name": "instance-state-name",
                    "Values": ["pending", "running", "stopping", "stopped"],
                },
            ]
        )["Reservations"]
        instances = [i for r in reservations for i in r["Instances"]]
        keys = {i["KeyName"] for i in instances if i.get("KeyName", "").startswith("packer_")}
        groups = {
            g["GroupId"]
            for i in instances
            for g in i.get("SecurityGroups", [])
            if g.get("GroupName", "").startswith("packer_")
        }
        volumes = client.describe_volumes(
            Filters=[
                {"Name": "tag-key", "Values": [BUILD_TAG]},
                {"Name": "status", "Values": ["available"]},
            ]
        )["Volumes"]
        for instance in instances:
            outcomes.append(
                Outcome(
                    region,
                    f"instance {instance['InstanceId']} (build {_tag(instance, BUILD_TAG)})",
                    [verb],
                )
            )
        outcomes += [Outcome(region, f"key pair {k}", [verb]) for k in sorted(keys)]
        outcomes += [Outcome(region, f"security group {g}", [verb]) for g in sorted(groups)]
        outcomes += [Outcome(region, f"volume {v['VolumeId']}", [verb]) for v in volumes]
        if apply:
            if instances:
                ids = [i["InstanceId"] for i in instances]
                client.terminate_instances(InstanceIds=ids)
                client.get_waiter("instance_terminated").wait(
                    InstanceIds=ids, WaiterConfig={"Delay": 2, "MaxAttempts": 150}
                )
            for key in keys:
                client.delete_key_pair(KeyName=key)
            for group in groups:
                client.delete_security_group(GroupId=group)
            for volume in volumes:
                client.delete_volume(VolumeId=volume["VolumeId"])
    return outcomes


def _doctor(project: Project, cell: Cell) -> list[str]:
    import boto3
    import botocore.exceptions

    aws = project.images.clouds.aws
    found = []
    session = boto3.session.Session()
    if session.get_credentials() is None:
        raise ImageforgeError(
            "no AWS credentials found",
            hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
        )
    found.append("AWS credentials resolve")
    client = ec2(aws.region)
    try:
        regions = {r["RegionName"] for r in client.describe_regions()["Regions"]}
    except botocore.exceptions.ClientError as exc:
        raise ImageforgeError(f"AWS refused the credentials: {_error_code(exc)}") from None
    for region in _regions(project):
        if region not in regions:
            raise ImageforgeError(
                f"region {region!r} does not exist or is not enabled for this account"
            )
    found.append(f"regions {', '.join(_regions(project))} exist")
    ami = aws.source_ami[cell.os]
    images = client.describe_images(
        Owners=list(ami.owners), Filters=[{"Name": "name", "Values": [ami.name]}]
    )["Images"]
    if not images:
        raise ImageforgeError(
            f"no source AMI named {ami.name!r} owned by {', '.join(ami.owners)} in {aws.region}",
            hint=f"set clouds.aws.source_ami.{cell.os} in images.yml",
        )
    newest = max(images, key=lambda i: i["CreationDate"])
    found.append(f"source AMI {newest['ImageId']} ({newest.get('Name')})")
    return found


CLOUD = AwsCloud()
