"""The IMAGEFORGE_* environment: every setting imageforge takes from it, read and checked once.

A wrong value is one clear error naming the variable and what it takes (exit 2). The README's
"Environment" table lists them; `invoke --help <task>` names those a task uses.
"""

from __future__ import annotations

import functools
import ipaddress
import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from imageforge.errors import ConfigError

PREFIX = "IMAGEFORGE_"


def name(field: str) -> str:
    """The variable of a setting: name("verify_ssh_from") == "IMAGEFORGE_VERIFY_SSH_FROM"."""
    return PREFIX + field.upper()


def _flag(value: object) -> bool:
    """Set and not "0": on ("1", "yes", anything else)."""
    if isinstance(value, bool):  # the default (BaseSettings validates defaults too)
        return value
    return str(value).strip() not in ("", "0")


def _cidr(text: str) -> str:
    if text:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError("a CIDR such as 203.0.113.7/32") from None
    return text


def _host_port(text: str) -> str:
    if text:
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("host:port, such as 127.0.0.1:2222")
    return text


def _endpoint(text: str) -> str:
    text = text.strip()
    if text and not text.startswith(("http://", "https://")):
        raise ValueError("an http:// or https:// URL")
    return text


class Settings(BaseSettings):
    """What the environment may set, with the variable name as IMAGEFORGE_<NAME>."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True)

    debug: Annotated[bool, BeforeValidator(_flag)] = False
    cache_dir: Path | None = None
    # A directory laid out as /etc/apt whose sources `invoke outdated` reads instead.
    apt_sources: Path | None = None
    # The step cache's size limit (GiB); 0 turns it off.
    step_cache_gb: Annotated[float, Field(ge=0)] = 20.0
    packer: str = "packer"
    packer_version: str | None = None
    verify_ssh_from: Annotated[str, AfterValidator(_cidr)] = ""
    verify_ssh_via: Annotated[str, AfterValidator(_host_port)] = ""
    gcp_endpoint: Annotated[str, AfterValidator(_endpoint)] = ""
    extra_ca_certs: str | None = None  # set but empty: no extra CA at all
    # The provenance signing key (its public half beside it, with .pub).
    signing_key: Path | None = None


def current() -> Settings:
    """The settings of this process: read and checked once for each state of its IMAGEFORGE_*
    environment (so a test, or a task that sets one, sees its change)."""
    return _read(tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(PREFIX))))


@functools.lru_cache(maxsize=4)
def _read(environment: tuple[tuple[str, str], ...]) -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        variable = name(str(first["loc"][0]))
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"${variable}: {first['input']!r} is not {message}") from None
