"""The EC2 connection of every AWS concern: clients, regions, tags and errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from imageforge.clouds.sdkerrors import sdk_errors

if TYPE_CHECKING:
    from imageforge.config import Project


def ec2(region: str) -> Any:
    """An EC2 client; boto3 finds credentials and endpoint (AWS_ENDPOINT_URL) as usual."""
    import boto3

    return boto3.client("ec2", region_name=region)


def regions(project: Project) -> list[str]:
    """The build region, then the regions Packer copies the AMI to."""
    aws = project.images.clouds.aws
    return [aws.region, *[r for r in aws.copy_regions if r != aws.region]]


def tags(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


@contextlib.contextmanager
def errors(client: Any, operation: str) -> Iterator[None]:
    """SDK errors of one EC2 operation as one line naming the region and endpoint."""
    with sdk_errors(f"AWS ({client.meta.region_name})", operation, client.meta.endpoint_url):
        yield


# Instance metadata only with a session token (IMDSv2), from the instance itself (one hop: a
# container on it gets none): for build and verification instances, and for the AMIs made.
IMDS_V2_ONLY = {"HttpEndpoint": "enabled", "HttpTokens": "required", "HttpPutResponseHopLimit": 1}
