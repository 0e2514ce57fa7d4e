"""Clouds behind one small interface; each cloud's SDK is imported only when it is used."""

from __future__ import annotations

import importlib

from imageforge.clouds.base import Cloud
from imageforge.config import CLOUDS


def get(name: str) -> Cloud:
    """The Cloud for a name in images.yml: local, aws, gcp or openstack."""
    if name not in CLOUDS:
        raise KeyError(name)
    module = importlib.import_module(f"imageforge.clouds.{name}")
    return module.CLOUD
