"""The settings an instance's user-data may give imageforge's first-boot programs.

One model per block (`imageforge_slurm`, `imageforge_desktop`), built from the same types as
images.yml, so a value images.yml refuses is refused at boot too. Each build writes the JSON
schema of `UserData` into the image (provisioners/common/06-firstboot.py), where the first-boot
programs check the user-data against it before they change anything. images.yml's
`verify_user_data` is checked with the same models.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from imageforge.config.configtypes import Desktop, Model, S3fsMount

# A host name other nodes look up in /etc/hosts: lowercase labels (lookups ignore case), and
# never one of the names the system's own lines hold.
HOST_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
SYSTEM_HOST_NAMES = (
    "localhost",
    "localhost.localdomain",
    "ip6-localhost",
    "ip6-loopback",
    "ip6-localnet",
    "ip6-mcastprefix",
    "ip6-allnodes",
    "ip6-allrouters",
    "ip6-allhosts",
)
# A key an error message may name (a mistyped `vnc_password:s3cret` makes the secret a key).
PLAIN_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")
SLURM_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
# The controller as workers reach it: a host name or an address, nothing that ends a line.
CONTROLLER = r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$"
# A MUNGE key: 32 to 1024 random bytes, base64.
MUNGE_KEY = r"^[A-Za-z0-9+/]+={0,2}$"
MUNGE_KEY_BYTES = (32, 1024)
ATTENDEE = r"^[A-Za-z0-9][A-Za-z0-9-]{0,15}$"
# VNC authentication uses 8 characters at most; printable ASCII without spaces.
VNC_PASSWORD = r"^[!-~]{6,8}$"
# An S3 key as s3fs's passwd file takes it (`access:secret`, one line).
S3_KEY = r"^[A-Za-z0-9/+=._-]{1,128}$"


def _not_a_system_name(name: str) -> str:
    if name in SYSTEM_HOST_NAMES:
        raise ValueError(f"{name!r} is the system's own name in /etc/hosts")
    return name


def _address(text: str) -> str:
    if "%" in text:  # a scope (fe80::1%eth0) means nothing to another node
        raise ValueError("an address without a %scope")
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError("not an IPv4 or IPv6 address") from None
    return text


def _munge_key(text: str) -> str:
    try:
        size = len(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    low, high = MUNGE_KEY_BYTES
    if not low <= size <= high:
        raise ValueError(f"a MUNGE key of {low} to {high} bytes, base64")
    return text


HOST_NAME_SCHEMA = {
    "type": "string",
    "pattern": HOST_NAME,
    "maxLength": 253,
    "not": {"enum": list(SYSTEM_HOST_NAMES)},
}
ADDRESS_SCHEMA = {"anyOf": [{"type": "string", "format": f} for f in ("ipv4", "ipv6")]}
HostName = Annotated[
    str,
    StringConstraints(pattern=HOST_NAME, max_length=253),
    AfterValidator(_not_a_system_name),
]
Address = Annotated[str, AfterValidator(_address)]
# Written out: pydantic would put the names' pattern where it admits every other name.
Hosts = Annotated[
    dict[HostName, Address],
    Field(max_length=1024),
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": 1024,
            "propertyNames": HOST_NAME_SCHEMA,
            "additionalProperties": ADDRESS_SCHEMA,
        }
    ),
]
MungeKey = Annotated[
    str,
    StringConstraints(pattern=MUNGE_KEY, min_length=44, max_length=1368),
    AfterValidator(_munge_key),
]


def _number_as_text(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


# A number or a short name; YAML gives `attendee: 7` as an integer.
Attendee = Annotated[
    str,
    BeforeValidator(_number_as_text),
    StringConstraints(pattern=ATTENDEE),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": 9_999_999_999_999_999},
                {"type": "string", "pattern": ATTENDEE},
            ]
        }
    ),
]


class SlurmUserData(Model):
    """imageforge_slurm: makes the node a controller or a worker of one cluster."""

    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"role": {"const": "worker"}}},
            "then": {"required": ["controller"], "properties": {"controller": {"type": "string"}}},
        }
    )

    role: Literal["controller", "worker"]
    munge_key: MungeKey = Field(description="the cluster's MUNGE key, base64")
    cluster_name: Annotated[str, StringConstraints(pattern=SLURM_NAME)] | None = Field(
        None, description="default: the image's (SLURM_CLUSTER_NAME when it was built)"
    )
    controller: Annotated[str, StringConstraints(pattern=CONTROLLER)] | None = Field(
        None, description="the controller's name or address (workers need it)"
    )
    hosts: Hosts = Field(default_factory=dict, description="/etc/hosts entries: name → address")

    @model_validator(mode="after")
    def _worker_has_a_controller(self) -> SlurmUserData:
        if self.role == "worker" and not self.controller:
            raise ValueError("a worker needs `controller`")
        return self


KEYS = ("access_key", "secret_key")


class S3fsCredentials(S3fsMount):
    """s3fs with the keys user-data may give (both or neither; none: the instance's role)."""

    model_config = ConfigDict(
        json_schema_extra={
            "dependentSchemas": {
                given: {"required": [other], "properties": {k: {"type": "string"} for k in KEYS}}
                for given, other in (KEYS, KEYS[::-1])
            }
        }
    )

    access_key: Annotated[str, StringConstraints(pattern=S3_KEY)] | None = None
    secret_key: Annotated[str, StringConstraints(pattern=S3_KEY)] | None = None

    @model_validator(mode="after")
    def _both_keys_or_neither(self) -> S3fsCredentials:
        if (self.access_key is None) != (self.secret_key is None):
            raise ValueError("give both access_key and secret_key, or neither")
        return self


class DesktopUserData(Desktop):
    """imageforge_desktop: the image's desktop settings, overridden, plus the attendee's."""

    attendee: Attendee | None = None
    vnc_password: Annotated[str, StringConstraints(pattern=VNC_PASSWORD)] | None = Field(
        None, description="else one is generated once, where none exists"
    )
    s3fs: S3fsCredentials | None = None


class UserData(Model):
    """imageforge's blocks of a cloud-config user-data (other keys are cloud-init's)."""

    imageforge_slurm: SlurmUserData | None = None
    imageforge_desktop: DesktopUserData | None = None


def schema() -> dict[str, Any]:
    """The JSON schema the first-boot programs check imageforge_* blocks against."""
    document = UserData.model_json_schema(mode="validation")
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return document


def ours(cloud_config: dict[str, Any]) -> dict[str, Any]:
    """The imageforge_* keys of a cloud-config mapping."""
    return {k: v for k, v in cloud_config.items() if str(k).startswith("imageforge_")}


def check_blocks(cloud_config: dict[str, Any]) -> dict[str, Any]:
    """cloud_config, if its imageforge_* blocks are what an instance would accept (images.yml's
    verify_user_data); else ValueError naming the first wrong key."""
    try:
        UserData.model_validate(ours(cloud_config))
    except ValidationError as exc:
        first = exc.errors()[0]
        parts = (p for p in first["loc"] if not str(p).startswith("function"))
        where = ".".join(p if PLAIN_KEY.match(str(p)) else "(a key)" for p in map(str, parts))
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ValueError(f"{where}: {message}") from None
    return cloud_config
