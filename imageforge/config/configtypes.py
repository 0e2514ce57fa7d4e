"""The building blocks of images.yml's model: the base model, checked value types, and the
sections a flavor may add for what it serves (a desktop, a Python environment, AiiDA).

config.py assembles them into the whole file's model and loads it.
"""

from __future__ import annotations

import re
import typing
import unicodedata
import zoneinfo
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    WithJsonSchema,
)

from imageforge.config.configerrors import suggest

CloudName = Literal["local", "aws", "gcp", "openstack"]
CLOUDS: tuple[str, ...] = typing.get_args(CloudName)
FlavorName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,40}$")]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
Port = Annotated[StrictInt, Field(ge=1, le=65535)]
# A distribution package name as Debian policy allows it (apt takes nothing else from a list).
Package = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9+.-]+$")]
Size = Annotated[StrictInt, Field(ge=1, le=65536)]
# Image-name patterns: placeholders {prefix}, {flavor} and {build_id}; characters every cloud takes.
NamePattern = Annotated[str, StringConstraints(pattern=r"^[a-z{][a-z0-9{}_-]{0,62}$")]
NAME_PLACEHOLDERS = ("prefix", "flavor", "build_id")


# Characters that end a line or start an escape sequence somewhere: C0/C1 controls (NUL, tab,
# newline, ESC, DEL, ...) and the Unicode line and paragraph separators.
_CONTROL_CATEGORIES = ("Cc", "Zl", "Zp")


def _plain_text(text: str) -> str:
    """A user string that becomes a name, path, tag, description or environment value."""
    for char in text:
        if unicodedata.category(char) in _CONTROL_CATEGORIES:
            raise ValueError(f"control character U+{ord(char):04X} is not allowed")
    if "{{" in text:
        # Packer renders its own Go templates in most string settings (tags, descriptions,
        # environment values), some of them twice, so no escape survives: refuse.
        raise ValueError("'{{' is not allowed: Packer would read it as a template")
    return text


def _project_path(text: str) -> str:
    """A path relative to images.yml that cannot leave the project (symlinks: config.py)."""
    _plain_text(text)
    path = PurePosixPath(text)
    if not text or path.is_absolute():
        raise ValueError("must be a path relative to the directory of images.yml")
    if ".." in path.parts:
        raise ValueError("must stay inside the project: '..' is not allowed")
    return text


Text = Annotated[str, AfterValidator(_plain_text)]
# Tag-key prefixes that imageforge or a cloud keeps for itself: a user tag with one of them
# could pass for this pipeline's own metadata (which prune and sweep trust) or be refused.
RESERVED_TAG_PREFIXES = ("imageforge-", "aws:", "goog", "google", "openstack:")


def _user_tag_key(key: str) -> str:
    _plain_text(key)
    for prefix in RESERVED_TAG_PREFIXES:
        if key.lower().startswith(prefix):
            raise ValueError(f"tag keys starting with {prefix!r} are reserved")
    return key


TagKey = Annotated[str, AfterValidator(_user_tag_key)]
ProjectPath = Annotated[str, AfterValidator(_project_path)]
# Keys of environment variables: a shell takes nothing else as a name.
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Environment = dict[EnvName, Text]
# Keys that become HCL attribute names.
HclName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")]


def _known_timezone(name: str) -> str:
    zones = zoneinfo.available_timezones()
    if name not in zones:
        raise ValueError(f"not a tz database timezone such as Europe/London{suggest(name, zones)}")
    return name


# How a timezone name looks (the tz database's Area/Location), for the schema: the image checks
# the name against its own zoneinfo, as images.yml does against the host's.
TIMEZONE = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"
Timezone = Annotated[
    str,
    AfterValidator(_known_timezone),
    WithJsonSchema({"type": "string", "pattern": TIMEZONE}),
]

USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def _login_name(name: str) -> str:
    if "." in name:
        raise ValueError(
            "a login name without a dot: sudo ignores /etc/sudoers.d files with a dot in "
            "their name, so the user would get no sudo"
        )
    if not USER_NAME.match(name):
        raise ValueError(
            "a login name: a lowercase letter or _, then lowercase letters, digits, _ or -, "
            "32 characters at most (what Debian's useradd accepts)"
        )
    return name


UserName = Annotated[
    str,
    AfterValidator(_login_name),
    WithJsonSchema({"type": "string", "pattern": USER_NAME.pattern}),
]


def _requirement(text: str) -> str:
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        reason = str(exc).splitlines()[0]
        raise ValueError(f"not a pip requirement such as 'aiida-core~=2.9': {reason}") from None
    if requirement.url:
        raise ValueError("a requirement from a URL is not allowed: packages come from the index")
    return text


PipRequirement = Annotated[str, AfterValidator(_requirement)]
ClockTime = Annotated[str, StringConstraints(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
GuestPath = Annotated[str, StringConstraints(pattern=r"^/[A-Za-z0-9._/-]*$")]
BucketName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")]


class Model(BaseModel):
    """Base for every section: frozen, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AutoShutdown(Model):
    """Power off every day at a local time (a systemd timer; user-data can override it)."""

    time: ClockTime = Field("18:00", description="HH:MM, 24-hour clock")
    timezone: Timezone = Field("Europe/London", description="tz database name")


class S3fsMount(Model):
    """A bucket mounted at /mnt/s3fs at boot. Credentials never come from here: user-data
    gives keys, or the instance's own role is used."""

    bucket: BucketName
    url: Annotated[str, StringConstraints(pattern=r"^https?://[A-Za-z0-9.:\[\]-]+/?$")] | None = (
        Field(None, description="S3 endpoint; default: AWS")
    )
    path_style: StrictBool = Field(False, description="path-style requests (non-AWS servers)")
    read_only: StrictBool = True


class Desktop(Model):
    """A per-attendee XFCE desktop served by TigerVNC on display :1 (port 5901)."""

    vnc_localhost_only: StrictBool = Field(
        False, description="serve VNC on localhost only, for attendees who tunnel over SSH"
    )
    geometry: Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{2,3}x[1-9][0-9]{2,3}$")] = (
        "1280x800"
    )
    shutdown: AutoShutdown | None = Field(AutoShutdown(), description="null: never")
    autosquash: GuestPath | None = Field(
        None,
        description="directory whose *.squashfs files are mounted read-only under "
        "/mnt/autosquash/<name> at boot, e.g. /mnt/s3fs/autosquash in the s3fs bucket",
    )
    s3fs: S3fsMount | None = None


class PythonEnv(Model):
    """A Python virtual environment in the image. Local builds install it natively into the
    flavor's cached layer from wheels made on the host; cloud builds install it in the VM."""

    venv: GuestPath = "/opt/venv"
    packages: tuple[PipRequirement, ...] = Field(min_length=1)
    build: tuple[PipRequirement, ...] = Field(
        (),
        description="requirements PyPI has no wheel of for the image's Python: built once from "
        "source, natively in a throwaway root of the image's Debian release, and cached",
    )


class AiidaCode(Model):
    """A code registered in AiiDA on the `localhost` computer."""

    label: Name
    plugin: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.]*$")] = Field(
        description="calculation plugin entry point, e.g. quantumespresso.pw"
    )
    executable: GuestPath


class Aiida(Model):
    """AiiDA for the image user: a profile made at first boot, the daemon and JupyterLab."""

    jupyter_port: Port = 8888
    codes: tuple[AiidaCode, ...] = (
        AiidaCode(label="pw", plugin="quantumespresso.pw", executable="/usr/bin/pw.x"),
    )
