"""Region copies of a verified AMI (only of a verified one), publish over the copies, and
sweep of what a killed verification left, against moto's EC2 server.

moto gap: CopyImage copies no tags; distribute tags each copy itself, as it must on EC2 too.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import boto3
import pytest

from imageforge import config
from imageforge.clouds import aws as aws_cloud
from imageforge.clouds.common import LaunchRequest, Sharing
from imageforge.errors import ImageforgeError
from imageforge.records import state
from imageforge.records.state import BuildRecord
from imageforge.stages import publish
from tests.records import make_record

from ..conftest import write
from .test_aws import make_ami
from .test_aws_launch import BUILD, PUBLIC_KEY, VERIFY_NAME

REGION = "eu-west-1"
COPIES = ("eu-central-1", "us-east-1")
ALL = {"Group": "all"}


@pytest.fixture
def project(scratch: Path, aws: str) -> config.Project:
    write(
        scratch,
        "clouds:\n  aws:\n    region: eu-west-1\n"
        f"    copy_regions: [{', '.join(COPIES)}, eu-west-1]\n"
        "flavors:\n  slurm-node: {tags: {team: hpc}}\n",
    )
    return config.load("images.yml")


def record_of(scratch: Path, status: str = "verified") -> BuildRecord:
    ami, _ = make_ami(REGION, build="0")
    client = boto3.client("ec2", region_name=REGION)
    client.create_tags(Resources=[ami], Tags=[{"Key": "team", "Value": "hpc"}])
    return make_record(scratch / "artifacts", "slurm-node", "aws", BUILD,
                       artifact_ids={REGION: ami}, status=status)  # fmt: skip


def images(region: str) -> list[dict[str, Any]]:
    return boto3.client("ec2", region_name=region).describe_images(Owners=["self"])["Images"]


def tags(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


@pytest.mark.parametrize("status", ["built", "failed", "interrupted"])
def test_an_unverified_build_is_never_copied(project, scratch, status: str) -> None:
    record = record_of(scratch, status)
    with pytest.raises(ImageforgeError, match=f"build {BUILD} of slurm-node on aws is not verif"):
        aws_cloud.CLOUD.distribute(project, record)
    assert all(images(r) == [] for r in COPIES)


def test_a_verified_build_whose_ids_changed_is_not_copied(project, scratch) -> None:
    record = record_of(scratch)
    changed = record.model_copy(update={"artifact_ids": {REGION: "ami-0123456789abcdef0"}})
    with pytest.raises(ImageforgeError, match="image ids differ from the ones that were verif"):
        aws_cloud.CLOUD.distribute(project, changed)
    assert all(images(r) == [] for r in COPIES)


def test_copies_go_to_every_copy_region_tagged_and_only_once(project, scratch) -> None:
    record = record_of(scratch)
    source = images(REGION)[0]
    before = (record.directory / "build.json").read_bytes()
    copies = aws_cloud.CLOUD.distribute(project, record)
    assert set(copies) == set(COPIES)  # not the build region, although it is listed
    assert (record.directory / "build.json").read_bytes() == before  # the caller records
    for region, ami in copies.items():
        [copy] = images(region)
        assert copy["ImageId"] == ami and copy["State"] == "available"
        assert copy["Name"] == source["Name"]
        assert tags(copy) == tags(source)
        assert tags(copy)["imageforge-build-id"] == BUILD and tags(copy)["team"] == "hpc"
        snapshots = boto3.client("ec2", region_name=region).describe_snapshots(
            SnapshotIds=[m["Ebs"]["SnapshotId"] for m in copy["BlockDeviceMappings"]]
        )["Snapshots"]
        assert all(tags(s)["imageforge-build-id"] == BUILD for s in snapshots)
    # Again, before the record knew of the copies (a run stopped there), and after.
    assert aws_cloud.CLOUD.distribute(project, record) == copies
    recorded = state.distributed(record, copies)
    assert aws_cloud.CLOUD.distribute(project, recorded) == copies
    assert all(len(images(r)) == 1 for r in COPIES)


def test_no_copy_regions_means_no_copies(scratch, aws) -> None:
    write(scratch, "clouds:\n  aws: {region: eu-west-1}\nflavors:\n  slurm-node: {}\n")
    assert aws_cloud.CLOUD.distribute(config.load("images.yml"), record_of(scratch)) == {}


def test_publish_and_revoke_cover_the_copies_and_their_snapshots(project, scratch) -> None:
    record = record_of(scratch)
    record = state.distributed(record, aws_cloud.CLOUD.distribute(project, record))
    asked = Sharing(public=True, snapshots=True)
    outcomes = publish.publish(project, record, asked)
    assert sorted(o.where for o in outcomes) == sorted([REGION, *COPIES])
    every = {REGION: record.artifact_ids[REGION], **record.copies}
    for region, ami in every.items():
        client = boto3.client("ec2", region_name=region)
        launch = client.describe_image_attribute(ImageId=ami, Attribute="launchPermission")
        assert launch["LaunchPermissions"] == [ALL]
        [image] = client.describe_images(ImageIds=[ami])["Images"]
        snapshot = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        volume = client.describe_snapshot_attribute(
            SnapshotId=snapshot, Attribute="createVolumePermission"
        )
        assert volume["CreateVolumePermissions"] == [ALL]
    publish.publish(project, state.load(record.directory), asked, revoke=True)
    for region, ami in every.items():
        client = boto3.client("ec2", region_name=region)
        launch = client.describe_image_attribute(ImageId=ami, Attribute="launchPermission")
        assert launch["LaunchPermissions"] == []
        [image] = client.describe_images(ImageIds=[ami])["Images"]
        snapshot = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        volume = client.describe_snapshot_attribute(
            SnapshotId=snapshot, Attribute="createVolumePermission"
        )
        assert volume["CreateVolumePermissions"] == []


# --- sweep of a killed verification ------------------------------------------------------------


def test_sweep_finds_the_key_pair_and_group_a_killed_verification_left(project, scratch) -> None:
    """The run died after its instance was terminated: key pair and group remain."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    record = record_of(scratch)  # the build ended here (verified), so its group is stale
    client = boto3.client("ec2", region_name=REGION)
    ours = [{"ResourceType": "key-pair", "Tags": [{"Key": "imageforge-build-id", "Value": BUILD}]}]
    client.import_key_pair(KeyName=VERIFY_NAME, PublicKeyMaterial=PUBLIC_KEY.encode(),
                           TagSpecifications=ours)  # fmt: skip
    group_tags = [{**ours[0], "ResourceType": "security-group"}]
    group = client.create_security_group(
        GroupName=VERIFY_NAME, Description="verify", TagSpecifications=group_tags
    )["GroupId"]
    foreign = client.create_security_group(GroupName="imageforge-verify-x", Description="x")
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=5)
    ec2_backends[DEFAULT_ACCOUNT_ID][REGION].key_pairs[VERIFY_NAME].create_time = old.replace(
        tzinfo=None
    )
    dry = {o.subject: o.changes for o in aws_cloud.CLOUD.sweep(project, apply=False,
                                                               min_age_minutes=120)}  # fmt: skip
    assert dry[f"key pair {VERIFY_NAME}"] == ["would remove"]
    assert dry[f"security group {group}"] == ["would remove"]
    assert f"security group {foreign['GroupId']}" not in dry  # no build id of ours
    aws_cloud.CLOUD.sweep(project, apply=True, min_age_minutes=120)
    assert client.describe_key_pairs()["KeyPairs"] == []
    names = {g["GroupName"] for g in client.describe_security_groups()["SecurityGroups"]}
    assert names == {"default", "imageforge-verify-x"}
    assert record.status == "verified"


def test_sweep_spares_a_verification_that_is_running(project, scratch) -> None:
    from imageforge.config import matrix

    record = record_of(scratch, "built")
    cell = matrix.find(project, "slurm-node", "aws")
    request = LaunchRequest(project, cell, record, PUBLIC_KEY, "", "192.0.2.1")
    with aws_cloud.CLOUD.launch(request) as instance:
        outcomes = aws_cloud.CLOUD.sweep(project, apply=True, min_age_minutes=120)
        assert [o.changes for o in outcomes if o.changes] == []
        kept = [o.subject for o in outcomes]
        assert any(instance.id in s and "kept: only 0 minutes old" in s for s in kept)
        client = boto3.client("ec2", region_name=REGION)
        assert [k["KeyName"] for k in client.describe_key_pairs()["KeyPairs"]] == [VERIFY_NAME]
