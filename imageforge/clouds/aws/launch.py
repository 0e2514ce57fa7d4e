"""An EC2 instance of a build's AMI for verification, torn down on every exit path.

Everything it creates has a name derived from the build id and carries our tags, so teardown
(and a rerun, and `invoke sweep`) finds it by name and tags even when a signal came between an
API call and its answer: the key pair and security group `imageforge-verify-<build id>`, the
instance `<name_prefix>-verify-<flavor>-<build id>`.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

from imageforge import log
from imageforge.clouds.aws.client import IMDS_V2_ONLY, ec2, errors
from imageforge.clouds.common import (
    BUILD_KEY,
    Instance,
    LaunchRequest,
    build_tags,
    launched,
    verify_prefix,
)
from imageforge.clouds.sdkerrors import remove_all, why
from imageforge.errors import ImageforgeError

if TYPE_CHECKING:
    from imageforge.config import Project
    from imageforge.config.matrix import Cell
    from imageforge.records.record import BuildRecord

VERIFY_PREFIX = "imageforge-verify-"
ADDRESS = {
    "public_ip": "PublicIpAddress",
    "private_ip": "PrivateIpAddress",
    "public_dns": "PublicDnsName",
    "private_dns": "PrivateDnsName",
}
NOT_GONE = ["pending", "running", "stopping", "stopped", "shutting-down"]
# How long to wait for an instance to run or go, and for its security group to be free.
WAIT = {"Delay": 5, "MaxAttempts": 120}
GROUP_RETRY_SECONDS = 5.0
GROUP_FREE_TIMEOUT_SECONDS = 300.0


class AwsLauncher:
    def launch(self, request: LaunchRequest) -> contextlib.AbstractContextManager[Instance]:
        return launched(Verification(request.project, request.cell, request.record), request)


def permission(source: ipaddress.IPv4Network | ipaddress.IPv6Network) -> dict[str, Any]:
    """The one ingress rule: tcp/22 from source."""
    rule: dict[str, Any] = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22}
    text = {"Description": "imageforge verification SSH"}
    if source.version == 4:
        rule["IpRanges"] = [{"CidrIp": str(source), **text}]
    else:
        rule["Ipv6Ranges"] = [{"CidrIpv6": str(source), **text}]
    return rule


class Verification:
    """The key pair, security group and instance of one build's verification in one region."""

    def __init__(self, project: Project, cell: Cell, record: BuildRecord) -> None:
        self.settings = project.images.clouds.aws
        self.region, self.record = self.settings.region, record
        self.client = ec2(self.region)
        self.resource_name = VERIFY_PREFIX + record.id
        self.instance_name = f"{verify_prefix(project)}{cell.flavor_name}-{record.id}"
        self.tags = build_tags(project, cell, record, self.settings.tags)

    @property
    def endpoint(self) -> str:
        url: str = self.client.meta.endpoint_url
        return url

    def ami(self) -> str:
        ami = self.record.artifact_ids.get(self.region)
        if not ami:
            have = ", ".join(sorted(self.record.artifact_ids)) or "none"
            raise ImageforgeError(
                f"build {self.record.id} has no AMI in the build region {self.region} "
                f"(it has: {have})",
                hint="rebuild it, or set clouds.aws.region to where it was built",
            )
        return ami

    def tag_spec(self, kind: str, name: str) -> list[dict[str, Any]]:
        pairs = {**self.tags, "Name": name}
        return [{"ResourceType": kind, "Tags": [{"Key": k, "Value": v} for k, v in pairs.items()]}]

    # --- creation ---------------------------------------------------------------------------

    def start(
        self,
        public_key: str,
        user_data: str,
        source: ipaddress.IPv4Network | ipaddress.IPv6Network,
    ) -> Instance:
        ami = self.ami()
        client, name = self.client, self.resource_name
        with errors(client, f"import the verification key pair {name}"):
            client.import_key_pair(
                KeyName=name,
                PublicKeyMaterial=public_key.strip().encode(),
                TagSpecifications=self.tag_spec("key-pair", name),
            )
        vpc = {"VpcId": self.settings.vpc_id} if self.settings.vpc_id else {}
        with errors(client, f"create the security group {name}"):
            group = client.create_security_group(
                GroupName=name,
                Description=f"imageforge: SSH from {source} to verify build {self.record.id}",
                TagSpecifications=self.tag_spec("security-group", name),
                **vpc,
            )["GroupId"]
            client.authorize_security_group_ingress(
                GroupId=group, IpPermissions=[permission(source)]
            )
        with errors(client, f"launch an instance of {ami}"):
            instance = client.run_instances(
                ImageId=ami,
                InstanceType=self.settings.instance_type,
                MinCount=1,
                MaxCount=1,
                KeyName=name,
                UserData=user_data,
                InstanceInitiatedShutdownBehavior="terminate",
                MetadataOptions=IMDS_V2_ONLY,
                TagSpecifications=[
                    *self.tag_spec("instance", self.instance_name),
                    *self.tag_spec("volume", self.instance_name),
                ],
                **self.network(group),
            )["Instances"][0]["InstanceId"]
        log.info(f"launched {instance} from {ami} in {self.region}")
        with errors(client, f"wait for instance {instance} to run"):
            client.get_waiter("instance_running").wait(InstanceIds=[instance], WaiterConfig=WAIT)
            found = client.describe_instances(InstanceIds=[instance])
        return Instance(
            instance, self.address(found["Reservations"][0]["Instances"][0]), self.region
        )

    def network(self, group: str) -> dict[str, Any]:
        """Where the instance goes: with a public address when SSH goes to one."""
        subnet = {"SubnetId": self.settings.subnet_id} if self.settings.subnet_id else {}
        if self.settings.ssh_interface.startswith("public"):
            interface = {"DeviceIndex": 0, "AssociatePublicIpAddress": True, "Groups": [group]}
            return {"NetworkInterfaces": [{**interface, **subnet}]}
        return {"SecurityGroupIds": [group], **subnet}

    def address(self, instance: dict[str, Any]) -> str:
        interface = self.settings.ssh_interface
        address: str | None = instance.get(ADDRESS[interface])
        if not address:
            raise ImageforgeError(
                f"instance {instance['InstanceId']} has no {ADDRESS[interface]} "
                f"(clouds.aws.ssh_interface is {interface})",
                hint="set clouds.aws.subnet_id to a subnet that gives one, or change ssh_interface",
            )
        return address

    # --- teardown ---------------------------------------------------------------------------

    def remove(self) -> BaseException | None:
        """Delete the instance (waiting until it is gone), the security group and the key pair,
        each even when another failed; failures are warnings. An interrupt that came meanwhile
        is returned, for the caller to raise unless an error is already on its way."""
        steps: list[tuple[str, Callable[[], None]]] = [
            ("terminate the verification instance", self.remove_instances),
            (f"delete the security group {self.resource_name}", self.remove_groups),
            (f"delete the key pair {self.resource_name}", self.remove_key_pairs),
        ]
        return remove_all(steps, f"AWS ({self.region})", self.record.id, "aws")

    def mine(self, name_key: str, name: str) -> list[dict[str, Any]]:
        """Filters for what this verification made: its name and our build-id tag."""
        return [
            {"Name": name_key, "Values": [name]},
            {"Name": f"tag:{BUILD_KEY}", "Values": [self.record.id]},
        ]

    def remove_instances(self) -> None:
        found = self.client.describe_instances(
            Filters=[
                *self.mine("tag:Name", self.instance_name),
                {"Name": "instance-state-name", "Values": NOT_GONE},
            ]
        )["Reservations"]
        ids = [i["InstanceId"] for r in found for i in r["Instances"]]
        if ids:
            self.client.terminate_instances(InstanceIds=ids)
            self.client.get_waiter("instance_terminated").wait(InstanceIds=ids, WaiterConfig=WAIT)
            log.info(f"terminated {', '.join(ids)} in {self.region}")

    def remove_groups(self) -> None:
        groups = self.client.describe_security_groups(
            Filters=self.mine("group-name", self.resource_name)
        )["SecurityGroups"]
        in_use = retry_if_exception(lambda e: why(e).startswith("DependencyViolation"))
        for group in groups:
            retrying = Retrying(
                retry=in_use,
                wait=wait_fixed(GROUP_RETRY_SECONDS),
                stop=stop_after_delay(GROUP_FREE_TIMEOUT_SECONDS),
                reraise=True,
            )
            retrying(self.client.delete_security_group, GroupId=group["GroupId"])

    def remove_key_pairs(self) -> None:
        keys = self.client.describe_key_pairs(Filters=self.mine("key-name", self.resource_name))
        for key in keys["KeyPairs"]:
            # By name: moto ignores KeyPairId here (and the name is unique in a region).
            self.client.delete_key_pair(KeyName=key["KeyName"])
