"""`invoke build --image slurm-node --cloud aws`, then bare `invoke publish`, against moto's EC2
server: the build is verified in a verification instance, and the policy shares what verified.

moto runs no VMs, so the verification instance's SSH is answered by a **stand-in**: a local QEMU
VM booted from the local slurm-node build, given the instance's own user-data (the
verification key, as cloud-init gets it on EC2) and its instance id. imageforge reaches it
through $IMAGEFORGE_VERIFY_SSH_VIA, the setting for reaching instances through a forwarded port.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
import yaml

from imageforge.process import qcow2, qemu

from .conftest import copy_project, invoke, processes_mentioning

pytestmark = pytest.mark.integration

REGIONS = ("eu-west-1", "eu-central-1")
IMAGES = """
clouds:
  aws:
    region: eu-west-1
    copy_regions: [eu-central-1]
    communicator: none
    source_ami:   # moto has no Debian AMI: the default OS (debian-13) maps to moto's own
      debian-13:
        owners: ["099720109477"]
        name: "ubuntu/images/hvm-ssd/ubuntu-*-amd64-server-*"
publish:
  aws: {public: true}
flavors:
  slurm-node:
    user: slurm-admin
    tests: tests/infra/test_slurm_node.py   # the flavor's own suite, as in the shipped file
matrix:
  clouds: [aws]
"""


def as_debian_ami(user_data: str) -> str:
    """The instance's user-data for the stand-in, which is the local build: its default user is
    `debian`, where Debian's AMIs log in as `admin`. The same key logs in as admin too, which
    has the default user's sudo."""
    keys = yaml.safe_load(user_data)["ssh_authorized_keys"]
    admin = {
        "name": "admin",
        "groups": ["sudo"],
        "sudo": "ALL=(ALL) NOPASSWD:ALL",
        "shell": "/bin/bash",
        "ssh_authorized_keys": keys,
    }
    return user_data + yaml.safe_dump({"users": ["default", admin]}, sort_keys=False)


class StandIn:
    """Boots the local build when a verification instance appears in moto, and keeps it up."""

    def __init__(self, image: Path, scratch: Path, ssh_port: int) -> None:
        self.image, self.scratch, self.ssh_port = image, scratch, ssh_port
        self.stop = threading.Event()
        self.instance_id: str | None = None
        self.user_data = ""
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="stand-in", daemon=True)

    def __enter__(self) -> StandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(120)

    def _run(self) -> None:
        try:
            found = self._wait_for_instance()
            if found is None:
                return
            self.instance_id, self.user_data = found
            seed = qemu.make_seed(
                self.scratch / "seed.iso",
                user_data=as_debian_ami(self.user_data),
                meta_data=f"instance-id: {self.instance_id}\nlocal-hostname: stand-in\n",
            )
            vm = qemu.VirtualMachine(
                disk=qcow2.overlay(self.image, self.scratch / "overlay.qcow2"),
                serial_log=self.scratch / "stand-in-serial.log",
                seed=seed,
                memory_mb=2048,
                restrict_network=True,
                ssh_port=self.ssh_port,
            )
            with vm:
                self.stop.wait()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _wait_for_instance(self) -> tuple[str, str] | None:
        ec2 = boto3.client("ec2", region_name=REGIONS[0])
        while not self.stop.wait(1):
            reservations = ec2.describe_instances(
                Filters=[
                    {"Name": "tag-key", "Values": ["imageforge-build-id"]},
                    {"Name": "instance-state-name", "Values": ["running"]},
                ]
            )["Reservations"]
            for instance in (i for r in reservations for i in r["Instances"]):
                name = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}.get("Name", "")
                if "-verify-" in name:
                    attribute = ec2.describe_instance_attribute(
                        InstanceId=instance["InstanceId"], Attribute="userData"
                    )
                    data = base64.b64decode(attribute["UserData"]["Value"]).decode()
                    return instance["InstanceId"], data
        return None


@pytest.fixture(scope="module")
def aws_env(moto_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    requests.post(f"{moto_server}/moto-api/reset", timeout=10).raise_for_status()
    scratch = tmp_path_factory.mktemp("aws-env")
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGIONS[0],
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_CONFIG_FILE": str(scratch / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(scratch / "no-aws-credentials"),
        "PKR_VAR_aws_endpoint_ec2": moto_server,
        "PKR_VAR_aws_skip_validation": "true",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        yield env


@pytest.fixture(scope="module")
def aws_build(slurm_build, aws_env: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The AWS build, verified on the stand-in; what it printed and what the stand-in saw."""
    local_project, local = slurm_build
    assert local.returncode == 0, local.stderr[-3000:]
    [image] = (local_project / "artifacts" / "slurm-node").glob("*/image/slurm-node.qcow2")
    project = copy_project(tmp_path_factory.mktemp("aws-project"), IMAGES)
    port = qemu.free_port()
    env = {**os.environ, "IMAGEFORGE_VERIFY_SSH_VIA": f"127.0.0.1:{port}"}
    started = time.monotonic()
    with StandIn(image, tmp_path_factory.mktemp("stand-in"), port) as stand_in:
        result = invoke(project, "build", "--image", "slurm-node", "--cloud", "aws", env=env)
    assert stand_in.error is None, stand_in.error
    [path] = (project / "artifacts" / "slurm-node").glob("*/build.json")
    return {
        "project": project,
        "result": result,
        "record": json.loads(path.read_text()),
        "stand_in": stand_in,
        "seconds": time.monotonic() - started,
    }


def project_dir(aws_build: dict) -> Path:
    record = aws_build["record"]
    return aws_build["project"] / "artifacts" / "slurm-node" / record["id"]


def ours(region: str) -> dict[str, list[Any]]:
    """What of this pipeline's is left in a region: live instances, keys, groups."""
    ec2 = boto3.client("ec2", region_name=region)
    instances = [
        i["InstanceId"]
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] not in ("terminated", "shutting-down")
    ]
    keys = [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]]
    groups = [g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]]
    return {
        "instances": instances,
        "keys": [k for k in keys if k.startswith(("imageforge", "packer"))],
        "groups": [g for g in groups if g != "default"],
    }


def test_invoke_build_image_slurm_node_cloud_aws(aws_build: dict) -> None:
    result, record = aws_build["result"], aws_build["record"]
    assert result.returncode == 0, result.stderr[-4000:]
    print(f"\ncloud build + verification on the stand-in: {aws_build['seconds']:.0f}s")
    assert record["status"] == "verified"
    ids = record["artifact_ids"]
    assert set(ids) == {"eu-west-1"}  # Packer copies nothing: copies wait for verification
    assert record["binding"]["image_ids"] == ids
    # The checks ran on the stand-in, which got the instance's user-data and id.
    stand_in = aws_build["stand_in"]
    assert record["verification"]["instance"]["id"] == stand_in.instance_id
    # Both suites ran there: the hygiene suite and the flavor's (slurm-node's) own.
    assert record["verification"]["passed"] >= 15 and record["verification"]["failed"] == 0
    junit = (project_dir(aws_build) / "verify.junit.xml").read_text()
    assert "test_slurm_daemons_run" in junit and "test_no_shell_histories" in junit
    assert "ssh_authorized_keys" in stand_in.user_data
    assert "PRIVATE KEY" not in stand_in.user_data
    # Verified, then copied: the copy exists and carries the build's tags.
    [(region, copy)] = record["copies"].items()
    assert region == "eu-central-1"
    central = boto3.client("ec2", region_name=region).describe_images(ImageIds=[copy])["Images"]
    tags = {t["Key"]: t["Value"] for t in central[0].get("Tags", [])}
    assert tags["imageforge-build-id"] == record["id"]
    # Nothing of the verification is left: instance, key pair, security group.
    for where in REGIONS:
        assert ours(where) == {"instances": [], "keys": [], "groups": []}, where
    assert processes_mentioning(str(aws_build["project"])) == []


def test_invoke_publish(aws_build: dict) -> None:
    project, record = aws_build["project"], aws_build["record"]
    assert aws_build["result"].returncode == 0
    first = invoke(project, "publish")
    assert first.returncode == 0, first.stderr[-4000:]
    assert record["id"] in first.stderr  # the plan names the build it shares
    images = {"eu-west-1": record["artifact_ids"]["eu-west-1"], **record["copies"]}
    for region, image_id in images.items():
        ec2 = boto3.client("ec2", region_name=region)
        launch = ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")
        assert {"Group": "all"} in launch["LaunchPermissions"], region
        [image] = ec2.describe_images(ImageIds=[image_id])["Images"]
        snapshots = [m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"] if "Ebs" in m]
        assert snapshots, region
        for snapshot in snapshots:
            volume = ec2.describe_snapshot_attribute(
                SnapshotId=snapshot, Attribute="createVolumePermission"
            )
            # a public AMI needs no createVolumePermission: the policy does not ask for it
            assert volume["CreateVolumePermissions"] == [], (region, snapshot)
    again = invoke(project, "publish")
    assert again.returncode == 0, again.stderr[-4000:]
    assert "nothing changed" in again.stderr
    published = json.loads(
        (project / "artifacts" / "slurm-node" / record["id"] / "build.json").read_text()
    )["published"]["aws"]
    assert published["status"] == "published" and published["sharing"] == "public"
