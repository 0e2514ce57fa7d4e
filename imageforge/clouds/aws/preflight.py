"""AWS preflight: credentials resolve, the regions exist, the source AMI is there."""

from __future__ import annotations

from typing import TYPE_CHECKING

from imageforge.clouds.aws.client import ec2, errors, regions
from imageforge.errors import ImageforgeError

if TYPE_CHECKING:
    from imageforge.config import Project
    from imageforge.config.matrix import Cell


class AwsPreflight:
    def doctor(self, project: Project, cell: Cell) -> list[str]:
        import boto3

        aws = project.images.clouds.aws
        if boto3.session.Session().get_credentials() is None:
            raise ImageforgeError(
                "no AWS credentials found",
                hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
            )
        found = ["AWS credentials resolve"]
        client = ec2(aws.region)
        with errors(client, "list regions"):
            known = {r["RegionName"] for r in client.describe_regions()["Regions"]}
        for region in regions(project):
            if region not in known:
                raise ImageforgeError(
                    f"region {region!r} does not exist or is not enabled for this account"
                )
        found.append(f"regions {', '.join(regions(project))} exist")
        ami = aws.source_ami[cell.os]
        with errors(client, "find the source AMI"):
            images = client.describe_images(
                Owners=list(ami.owners), Filters=[{"Name": "name", "Values": [ami.name]}]
            )["Images"]
        if not images:
            raise ImageforgeError(
                f"no source AMI named {ami.name!r} owned by {', '.join(ami.owners)} "
                f"in {aws.region}",
                hint=f"set clouds.aws.source_ami.{cell.os} in images.yml",
            )
        newest = max(images, key=lambda i: i["CreationDate"])
        found.append(f"source AMI {newest['ImageId']} ({newest.get('Name')})")
        return found
