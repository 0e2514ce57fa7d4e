"""AWS sharing and housekeeping against moto's EC2 server, through boto3.

moto gaps, documented where they matter: it has no image block public access API (our check
reports "not offered" and goes on), no struct form of createVolumePermission (we use the
GroupNames/UserIds form, which moto implements), and AMI copies do not copy tags.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import boto3
import pytest

from imageforge import config
from imageforge.clouds import aws as aws_cloud
from imageforge.clouds.aws.sharing import AmiSharing
from imageforge.clouds.common import Sharing
from imageforge.clouds.housekeeping import KEEP_KEY
from imageforge.errors import ImageforgeError
from imageforge.records import provenance, state
from imageforge.records.state import BuildRecord
from imageforge.stages import publish

from ..conftest import write
from .records import build_id
from .records import make_record as record_of

REGIONS = ("eu-west-1", "eu-central-1")
ALL = {"Group": "all"}


def make_ami(
    region: str,
    flavor: str = "slurm-node",
    *,
    encrypted: bool = False,
    tags: bool = True,
    name: str = "",
    build: str = "b1",
) -> tuple[str, str]:
    """A real moto AMI and the snapshot moto made for it; returns (ami, snapshot). With tags,
    it carries what the rendered template tags an AMI with (flavor and build id)."""
    client = boto3.client("ec2", region_name=region)
    name = name or f"imageforge-{flavor}-{build_id(build)}"
    ami = client.register_image(Name=name, RootDeviceName="/dev/sda1")["ImageId"]
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
        ours = {"imageforge-flavor": flavor, "imageforge-build-id": build_id(build)}
        client.create_tags(Resources=[ami], Tags=[{"Key": k, "Value": v} for k, v in ours.items()])
    return ami, snapshot


def make_record(
    tmp_path: Path, amis: dict[str, str], *, verified: bool = True, build: str = "b1"
) -> BuildRecord:
    """A build record with the AMI ids the build recorded."""
    return record_of(
        tmp_path, "slurm-node", "aws", build_id(build), artifact_ids=amis, verified=verified,
        failures=("test_common.py::test_no_apt_lists_or_caches",),
    )  # fmt: skip


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


def fresh(record: BuildRecord) -> BuildRecord:
    return state.load(record.directory)


def test_publish_public_sets_launch_permission_only(project, scratch: Path) -> None:
    made = {r: make_ami(r) for r in REGIONS}
    record = make_record(scratch, {r: a for r, (a, _) in made.items()})
    outcomes = publish.publish(project, record, Sharing(public=True))
    assert [o.where for o in outcomes] == sorted(REGIONS)
    assert all(o.changed and not o.error for o in outcomes)
    for region, (ami, snapshot) in made.items():
        assert launch(region, ami) == [ALL]
        assert volume_perms(region, snapshot) == []  # a public AMI does not need them
    assert fresh(record).added("aws") == {r: [ALL] for r in REGIONS}
    again = publish.publish(project, fresh(record), Sharing(public=True))
    assert [o.changes for o in again] == [[], []]


def test_every_published_ami_requires_imdsv2(
    project, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto accepts ImdsSupport but does not keep it: the requests are checked as sent
    (botocore validates them against EC2's model first)."""
    from imageforge.clouds.aws import sharing as aws_sharing

    sent: list[tuple[str, dict]] = []
    real = aws_sharing.ec2

    def client(region: str):
        made = real(region)

        def record(params: dict, **_: object) -> None:
            if "ImdsSupport" in params:
                sent.append((region, params))

        made.meta.events.register("provide-client-params.ec2.ModifyImageAttribute", record)
        return made

    monkeypatch.setattr(aws_sharing, "ec2", client)
    made = {r: make_ami(r) for r in REGIONS}
    record = make_record(scratch, {r: a for r, (a, _) in made.items()})
    publish.publish(project, record, Sharing(accounts=("444455556666",)))
    assert sorted(sent) == sorted(
        (r, {"ImageId": ami, "ImdsSupport": {"Value": "v2.0"}}) for r, (ami, _) in made.items()
    )


def test_snapshot_permissions_only_when_asked_and_revoked_exactly(project, scratch: Path) -> None:
    ami, snapshot = make_ami("eu-west-1")
    client = boto3.client("ec2", region_name="eu-west-1")
    # someone else's grant on the snapshot, which revoke must leave alone
    client.modify_snapshot_attribute(
        SnapshotId=snapshot,
        Attribute="createVolumePermission",
        OperationType="add",
        UserIds=["111122223333"],
    )
    record = make_record(scratch, {"eu-west-1": ami})
    asked = Sharing(accounts=("444455556666", "111122223333"), snapshots=True)
    publish.publish(project, record, asked)
    assert sorted(p["UserId"] for p in volume_perms("eu-west-1", snapshot)) == [
        "111122223333",
        "444455556666",
    ]
    added = fresh(record).added("aws")["eu-west-1"]
    assert {"Snapshot": snapshot, "UserId": "444455556666"} in added
    assert {"Snapshot": snapshot, "UserId": "111122223333"} not in added
    publish.publish(project, fresh(record), asked, revoke=True)
    assert volume_perms("eu-west-1", snapshot) == [{"UserId": "111122223333"}]
    assert launch("eu-west-1", ami) == []


def test_revoke_removes_exactly_what_publish_added(project, scratch: Path) -> None:
    ami, snapshot = make_ami("eu-west-1")
    client = boto3.client("ec2", region_name="eu-west-1")
    client.modify_image_attribute(
        ImageId=ami, LaunchPermission={"Add": [{"UserId": "111122223333"}]}
    )
    record = make_record(scratch, {"eu-west-1": ami})
    publish.publish(project, record, Sharing(public=True))
    assert {"Group": "all"} in launch("eu-west-1", ami)
    publish.publish(project, fresh(record), Sharing(public=True), revoke=True)
    assert launch("eu-west-1", ami) == [{"UserId": "111122223333"}]
    assert volume_perms("eu-west-1", snapshot) == []
    assert fresh(record).added("aws") == {}


def test_sharer_returns_what_it_added_and_never_edits_the_record(project, scratch: Path) -> None:
    ami, _ = make_ami("eu-west-1")
    record = make_record(scratch, {"eu-west-1": ami})
    before = (record.directory / "build.json").read_bytes()
    published = aws_cloud.CLOUD.publish(
        project, record, Sharing(public=False, accounts=("444455556666",))
    )
    assert published.added == {"eu-west-1": [{"UserId": "444455556666"}]}
    assert (record.directory / "build.json").read_bytes() == before
    assert record.added("aws") == {}


def test_share_with_named_accounts(project, scratch: Path) -> None:
    ami, snapshot = make_ami("eu-west-1")
    record = make_record(scratch, {"eu-west-1": ami})
    publish.publish(project, record, Sharing(public=False, accounts=("444455556666",)))
    assert launch("eu-west-1", ami) == [{"UserId": "444455556666"}]
    assert volume_perms("eu-west-1", snapshot) == []


def encrypt(region: str, snapshot: str, encrypted: bool = True) -> None:
    """moto gap: an AMI's snapshot is always unencrypted; the server runs in this process."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    ec2_backends[DEFAULT_ACCOUNT_ID][region].snapshots[snapshot].encrypted = encrypted


def test_encrypted_snapshot_is_refused_for_public_sharing(project, scratch: Path) -> None:
    ami, _ = make_ami("eu-west-1", encrypted=True)
    record = make_record(scratch, {"eu-west-1": ami})
    with pytest.raises(ImageforgeError, match="publish incomplete in eu-west-1"):
        publish.publish(project, record, Sharing(public=True))
    saved = fresh(record).published["aws"].outcomes[0]
    assert "is encrypted" in saved["error"]
    assert launch("eu-west-1", ami) == []


def test_unverified_build_is_refused_with_failing_checks(project, scratch: Path) -> None:
    ami, _ = make_ami("eu-west-1")
    record = make_record(scratch, {"eu-west-1": ami}, verified=False)
    with pytest.raises(
        ImageforgeError, match=r"not verified: these checks failed: test_common.py::test_no_apt"
    ):
        publish.publish(project, record, Sharing(public=True))
    assert launch("eu-west-1", ami) == []


def test_partial_failure_is_per_region_and_rerun_completes_it(project, scratch: Path) -> None:
    good, _ = make_ami("eu-west-1")
    late, snapshot = make_ami("eu-central-1", encrypted=True)
    record = make_record(scratch, {"eu-west-1": good, "eu-central-1": late})
    with pytest.raises(ImageforgeError, match="publish incomplete in eu-central-1"):
        publish.publish(project, record, Sharing(public=True))
    assert launch("eu-west-1", good) == [ALL] and launch("eu-central-1", late) == []
    assert fresh(record).added("aws") == {"eu-west-1": [ALL]}
    encrypt("eu-central-1", snapshot, False)  # the cause is fixed; rerun
    outcomes = publish.publish(project, fresh(record), Sharing(public=True))
    by_region = {o.where: o for o in outcomes}
    assert by_region["eu-west-1"].changes == []
    assert by_region["eu-central-1"].changed
    assert launch("eu-central-1", late) == [ALL]
    assert fresh(record).added("aws") == {"eu-west-1": [ALL], "eu-central-1": [ALL]}


def test_block_public_access_state_gap_in_moto(project) -> None:
    """moto has no GetImageBlockPublicAccessState; the check says so instead of failing."""
    ami, _ = make_ami("eu-west-1")
    assert AmiSharing("eu-west-1", ami).block_public_access() is None


# --- prune -------------------------------------------------------------------------------------


def images(region: str = "eu-west-1") -> set[str]:
    client = boto3.client("ec2", region_name=region)
    return {i["ImageId"] for i in client.describe_images(Owners=["self"])["Images"]}


def test_prune_keeps_newest_published_verified_and_foreign(project, scratch: Path) -> None:
    region = "eu-west-1"
    amis = [make_ami(region, build=str(i)) for i in range(6)]
    untagged, _ = make_ami(region, tags=False, name="imageforge-slurm-node-x")
    published, verified = amis[0][0], amis[1][0]
    boto3.client("ec2", region_name=region).modify_image_attribute(
        ImageId=published, LaunchPermission={"Add": [ALL]}
    )
    make_record(scratch, {region: verified}, build="1")
    everything = images()
    assert len(everything) == 7
    dry = aws_cloud.CLOUD.prune(project, "slurm-node", 2, apply=False)
    # Build ids sort the images of equal (moto) creation dates: 5 and 4 are the newest two.
    doomed = {amis[i][0] for i in (2, 3)}
    assert {o.subject.split()[1] for o in dry if o.changes} == doomed
    assert all(o.changes == ["would delete"] for o in dry if o.changes)
    kept = {o.subject.split()[1]: o.subject.split("kept: ")[1] for o in dry if not o.changes}
    assert kept == {published: "published", verified: "newest verified build"}
    assert images() == everything
    done = aws_cloud.CLOUD.prune(project, "slurm-node", 2, apply=True)
    assert {o.subject.split()[1] for o in done if o.changes == ["deleted"]} == doomed
    assert images() == everything - doomed
    assert untagged in images()
    snapshots = {
        s["SnapshotId"]
        for s in boto3.client("ec2", region_name=region).describe_snapshots(OwnerIds=["self"])[
            "Snapshots"
        ]
    }
    assert {snap for ami, snap in amis if ami in doomed}.isdisjoint(snapshots)
    assert {snap for ami, snap in amis if ami not in doomed} <= snapshots


def test_prune_never_touches_an_image_without_our_prefix_or_build_id(
    project, scratch: Path
) -> None:
    """Another pipeline tags its AMIs with the same flavor key: not ours, never deleted."""
    client = boto3.client("ec2", region_name="eu-west-1")
    foreign = []
    for name, tags in [
        ("other-slurm-node-1", {"imageforge-flavor": "slurm-node", "imageforge-build-id": "x"}),
        ("imageforge-slurm-node-2", {"imageforge-flavor": "slurm-node"}),
    ]:
        ami = client.register_image(Name=name, RootDeviceName="/dev/sda1")["ImageId"]
        client.create_tags(Resources=[ami], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
        foreign.append(ami)
    ours = [make_ami("eu-west-1", build=str(i))[0] for i in range(2)]
    done = aws_cloud.CLOUD.prune(project, "slurm-node", 1, apply=True)
    assert [(o.subject.split()[1], o.changes) for o in done] == [(ours[0], ["deleted"])]
    assert images() == {*foreign, ours[1]}


@pytest.mark.parametrize("keep", [0, -1, "0", "two", "1.5", ""])
def test_prune_refuses_a_keep_below_one_or_not_a_number(project, keep) -> None:
    ami, _ = make_ami("eu-west-1")
    with pytest.raises(ImageforgeError, match=r"^--keep: ") as caught:
        aws_cloud.CLOUD.prune(project, "slurm-node", keep, apply=True)
    assert caught.value.exit_code == 2 and "\n" not in str(caught.value)
    assert images() == {ami}


def test_newest_verified_comes_from_records_not_from_a_label(project, scratch: Path) -> None:
    """A user tag `imageforge-verified` (or any other) does not make an image kept."""
    client = boto3.client("ec2", region_name="eu-west-1")
    amis = [make_ami("eu-west-1", build=str(i))[0] for i in range(3)]
    client.create_tags(Resources=[amis[0]], Tags=[{"Key": "imageforge-verified", "Value": "true"}])
    make_record(scratch, {"eu-west-1": amis[1]}, build="1", verified=False)
    done = aws_cloud.CLOUD.prune(project, "slurm-node", 1, apply=True)
    assert {o.subject.split()[1] for o in done if o.changes} == {amis[0], amis[1]}


# --- sweep -------------------------------------------------------------------------------------

OLD = dt.datetime.now(dt.UTC) - dt.timedelta(hours=5)


def age(region: str, **resources: str) -> None:
    """Make moto's instances (and key pairs) five hours old."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    backend = ec2_backends[DEFAULT_ACCOUNT_ID][region]
    for instance in resources.get("instances", "").split():
        found = backend.get_instance(instance)
        found._state_transition_reason = ""
        found.launch_time = OLD.replace(tzinfo=None)
    for key in resources.get("keys", "").split():
        backend.key_pairs[key].create_time = OLD.replace(tzinfo=None)


def tagged(build: str, kind: str, name: str = "Packer Builder") -> list[dict]:
    tags = [{"Key": "imageforge-build-id", "Value": build}, {"Key": "Name", "Value": name}]
    return [{"ResourceType": kind, "Tags": tags}]


def test_sweep_finds_only_our_leftovers_and_spares_running_builds(project, scratch) -> None:
    client = boto3.client("ec2", region_name="eu-west-1")
    ami, _ = make_ami("eu-west-1")
    client.create_key_pair(KeyName="packer_6543")
    group = client.create_security_group(GroupName="packer_6543", Description="packer")["GroupId"]

    def run(build: str, **extra) -> str:
        return client.run_instances(
            ImageId=ami, MinCount=1, MaxCount=1, TagSpecifications=tagged(build, "instance"),
            **extra,
        )["Instances"][0]["InstanceId"]  # fmt: skip

    dead = run("b9", KeyName="packer_6543", SecurityGroupIds=[group])
    young = run("b8")
    running = run(build_id("b7"))
    record_of(scratch, "slurm-node", "aws", build_id("b7"), status="building")
    other = client.run_instances(ImageId=ami, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    age("eu-west-1", instances=f"{dead} {running}")
    dry = aws_cloud.CLOUD.sweep(project, apply=False, min_age_minutes=120)
    subjects = {o.subject: o.changes for o in dry}
    assert subjects[f"instance {dead} (build b9)"] == ["would remove"]
    assert subjects["key pair packer_6543"] == ["would remove"]
    assert subjects[f"security group {group}"] == ["would remove"]
    kept = {o.subject.split(" (")[0]: o.subject.split("kept: ")[1] for o in dry if not o.changes}
    assert kept[f"instance {young}"].startswith("only 0 minutes old")
    assert kept[f"instance {running}"] == f"build {build_id('b7')} is still building here"
    assert len(dry) == 5
    assert not any(other in s for s in subjects)
    aws_cloud.CLOUD.sweep(project, apply=True, min_age_minutes=120)
    states = {
        i["InstanceId"]: i["State"]["Name"]
        for r in client.describe_instances()["Reservations"]
        for i in r["Instances"]
    }
    assert states == {dead: "terminated", young: "running", running: "running", other: "running"}
    assert (
        client.describe_key_pairs(Filters=[{"Name": "key-name", "Values": ["packer_6543"]}])[
            "KeyPairs"
        ]
        == []
    )


def test_sweep_finds_an_old_tagged_packer_key_pair_whose_instance_is_gone(project) -> None:
    client = boto3.client("ec2", region_name="eu-west-1")
    for name in ("packer_aaaa", "packer_bbbb", "packer_cccc"):
        tags = tagged("b5", "key-pair", name) if name != "packer_cccc" else []
        client.create_key_pair(KeyName=name, TagSpecifications=tags)
    age("eu-west-1", keys="packer_aaaa packer_cccc")
    dry = aws_cloud.CLOUD.sweep(project, apply=False, min_age_minutes=60)
    found = {o.subject.split(",")[0]: o.changes for o in dry}
    assert found["key pair packer_aaaa"] == ["would remove"]
    assert found["key pair packer_bbbb"] == []  # too young: it may be a running build's
    assert "key pair packer_cccc" not in found  # not tagged as ours
    aws_cloud.CLOUD.sweep(project, apply=True, min_age_minutes=60)
    names = {k["KeyName"] for k in client.describe_key_pairs()["KeyPairs"]}
    assert names == {"packer_bbbb", "packer_cccc"}


# --- preflight, errors, laziness ---------------------------------------------------------------


def test_doctor_names_what_is_missing(project, monkeypatch: pytest.MonkeyPatch) -> None:
    from imageforge.config import matrix

    cell = matrix.find(project, "slurm-node", "aws")
    with pytest.raises(
        ImageforgeError, match=r"no source AMI named 'debian-13-amd64-\*' owned by 136693071363"
    ):
        aws_cloud.CLOUD.doctor(project, cell)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ImageforgeError, match="no AWS credentials found"):
        aws_cloud.CLOUD.doctor(project, cell)


def test_an_unreachable_endpoint_is_one_line_with_exit_code_2(project, monkeypatch) -> None:
    import socket

    from imageforge.config import matrix

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(ImageforgeError) as caught:
        aws_cloud.CLOUD.doctor(project, matrix.find(project, "slurm-node", "aws"))
    message = str(caught.value)
    assert message.startswith(
        f"AWS (eu-west-1): list regions at http://127.0.0.1:{port}: no answer"
    )
    assert "\n" not in message and caught.value.exit_code == 2


def test_sweep_keeps_a_kept_build_instance_until_its_expiry_and_not_after(project) -> None:
    """--on-error=keep tags the build instance with its expiry: that, not --min-age, decides."""
    client = boto3.client("ec2", region_name="eu-west-1")
    ami, _ = make_ami("eu-west-1")
    # Packer's key pair, tagged with the kept build and old: only its instance keeps it.
    client.create_key_pair(KeyName="packer_7777", TagSpecifications=tagged("b1", "key-pair"))

    def run(build: str, until: int, **extra) -> str:
        spec = tagged(build, "instance")
        spec[0]["Tags"].append({"Key": KEEP_KEY, "Value": str(until)})
        return client.run_instances(
            ImageId=ami, MinCount=1, MaxCount=1, TagSpecifications=spec, **extra
        )["Instances"][0]["InstanceId"]

    now = int(time.time())
    waiting = run("b1", now + 3600, KeyName="packer_7777")
    expired = run("b2", now - 60)
    age("eu-west-1", instances=waiting, keys="packer_7777")  # old, yet kept: not expired
    dry = aws_cloud.CLOUD.sweep(project, apply=False, min_age_minutes=120)
    subjects = {o.subject.split(", kept")[0]: (o.changes, o.subject) for o in dry}
    changes, subject = subjects[f"instance {waiting} (build b1)"]
    assert changes == [] and "kept by --on-error=keep until" in subject
    assert subjects[f"instance {expired} (build b2)"][0] == ["would remove"]  # young, expired
    assert "key pair packer_7777" not in subjects  # the kept instance's: the user logs in with it
    aws_cloud.CLOUD.sweep(project, apply=True, min_age_minutes=120)
    states = {
        i["InstanceId"]: i["State"]["Name"]
        for r in client.describe_instances()["Reservations"]
        for i in r["Instances"]
    }
    assert states == {waiting: "running", expired: "terminated"}


def test_publish_tags_every_ami_with_the_provenance_digest(project, scratch: Path) -> None:
    made = {r: make_ami(r) for r in REGIONS}
    record = make_record(scratch, {r: a for r, (a, _) in made.items()})
    (record.directory / provenance.FILE).write_text('{"payloadType": "stand-in"}\n')
    digest = state.sha256(record.directory / provenance.FILE)
    outcomes = publish.publish(project, record, Sharing(public=True))
    assert [o.changes for o in outcomes][-2:] == [[f"tagged {provenance.TAG}={digest}"]] * 2
    for region, (ami, _) in made.items():
        found = boto3.client("ec2", region_name=region).describe_tags(
            Filters=[{"Name": "resource-id", "Values": [ami]}]
        )["Tags"]
        tags = {t["Key"]: t["Value"] for t in found}
        assert tags[provenance.TAG] == digest and tags["imageforge-flavor"] == "slurm-node"
    again = publish.publish(project, fresh(record), Sharing(public=True))
    assert all(o.changes == [] for o in again)
