"""The amazon-ebs Packer source, its validation environment and its AMI ids."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imageforge import log
from imageforge.clouds.aws.client import ec2
from imageforge.clouds.common import (
    BuildEnv,
    SourceDefaults,
    image_name,
    manifest_artifacts,
    metadata,
    ssh_source,
)
from imageforge.clouds.housekeeping import instance_tags
from imageforge.config import oses, settings
from imageforge.packer import hcl

if TYPE_CHECKING:
    from imageforge.config import Project
    from imageforge.config.matrix import Cell
    from imageforge.process.buildsecrets import KeyPair


class AwsSource(SourceDefaults):
    name = "aws"
    builder = "amazon-ebs"
    # cloud-init's datasource on this cloud's own images (datasource_list, then None)
    datasource = "Ec2"
    machine_setting = "instance_type"
    disk_setting = "volume_size_gb"

    def ssh_username(self, os_name: str) -> str:
        """The AMIs' own login user (Debian's: admin), not the generic cloud images'."""
        return oses.get(os_name).aws_login_user

    def image_regions(self, settings: Any) -> tuple[str, ...]:
        """Where the verified image is kept."""
        return tuple(dict.fromkeys((settings.region, *settings.copy_regions)))

    def source(self, project: Project, cell: Cell) -> dict[str, Any]:
        aws = project.images.clouds.aws
        ami = aws.source_ami[cell.os]
        tags = metadata(project, cell, aws.tags)
        # Instances, volumes and key pairs carry the same tags, so a sweep finds leftovers.
        # No ami_regions: copies to copy_regions are made once the AMI verified (distribute).
        return {
            "region": aws.region,
            "instance_type": None if aws.spot else aws.instance_type,
            "spot_instance_types": [aws.instance_type] if aws.spot else None,
            "spot_price": "auto" if aws.spot else None,
            "subnet_id": aws.subnet_id,
            "vpc_id": aws.vpc_id,
            "ami_name": image_name(project, cell, aws.ami_name),
            "description": cell.flavor.description or f"imageforge {cell.flavor_name}",
            "encrypt_boot": aws.encrypt_boot,
            "communicator": aws.communicator,
            "ssh_username": self.ssh_username(cell.os),
            "ssh_interface": aws.ssh_interface,
            "associate_public_ip": True if aws.ssh_interface.startswith("public") else None,
            "source_ami_name": ami.name,
            "source_ami_owners": list(ami.owners),
            "volume_size": aws.volume_size_gb,
            "tag_attributes": hcl.attributes(
                {
                    "tags": tags,
                    "snapshot_tags": tags,
                    "run_tags": instance_tags(tags),
                    "run_volume_tags": tags,
                }
            ),
        }

    def build_env(
        self, project: Project, cell: Cell, build_id: str, scratch: Path, key: KeyPair
    ) -> BuildEnv:
        """The network the build instance admits SSH from: the verification's rule
        ($IMAGEFORGE_VERIFY_SSH_FROM, else this machine's address towards EC2)."""
        endpoint = (
            os.environ.get("PKR_VAR_aws_endpoint_ec2")  # noqa: SIM112 (Packer variable name)
            or ec2(project.images.clouds.aws.region).meta.endpoint_url
        )
        source = ssh_source(settings.current().verify_ssh_from, endpoint)
        log.info(f"the build instance admits SSH from {source} only")
        return BuildEnv({"PKR_VAR_aws_ssh_source_cidrs": json.dumps([str(source)])})

    @contextlib.contextmanager
    def validation_env(self, project: Project, scratch: Path) -> Iterator[dict[str, str]]:
        yield {
            "AWS_ACCESS_KEY_ID": "AKIAVALIDATEONLY0000",
            "AWS_SECRET_ACCESS_KEY": "validate-only",
            "AWS_DEFAULT_REGION": "eu-west-1",
            "AWS_CONFIG_FILE": str(scratch / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(scratch / "no-aws-credentials"),
        }

    def artifact_ids(self, directory: Path) -> dict[str, str]:
        """{region: AMI id} from amazon-ebs's artifact_id ("region:ami,region:ami")."""
        ids: dict[str, str] = {}
        for entry in manifest_artifacts(directory, self.builder):
            for pair in entry["artifact_id"].split(","):
                if ":" in pair:
                    region, ami = pair.split(":", 1)
                    ids[region] = ami
        return ids
