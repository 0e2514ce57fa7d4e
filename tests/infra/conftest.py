"""Facts about the build under verification, passed in by imageforge.verify."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def build() -> dict[str, str]:
    """The build's public key, the verification instance id, and values that must not leak."""
    return {
        "public_key": os.environ.get("IMAGEFORGE_BUILD_PUBKEY", ""),
        "verify_key": os.environ.get("IMAGEFORGE_VERIFY_PUBKEY", ""),
        "instance_id": os.environ.get("IMAGEFORGE_VERIFY_INSTANCE_ID", ""),
        "image_user": os.environ.get("IMAGE_USER", ""),
        "secrets": os.environ.get("IMAGEFORGE_FORBIDDEN_VALUES", ""),
    }


@pytest.fixture(scope="module")
def boot_time(host) -> int:
    """When this VM booted, in epoch seconds."""
    return int(host.check_output('date -d "$(uptime -s)" +%s'))
