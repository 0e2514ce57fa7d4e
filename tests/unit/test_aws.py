"""AWS sharing and housekeeping against moto's EC2 server, through boto3.

moto gaps, documented where they matter: it has no image block public access API (our check
reports "not offered" and goes on), no struct form of createVolumePermission (we use the
GroupNames/UserIds form, which moto implements), and AMI copies do not copy tags.
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from imageforge import config, publish
from imageforge.clouds import aws as aws_cloud
from imageforge.clouds.base import Sharing
from imageforge.errors import ImageforgeError
from imageforge.state import BuildRecord

from .conftest import write

REGIONS = ("eu-west-1", "eu-central-1")
ALL = {"Group": "all"}


def make_ami(
    region: str,
    flavor: str = "slurm-node",
    *,
    encrypted: bool = False,
    tags: bool = True,
    name: str = "img",
) -> tuple[str, str]:
    """A real moto AMI and the snapshot moto made for it; returns (ami, snapshot)."""
    client = boto3.client("ec2", region_name=region)
    ami = client.register_image(Name=f"{name}-{flavor}", RootDeviceName="/dev/sda1")["ImageId"]
    image = client.describe_images(ImageIds=[ami])["Images"][0]
    snapshot = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    if encrypted:
        # moto gap: an AMI's snapshot is always created unencrypted, whatever is asked.
        # The server runs in this process, so mark the snapshot encrypted in its backend.
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.ec2.models import ec2_backends

        ec2_backends[DEFAULT_ACCOUNT_ID][region].snapshots[snapshot].encrypted = True
        assert client.describe_snapshots(SnapshotIds=[snapshot])["Snapshots"][0]["Encrypted"]
    if tags:
        client.create_tags(Resources=[ami], Tags=[{"Key": "imageforge-flavor", "Value": flavor}])
    return ami, snapshot


def make_record(
    tmp_path: Path, amis: dict[str, str], *, verified: bool = True, build_id: str = "b1"
) -> BuildRecord:
    directory = tmp_path / "artifacts" / "slurm-node" / build_id
    directory.mkdir(parents=True)
    artifact = ",".join(f"{r}:{a}" for r, a in amis.items())
    (directory / "manifest.json").write_text(
        json.dumps(
            {
                "builds": [
                    {"name": "slurm-node", "builder_type": "amazon-ebs", "artifact_id": artifact}
                ]
            }
        )
    )
    record = BuildRecord(
        id=build_id,
        flavor="slurm-node",
        cloud="aws",
        verified=verified,
        status="verified" if verified else "failed",
        verification={
            "failures": [] if verified else ["test_common.py::test_no_apt_lists_or_caches"]
        },
    )
    record.bind(directory).save()
    return record


@pytest.fixture
def project(scratch: Path, aws: str) -> config.Project:
    write(
        scratch,
        "clouds:\n  aws:\n    region: eu-west-1\n    copy_regions: [eu-central-1]\n"
        "flavors:\n  slurm-node: {}\n",
    )
    return config.load("images.yml")


def launch(region: str, ami: str) -> list[dict]:
    return boto3.client("ec2", region_name=region).describe_image_attribute(
        ImageId=ami, Attribute="launchPermission"
    )["LaunchPermissions"]


def volume_perms(region: str, snapshot: str) -> list[dict]:
    return boto3.client("ec2", region_name=region).describe_snapshot_attribute(
        SnapshotId=snapshot, Attribute="createVolumePermission"
    )["CreateVolumePermissions"]


def test_publish_public_sets_launch_and_volume_permissions(project, scratch: Path) -> None:
    made = {r: make_ami(r) for r in REGIONS}
    record = make_record(scratch, {r: a for r, (a, _) in made.items()})
    outcomes = publish.publish(project, record, Sharing())
    assert [o.where for o in outcomes] == sorted(REGIONS)
    assert all(o.changed and not o.error for o in outcomes)
    for region, (ami, snapshot) in made.items():
        assert launch(region, ami) == [ALL]
        assert volume_perms(region, snapshot) == [ALL]
    again = publish.publish(project, record, Sharing())
    assert [o.changes for o in again] == [[], []]


def test_revoke_removes_exactly_what_publish_added(project, scratch: Path) -> None:
    ami, snapshot = make_ami("eu-west-1")
    client = boto3.client("ec2", region_name="eu-west-1")
    client.modify_image_attribute(
        ImageId=ami, LaunchPermission={"Add": [{"UserId": "111122223333"}]}
    )
    record = make_record(scratch, {"eu-west-1": ami})
    publish.publish(project, record, Sharing())
    assert {"Group": "all"} in launch("eu-west-1", ami)
    publish.publish(project, record, Sharing(), revoke=True)
    assert launch("eu-west-1", ami) == [{"UserId": "111122223333"}]
    assert volume_perms("eu-west-1", snapshot) == []


def test_share_with_named_accounts(project, scratch: Path) -> None:
    ami, snapshot = make_ami("eu-west-1")
    record = make_record(scratch, {"eu-west-1": ami})
    publish.publish(project, record, Sharing(public=False, accounts=("444455556666",)))
    assert launch("eu-west-1", ami) == [{"UserId": "444455556666"}]
    assert volume_perms("eu-west-1", snapshot) == [{"UserId": "444455556666"}]


def test_encrypted_snapshot_is_refused_for_public_sharing(project, scratch: Path) -> None:
    ami, _ = make_ami("eu-west-1", encrypted=True)
    record = make_record(scratch, {"eu-west-1": ami})
    with pytest.raises(ImageforgeError, match="publish incomplete in eu-west-1"):
        publish.publish(project, record, Sharing())
    saved = BuildRecord.load(record.directory).published["outcomes"][0]
    assert "is encrypted" in saved["error"]
    assert launch("eu-west-1", ami) == []


def test_unverified_build_is_refused_with_failing_checks(project, scratch: Path) -> None:
    ami, _ = make_ami("eu-west-1")
    record = make_record(scratch, {"eu-west-1": ami}, verified=False)
    with pytest.raises(
        ImageforgeError, match=r"not verified: these checks failed: test_common.py::test_no_apt"
    ):
        publish.publish(project, record, Sharing())
    assert launch("eu-west-1", ami) == []


def test_partial_failure_is_per_region_and_rerun_completes_it(project, scratch: Path) -> None:
    good, _ = make_ami("eu-west-1")
    record = make_record(scratch, {"eu-west-1": good, "eu-central-1": "ami-12345678"})
    with pytest.raises(ImageforgeError, match="publish incomplete in eu-central-1"):
        publish.publish(project, record, Sharing())
    assert launch("eu-west-1", good) == [ALL]
    # The copy shows up in the second region (as a late ami_regions copy would); rerun.
    late, _ = make_ami("eu-central-1")
    manifest = record.directory / "manifest.json"
    manifest.write_text(manifest.read_text().replace("ami-12345678", late))
    outcomes = publish.publish(project, BuildRecord.load(record.directory), Sharing())
    by_region = {o.where: o for o in outcomes}
    assert by_region["eu-west-1"].changes == []
    assert by_region["eu-central-1"].changed
    assert launch("eu-central-1", late) == [ALL]


def test_block_public_access_state_gap_in_moto(project) -> None:
    """moto has no GetImageBlockPublicAccessState; the check says so instead of failing."""
    ami, _ = make_ami("eu-west-1")
    assert aws_cloud._AwsSharing("eu-west-1", ami).block_public_access() is None


def test_prune_keeps_newest_published_verified_and_foreign(project, scratch: Path) -> None:
    region = "eu-west-1"
    amis = [make_ami(region, name=f"img-{i}") for i in range(6)]
    foreign, _ = make_ami(region, tags=False, name="not-ours")
    published, verified = amis[0][0], amis[1][0]
    boto3.client("ec2", region_name=region).modify_image_attribute(
        ImageId=published, LaunchPermission={"Add": [ALL]}
    )
    make_record(scratch, {region: verified}, build_id="verified-build")
    dry = aws_cloud.CLOUD.prune(project, "slurm-node", 2, apply=False)
    images = {
        i["ImageId"]
        for i in boto3.client("ec2", region_name=region).describe_images(Owners=["self"])["Images"]
    }
    assert len(images) == 7
    # moto orders equal creation dates arbitrarily: assert on the set of candidates.
    candidates = {o.subject.split()[0] for o in dry}
    assert published not in candidates and verified not in candidates and foreign not in candidates
    assert all(o.changes[0].startswith("would delete") for o in dry)
    done = aws_cloud.CLOUD.prune(project, "slurm-node", 2, apply=True)
    assert {o.subject.split()[0] for o in done} == candidates
    left = {
        i["ImageId"]
        for i in boto3.client("ec2", region_name=region).describe_images(Owners=["self"])["Images"]
    }
    assert left == images - candidates
    assert {published, verified, foreign} <= left
    snapshots = {
        s["SnapshotId"]
        for s in boto3.client("ec2", region_name=region).describe_snapshots(OwnerIds=["self"])[
            "Snapshots"
        ]
    }
    deleted_snaps = {snap for ami, snap in amis if ami in candidates}
    assert not (deleted_snaps & snapshots)


def test_sweep_finds_only_tagged_leftovers(project) -> None:
    client = boto3.client("ec2", region_name="eu-west-1")
    ami, _ = make_ami("eu-west-1")
    client.create_key_pair(KeyName="packer_6543")
    group = client.create_security_group(GroupName="packer_6543", Description="packer")["GroupId"]
    tags = [{"ResourceType": "instance", "Tags": [{"Key": "imageforge-build-id", "Value": "b9"}]}]
    ours = client.run_instances(
        ImageId=ami,
        MinCount=1,
        MaxCount=1,
        KeyName="packer_6543",
        SecurityGroupIds=[group],
        TagSpecifications=tags,
    )["Instances"][0]["InstanceId"]
    other = client.run_instances(ImageId=ami, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    dry = aws_cloud.CLOUD.sweep(project, apply=False)
    subjects = [o.subject for o in dry]
    assert f"instance {ours} (build b9)" in subjects
    assert "key pair packer_6543" in subjects and f"security group {group}" in subjects
    assert not any(other in s for s in subjects)
    aws_cloud.CLOUD.sweep(project, apply=True)
    states = {
        i["InstanceId"]: i["State"]["Name"]
        for r in client.describe_instances()["Reservations"]
        for i in r["Instances"]
    }
    assert states[ours] == "terminated" and states[other] == "running"
    assert (
        client.describe_key_pairs(Filters=[{"Name": "key-name", "Values": ["packer_6543"]}])[
            "KeyPairs"
        ]
        == []
    )


def test_doctor_names_what_is_missing(project, monkeypatch: pytest.MonkeyPatch) -> None:
    from imageforge import matrix

    cell = matrix.find(project, "slurm-node", "aws")
    with pytest.raises(
        ImageforgeError, match="no source AMI named 'ubuntu/images/hvm-ssd-gp3/ubuntu-noble"
    ):
        aws_cloud.CLOUD.doctor(project, cell)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ImageforgeError, match="no AWS credentials found"):
        aws_cloud.CLOUD.doctor(project, cell)
