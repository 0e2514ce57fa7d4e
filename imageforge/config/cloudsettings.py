"""The `clouds:` section of images.yml: each cloud's settings, with defaults for every one."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool, StrictInt

from imageforge.config.configtypes import HclName, Model, NamePattern, Size, TagKey, Text
from imageforge.config.oses import OsName


class AwsSourceAmi(Model):
    owners: tuple[Text, ...]
    name: Text = Field(description="AMI name pattern, most recent match wins")


class AwsCloud(Model):
    region: Text = "eu-west-1"
    instance_type: Text = "t3.medium"
    source_ami: dict[OsName, AwsSourceAmi] = {
        "ubuntu-24.04": AwsSourceAmi(
            owners=("099720109477",),
            name="ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*",
        ),
        "ubuntu-22.04": AwsSourceAmi(
            owners=("099720109477",),
            name="ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*",
        ),
        "debian-13": AwsSourceAmi(owners=("136693071363",), name="debian-13-amd64-*"),
        "debian-12": AwsSourceAmi(owners=("136693071363",), name="debian-12-amd64-*"),
    }
    ami_name: NamePattern = "{prefix}-{flavor}-{build_id}"
    copy_regions: tuple[Text, ...] = ()
    spot: StrictBool = False
    subnet_id: Text | None = None
    vpc_id: Text | None = None
    ssh_interface: Literal["public_ip", "private_ip", "public_dns", "private_dns"] = "public_ip"
    volume_size_gb: Size = 20
    encrypt_boot: StrictBool = False
    tags: dict[TagKey, Text] = Field(default_factory=dict)
    communicator: Literal["ssh", "none"] = Field(
        "ssh", description="'none' copies the source AMI without provisioning (API test servers)"
    )


class GcpSourceImage(Model):
    family: Text
    project: str


class GcpCloud(Model):
    project: Text | None = Field(None, description="Default: $GOOGLE_CLOUD_PROJECT at build time")
    zone: Text = "europe-west1-b"
    machine_type: Text = "e2-standard-2"
    source_image: dict[OsName, GcpSourceImage] = {
        "ubuntu-24.04": GcpSourceImage(family="ubuntu-2404-lts-amd64", project="ubuntu-os-cloud"),
        "ubuntu-22.04": GcpSourceImage(family="ubuntu-2204-lts", project="ubuntu-os-cloud"),
        "debian-13": GcpSourceImage(family="debian-13", project="debian-cloud"),
        "debian-12": GcpSourceImage(family="debian-12", project="debian-cloud"),
    }
    image_name: NamePattern = "{prefix}-{flavor}-{build_id}"
    image_family: NamePattern = "{prefix}-{flavor}"
    disk_size_gb: Size = 20
    network: Text | None = None
    subnetwork: Text | None = None
    labels: dict[TagKey, Text] = Field(default_factory=dict)


class OpenstackSourceImage(Model):
    name: Text | None = None
    filter: dict[HclName, Text] = Field(
        default_factory=dict, description="Packer's source_image_filter filters, e.g. name"
    )


class OpenstackCloud(Model):
    cloud: Text = Field("openstack", description="Entry in clouds.yaml")
    flavor: Text = "m1.medium"
    source_image: dict[OsName, OpenstackSourceImage] = {
        "ubuntu-24.04": OpenstackSourceImage(name="Ubuntu 24.04"),
        "ubuntu-22.04": OpenstackSourceImage(name="Ubuntu 22.04"),
        "debian-13": OpenstackSourceImage(name="Debian 13"),
        "debian-12": OpenstackSourceImage(name="Debian 12"),
    }
    networks: tuple[Text, ...] = ()
    floating_ip_pool: Text | None = None
    security_groups: tuple[Text, ...] = ()
    image_name: NamePattern = "{prefix}-{flavor}-{build_id}"
    image_visibility: Literal["private", "shared", "community", "public"] = "private"
    use_blockstorage_volume: StrictBool = False
    volume_size_gb: Size = 20
    metadata: dict[TagKey, Text] = Field(default_factory=dict)


class LocalCloud(Model):
    accelerator: Literal["auto", "kvm", "tcg"] = "auto"
    cpus: Annotated[StrictInt, Field(ge=1, le=64)] = 2
    memory_mb: Annotated[StrictInt, Field(ge=256, le=262144)] = 2048
    disk_size_gb: Size = 8
    formats: tuple[Literal["qcow2", "vagrant"], ...] = ("qcow2", "vagrant")
    # A local VM is at its login prompt in about a minute even under TCG on a busy machine.
    ssh_timeout_minutes: Annotated[StrictInt, Field(ge=1, le=240)] = 10


class Clouds(Model):
    local: LocalCloud = LocalCloud()
    aws: AwsCloud = AwsCloud()
    gcp: GcpCloud = GcpCloud()
    openstack: OpenstackCloud = OpenstackCloud()
