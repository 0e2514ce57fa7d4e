"""The AWS verification instance's life cycle and the region copies made after verification,
against moto's EC2 server through boto3.

moto gaps, documented where they matter: it deletes a security group that an instance still
uses (real EC2 answers DependencyViolation until the instance is gone; the retry is tested by
injecting that answer), instances run at once, and AMI copies carry no tags.
"""

from __future__ import annotations

import base64
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest

from imageforge import config
from imageforge.clouds import aws as aws_cloud
from imageforge.clouds import capabilities
from imageforge.clouds.aws import launch as aws_launch
from imageforge.clouds.common import Instance, LaunchRequest
from imageforge.config import matrix
from imageforge.errors import ImageforgeError, Interrupted
from imageforge.process import signals
from imageforge.records.state import BuildRecord
from tests.records import make_record

from ..conftest import write
from .test_aws import make_ami

REGION = "eu-west-1"
BUILD = "20250101-000000-abcdef0"
PUBLIC_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKqNjF1nqUjzNmBNydgxY8UIY3vpXvmpJ9ENtOdZdTcF verify"
)
USER_DATA = "#cloud-config\nusers: [default]\n"
SSH_FROM = "203.0.113.7/32"
VERIFY_NAME = f"imageforge-verify-{BUILD}"


@pytest.fixture
def project(scratch: Path, aws: str) -> config.Project:
    write(
        scratch,
        "clouds:\n  aws:\n    region: eu-west-1\n    copy_regions: [eu-central-1, us-east-1]\n"
        "    instance_type: t3.small\n    tags: {team: hpc}\n"
        "defaults:\n  tags: {project: imageforge}\n"
        "flavors:\n  slurm-node: {}\n",
    )
    return config.load("images.yml")


@pytest.fixture
def cell(project: config.Project) -> matrix.Cell:
    return matrix.find(project, "slurm-node", "aws")


@pytest.fixture
def built(scratch: Path) -> BuildRecord:
    """A build (not verified yet: verification is what launches) of a tagged moto AMI."""
    ami, _ = make_ami(REGION, build="0")
    return make_record(scratch / "artifacts", "slurm-node", "aws", BUILD,
                       artifact_ids={REGION: ami}, status="built")  # fmt: skip


def ec2(region: str = REGION) -> Any:
    return boto3.client("ec2", region_name=region)


def tags(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def instances(*states: str) -> list[dict[str, Any]]:
    found = ec2().describe_instances()["Reservations"]
    every = [i for r in found for i in r["Instances"]]
    return [i for i in every if not states or i["State"]["Name"] in states]


def left_over() -> dict[str, list[str]]:
    """What of ours is still in the account: anything here after teardown is a leak."""
    client = ec2()
    groups = client.describe_security_groups()["SecurityGroups"]
    return {
        "instances": [i["InstanceId"] for i in instances() if i["State"]["Name"] != "terminated"],
        "key pairs": [k["KeyName"] for k in client.describe_key_pairs()["KeyPairs"]],
        "groups": [g["GroupName"] for g in groups if g["GroupName"].startswith("imageforge-")],
    }


NOTHING: dict[str, list[str]] = {"instances": [], "key pairs": [], "groups": []}


def launch(project, cell, record, **overrides: str) -> Any:
    args = {"public_key": PUBLIC_KEY, "user_data": USER_DATA, "ssh_from": SSH_FROM, **overrides}
    return aws_cloud.CLOUD.launch(LaunchRequest(project, cell, record, **args))


def test_aws_can_launch_and_distribute() -> None:
    assert isinstance(aws_cloud.CLOUD, capabilities.Launcher)
    assert isinstance(aws_cloud.CLOUD, capabilities.Distributor)


def test_launch_makes_one_tagged_instance_key_and_group_and_removes_them(
    project, cell, built
) -> None:
    client = ec2()
    with launch(project, cell, built) as instance:
        assert isinstance(instance, Instance) and instance.where == REGION
        [running] = instances("running")
        assert running["InstanceId"] == instance.id
        assert instance.address == running["PublicIpAddress"]
        assert running["ImageId"] == built.artifact_ids[REGION]
        assert running["InstanceType"] == "t3.small"
        assert running["KeyName"] == VERIFY_NAME
        user_data = client.describe_instance_attribute(InstanceId=instance.id, Attribute="userData")
        assert base64.b64decode(user_data["UserData"]["Value"]).decode() == USER_DATA
        [key] = client.describe_key_pairs()["KeyPairs"]
        assert key["KeyName"] == VERIFY_NAME
        [group] = [
            g
            for g in client.describe_security_groups()["SecurityGroups"]
            if g["GroupName"] != "default"
        ]
        assert group["GroupName"] == VERIFY_NAME
        attached = running["SecurityGroups"] or running["NetworkInterfaces"][0]["Groups"]
        assert [g["GroupId"] for g in attached] == [group["GroupId"]]
        [rule] = group["IpPermissions"]
        assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 22, 22)
        assert [r["CidrIp"] for r in rule["IpRanges"]] == [SSH_FROM]
        assert rule.get("Ipv6Ranges", []) == [] and rule.get("UserIdGroupPairs", []) == []
        for resource in (running, key, group):
            assert tags(resource)["imageforge-build-id"] == BUILD
            assert tags(resource)["imageforge-flavor"] == "slurm-node"
            assert tags(resource)["team"] == "hpc"
            assert tags(resource)["project"] == "imageforge"  # images.yml defaults, as elsewhere
        assert tags(running)["Name"] == f"imageforge-verify-slurm-node-{BUILD}"
        # instance metadata (user-data included) only with a token, and not from a container
        metadata = running["MetadataOptions"]
        assert metadata["HttpTokens"] == "required"
        assert metadata["HttpPutResponseHopLimit"] == 1
        assert metadata["HttpEndpoint"] == "enabled"
        assert left_over() != NOTHING
    assert left_over() == NOTHING
    assert [i["State"]["Name"] for i in instances()] == ["terminated"]


def test_an_error_inside_is_not_masked_and_everything_goes(project, cell, built) -> None:
    with pytest.raises(ZeroDivisionError), launch(project, cell, built):
        assert left_over()["instances"]
        raise ZeroDivisionError
    assert left_over() == NOTHING


@pytest.mark.parametrize("stop", [KeyboardInterrupt, lambda: Interrupted("stopped by SIGTERM")])
def test_an_interrupt_inside_removes_everything(project, cell, built, stop: Callable) -> None:
    with pytest.raises((KeyboardInterrupt, Interrupted)), launch(project, cell, built):
        raise stop()
    assert left_over() == NOTHING


def test_ctrl_c_through_imageforges_signal_handling_removes_everything(
    project, cell, built
) -> None:
    stopped = pytest.raises(Interrupted, match="stopped by SIGINT")
    with stopped, signals.handled(), launch(project, cell, built):
        os.kill(os.getpid(), signal.SIGINT)
    assert left_over() == NOTHING


def hooked(
    monkeypatch: pytest.MonkeyPatch, event: str, effect: Callable[[], None], times: int = 1
) -> list[str]:
    """Make launch's EC2 clients call effect (which raises) on an operation's first calls."""
    real, calls = aws_launch.ec2, []

    def client(region: str) -> Any:
        made = real(region)

        def hook(**_: Any) -> None:
            calls.append(event)
            if len(calls) <= times:
                effect()

        made.meta.events.register(event, hook)
        return made

    monkeypatch.setattr(aws_launch, "ec2", client)
    return calls


def refuse(code: str, operation: str) -> Callable[[], None]:
    from botocore.exceptions import ClientError

    def effect() -> None:
        raise ClientError({"Error": {"Code": code, "Message": f"{code} (injected)"}}, operation)

    return effect


def test_ctrl_c_before_run_instances_answers_still_finds_the_instance(
    project, cell, built, monkeypatch
) -> None:
    """The instance exists but its id never reached us: teardown finds it by name and tags."""

    def interrupt() -> None:
        raise KeyboardInterrupt

    hooked(monkeypatch, "after-call.ec2.RunInstances", interrupt)
    with pytest.raises(KeyboardInterrupt), launch(project, cell, built):
        pytest.fail("the with body must not run")
    assert [i["State"]["Name"] for i in instances()] == ["terminated"]
    assert left_over() == NOTHING


def test_a_group_still_in_use_is_retried_until_free(project, cell, built, monkeypatch) -> None:
    monkeypatch.setattr(aws_launch, "GROUP_RETRY_SECONDS", 0.0)
    calls = hooked(
        monkeypatch,
        "before-call.ec2.DeleteSecurityGroup",
        refuse("DependencyViolation", "DeleteSecurityGroup"),
        times=2,
    )
    with launch(project, cell, built):
        pass
    assert len(calls) == 3
    assert left_over() == NOTHING


def test_a_failed_teardown_step_does_not_stop_the_others_nor_mask_the_error(
    project, cell, built, monkeypatch, capsys
) -> None:
    hooked(
        monkeypatch,
        "before-call.ec2.TerminateInstances",
        refuse("UnauthorizedOperation", "TerminateInstances"),
    )
    monkeypatch.setattr(aws_launch, "GROUP_FREE_TIMEOUT_SECONDS", 0.0)
    with pytest.raises(RuntimeError, match="the test failed"), launch(project, cell, built):
        raise RuntimeError("the test failed")
    assert left_over()["key pairs"] == [] and left_over()["groups"] == []
    assert len(left_over()["instances"]) == 1  # the one step that was refused
    err = capsys.readouterr().err
    assert "could not terminate the verification instance" in err
    assert "UnauthorizedOperation" in err and "invoke sweep --cloud aws" in err


def test_a_rerun_removes_what_a_killed_verification_of_the_build_left(project, cell, built) -> None:
    client = ec2()
    client.import_key_pair(KeyName=VERIFY_NAME, PublicKeyMaterial=PUBLIC_KEY.encode(),
        TagSpecifications=[{"ResourceType": "key-pair",
                            "Tags": [{"Key": "imageforge-build-id", "Value": BUILD}]}])  # fmt: skip
    with launch(project, cell, built) as instance:
        assert [k["KeyName"] for k in client.describe_key_pairs()["KeyPairs"]] == [VERIFY_NAME]
        assert instance.id
    assert left_over() == NOTHING


@pytest.mark.parametrize(
    ("ssh_from", "message"),
    [
        ("0.0.0.0/0", "from everyone"),
        ("0.0.0.0/1", "the widest allowed is /16"),
        ("my laptop", "not an IP address or CIDR"),
    ],
)
def test_ssh_from_must_be_one_place(project, cell, built, ssh_from: str, message: str) -> None:
    with (
        pytest.raises(ImageforgeError, match=message),
        launch(project, cell, built, ssh_from=ssh_from),
    ):
        pytest.fail("nothing may be launched")
    assert left_over() == NOTHING


def test_sdk_errors_are_one_line_cloud_errors(project, cell, built, monkeypatch) -> None:
    hooked(monkeypatch, "before-call.ec2.RunInstances",
           refuse("InsufficientInstanceCapacity", "RunInstances"))  # fmt: skip
    with pytest.raises(ImageforgeError) as caught, launch(project, cell, built):
        pytest.fail("nothing was launched")
    message = str(caught.value)
    assert message.startswith("AWS (eu-west-1): launch an instance of ami-")
    assert "InsufficientInstanceCapacity" in message and "\n" not in message
    assert caught.value.exit_code == 2
    assert left_over() == NOTHING


def test_a_build_without_an_ami_in_the_build_region_is_refused(project, cell, scratch) -> None:
    record = make_record(scratch / "artifacts", "slurm-node", "aws", BUILD,
                         artifact_ids={"us-west-2": "ami-12345678"}, status="built")  # fmt: skip
    with pytest.raises(ImageforgeError, match="no AMI in the build region eu-west-1"):
        launch(project, cell, record).__enter__()


def test_ctrl_c_during_teardown_still_removes_the_rest_then_stops(
    project, cell, built, monkeypatch
) -> None:
    def interrupt() -> None:
        raise KeyboardInterrupt

    hooked(monkeypatch, "before-call.ec2.TerminateInstances", interrupt)
    with pytest.raises(KeyboardInterrupt), launch(project, cell, built):
        pass
    assert left_over()["key pairs"] == [] and left_over()["groups"] == []


def test_the_packer_build_instance_admits_ssh_from_this_machine_only(
    project, cell, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source = aws_cloud.CLOUD
    env = source.build_env(project, cell, BUILD, tmp_path, None).env  # type: ignore[arg-type]
    # the stand-in's endpoint is on 127.0.0.1: the route to it starts there
    assert env == {"PKR_VAR_aws_ssh_source_cidrs": '["127.0.0.1/32"]'}
    monkeypatch.setenv("IMAGEFORGE_VERIFY_SSH_FROM", "198.51.100.0/24")
    env = source.build_env(project, cell, BUILD, tmp_path, None).env  # type: ignore[arg-type]
    assert env == {"PKR_VAR_aws_ssh_source_cidrs": '["198.51.100.0/24"]'}
    monkeypatch.setenv("IMAGEFORGE_VERIFY_SSH_FROM", "0.0.0.0/1")
    with pytest.raises(ImageforgeError, match="the widest allowed is /16"):
        source.build_env(project, cell, BUILD, tmp_path, None)  # type: ignore[arg-type]
