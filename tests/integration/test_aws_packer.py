"""The real `packer build` of the rendered amazon-ebs template, against moto's EC2 server.

Packer 1.6.6 talks to moto through custom_endpoint_ec2 with credential, metadata and region
validation skipped, and `communicator = "none"` (moto runs no VMs, so nothing can be
provisioned): source AMI filter → instance → AMI → manifest. The build copies nothing: copies
to copy_regions are made only once the AMI verified (clouds/aws/distribute.py).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import boto3
import pytest

from .conftest import copy_project, invoke, processes_mentioning

pytestmark = pytest.mark.integration

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
flavors:
  slurm-node:
    tags: {team: hpc}
matrix:
  clouds: [aws]
"""


def test_packer_builds_one_ami_and_copies_none_against_moto(aws: str, tmp_path: Path) -> None:
    # moto ships Canonical's (old) Ubuntu AMIs; the filter matches several of them.
    client = boto3.client("ec2", region_name="eu-west-1")
    matches = client.describe_images(
        Owners=["099720109477"],
        Filters=[{"Name": "name", "Values": ["ubuntu/images/hvm-ssd/ubuntu-*-amd64-server-*"]}],
    )["Images"]
    assert len(matches) >= 2
    newest_date = max(i["CreationDate"] for i in matches)
    newest = {i["ImageId"] for i in matches if i["CreationDate"] == newest_date}
    project = copy_project(tmp_path / "project", IMAGES)
    env = {"PKR_VAR_aws_endpoint_ec2": aws, "PKR_VAR_aws_skip_validation": "true"}
    result = invoke(
        project,
        "build",
        "--image",
        "slurm-node",
        "--cloud",
        "aws",
        "--no-verify",
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "ok: source AMI ami-" in result.stderr  # the preflight ran before Packer
    assert "the build instance admits SSH from 127.0.0.1/32 only" in result.stderr
    [record_path] = (project / "artifacts" / "slurm-node").glob("*/build.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "built" and record["binding"] is None
    ids = record["artifact_ids"]
    assert set(ids) == {"eu-west-1"}
    west = client.describe_images(ImageIds=[ids["eu-west-1"]])["Images"][0]
    assert west["Name"] == f"imageforge-slurm-node-{record['id']}"
    tags = {t["Key"]: t["Value"] for t in west.get("Tags", [])}
    assert tags["imageforge-flavor"] == "slurm-node"
    assert tags["imageforge-build-id"] == record["id"]
    assert tags["imageforge-template-hash"] == record["template_hash"]
    assert tags["team"] == "hpc"
    ours = client.describe_images(Owners=["self"])["Images"]
    assert [i["ImageId"] for i in ours] == [ids["eu-west-1"]]
    central = boto3.client("ec2", region_name="eu-central-1")
    assert central.describe_images(Owners=["self"])["Images"] == []  # copies wait for verify
    log = (record_path.parent / "build.log").read_text()
    found = re.search(r"Found Image ID: (ami-\w+)", log)
    assert found and found.group(1) in newest, "most_recent did not pick the newest source AMI"
    assert (
        "imageforge-test-secret" not in log
        and "imageforge-test-secret" not in record_path.read_text()
    )
    assert processes_mentioning(str(project)) == []
