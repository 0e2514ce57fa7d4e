"""The packer binary: its version, and what the rendered HCL may use with it."""

from __future__ import annotations

import functools
import re
import shutil
from dataclasses import dataclass

from imageforge.config import settings
from imageforge.errors import ImageforgeError
from imageforge.process import runner

VERSION_OVERRIDE_ENV = "IMAGEFORGE_PACKER_VERSION"


@dataclass(frozen=True, order=True)
class PackerVersion:
    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> PackerVersion:
        match = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
        if not match:
            raise ImageforgeError(f"cannot read a Packer version from {text.strip()!r}")
        return cls(*(int(g) for g in match.groups()))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def has_plugins(self) -> bool:
        """Packer 1.7 introduced `packer { required_plugins {} }`; 1.6.x rejects the block."""
        return (self.major, self.minor) >= (1, 7)


def binary() -> str:
    path = shutil.which(settings.current().packer)
    if path is None:
        raise ImageforgeError(
            "packer is not installed",
            hint="install it (Debian: apt-get install packer) or set IMAGEFORGE_PACKER",
        )
    return path


@functools.cache
def installed_version() -> PackerVersion:
    """The version of the packer on PATH."""
    return PackerVersion.parse(runner.output([binary(), "version"]).splitlines()[0])


def version(override: str | None = None) -> PackerVersion:
    """The version to render for: an explicit override, $IMAGEFORGE_PACKER_VERSION, or detected."""
    text = override or settings.current().packer_version
    return PackerVersion.parse(text) if text else installed_version()
