"""Copies of a verified AMI in the regions of clouds.aws.copy_regions, made after verification.

A copy keeps the AMI's name and gets its tags (CopyImage copies no tags), so prune, sweep and
this module find it. A copy made by a run that stopped before its record was written is found
again by name and build id, and not made twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imageforge import log
from imageforge.clouds.aws.client import ec2, errors, tags
from imageforge.clouds.common import BUILD_KEY
from imageforge.errors import ImageforgeError
from imageforge.records import state

if TYPE_CHECKING:
    from imageforge.config import Project
    from imageforge.records.record import BuildRecord

# Copies take minutes to an hour, depending on the image's size and the regions.
WAIT = {"Delay": 15, "MaxAttempts": 240}


class AwsDistributor:
    def distribute(self, project: Project, record: BuildRecord) -> dict[str, str]:
        """{region: AMI id} of every copy region, copying where there is no copy yet."""
        state.require_bound(record)
        aws = project.images.clouds.aws
        wanted = [r for r in dict.fromkeys(aws.copy_regions) if r != aws.region]
        if not wanted:
            return {}
        source = Source(aws.region, record)
        copies: dict[str, str] = {}
        unfinished = []  # copies this run started or found, perhaps still being made
        for region in wanted:
            copy = record.copies.get(region)
            if not copy:
                copy = source.existing_copy(region) or source.copy_to(region)
                unfinished.append(region)
            copies[region] = copy
        for region in unfinished:
            client = ec2(region)
            with errors(client, f"wait for the copy {copies[region]} of {source.ami}"):
                client.get_waiter("image_available").wait(
                    ImageIds=[copies[region]], WaiterConfig=WAIT
                )
            source.tag_snapshots(region, copies[region])
            log.info(f"copied {source.ami} to {region}: {copies[region]}")
        return copies


class Source:
    """The verified AMI in the build region: its name and tags, and its copies."""

    def __init__(self, region: str, record: BuildRecord) -> None:
        self.region, self.record = region, record
        ami = record.artifact_ids.get(region)
        if not ami:
            raise ImageforgeError(
                f"build {record.id} has no AMI in the build region {region}; nothing to copy"
            )
        self.ami = ami
        client = ec2(region)
        with errors(client, f"describe {ami}"):
            found = client.describe_images(ImageIds=[ami])["Images"]
        if not found:
            raise ImageforgeError(f"AMI {ami} of build {record.id} is gone from {region}")
        self.image: dict[str, Any] = found[0]
        # Keys starting with aws: are the cloud's own; they cannot be set.
        self.tags = [
            {"Key": k, "Value": v} for k, v in tags(self.image).items() if not k.startswith("aws:")
        ]

    def existing_copy(self, region: str) -> str | None:
        """A copy made earlier (same name, our build id), whatever its record says."""
        client = ec2(region)
        with errors(client, "look for an earlier copy"):
            found = client.describe_images(
                Owners=["self"],
                Filters=[
                    {"Name": "name", "Values": [self.image["Name"]]},
                    {"Name": f"tag:{BUILD_KEY}", "Values": [self.record.id]},
                ],
            )["Images"]
        usable = [i for i in found if i.get("State") not in ("failed", "deregistered", "error")]
        return usable[0]["ImageId"] if usable else None

    def copy_to(self, region: str) -> str:
        """Start a copy and tag it at once, so that even an unfinished copy is found again."""
        client = ec2(region)
        with errors(client, f"copy {self.ami} from {self.region}"):
            copy: str = client.copy_image(
                SourceRegion=self.region,
                SourceImageId=self.ami,
                Name=self.image["Name"],
                Description=self.image.get("Description", ""),
            )["ImageId"]
            client.create_tags(Resources=[copy], Tags=self.tags)
        return copy

    def tag_snapshots(self, region: str, copy: str) -> None:
        """The copy's snapshots get the same tags, as Packer's snapshot_tags do in the build."""
        client = ec2(region)
        with errors(client, f"tag the snapshots of {copy}"):
            image = client.describe_images(ImageIds=[copy])["Images"][0]
            snapshots = [
                m["Ebs"]["SnapshotId"]
                for m in image.get("BlockDeviceMappings", [])
                if m.get("Ebs", {}).get("SnapshotId")
            ]
            if snapshots:
                client.create_tags(Resources=snapshots, Tags=self.tags)
