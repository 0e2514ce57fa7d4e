"""Clouds as small capability packages; each cloud's SDK is imported only when it is used."""

from __future__ import annotations

import difflib
import importlib
from typing import Any, TypeVar

from imageforge.clouds.capabilities import (
    VERBS,
    Distributor,
    Housekeeper,
    Importer,
    Launcher,
    PackerSource,
    Preflight,
    Sharer,
)
from imageforge.clouds.common import BuildEnv, Instance, Outcome, Published, metadata
from imageforge.config.configtypes import CLOUDS
from imageforge.config.publishpolicy import Sharing
from imageforge.errors import ConfigError

__all__ = [
    "CLOUDS",
    "BuildEnv",
    "Distributor",
    "Housekeeper",
    "Importer",
    "Instance",
    "Launcher",
    "Outcome",
    "PackerSource",
    "Preflight",
    "Published",
    "Sharer",
    "Sharing",
    "capability",
    "get",
    "metadata",
]

C = TypeVar("C")


def get(name: str) -> PackerSource:
    """The cloud for a name in images.yml: local, aws, gcp or openstack."""
    if name not in CLOUDS:
        close = difflib.get_close_matches(name, CLOUDS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else None
        raise ConfigError(f"unknown cloud {name!r}; known: {', '.join(CLOUDS)}", hint=hint)
    cloud: PackerSource = importlib.import_module(f"imageforge.clouds.{name}").CLOUD
    return cloud


def capability(name: str, kind: type[C]) -> C:
    """The cloud `name` as a `kind` (Sharer, Housekeeper, ...), or an error naming the clouds
    that have it."""
    cloud: Any = get(name)
    if isinstance(cloud, kind):
        return cloud
    able = [n for n in CLOUDS if isinstance(get(n), kind)]
    raise ConfigError(f"{name} cannot {VERBS[kind]}; clouds that can: {', '.join(able)}")
