"""What a base image or layer is made of (its recipe and the hash that keys its cache), and
where the cache lives. base.py builds what a recipe describes."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imageforge.clouds.local import aptsources, guestfiles, pyenv
from imageforge.clouds.local.debcache import DebCache
from imageforge.config import oses, settings
from imageforge.errors import ImageforgeError
from imageforge.process import qemu, runner

# Bump when the build changes in a way the hashed recipe, guest files and options do not show.
BASE_FORMAT = 4  # 4: reproducible layers (reproducible.py)
IMAGE_NAME = "disk.qcow2"
INFO = "base.json"
REPO_ROOT = Path(__file__).resolve().parents[3]
MMDEBSTRAP_OPTIONS = (
    "--mode=root",
    "--variant=minbase",
    '--aptopt=Acquire::Languages "none"',
    "--dpkgopt=force-unsafe-io",  # the tree is copied into a filesystem image afterwards
)
HEADROOM_MIB = 1024  # free space in the root filesystem above what the tree takes
DEFAULT_PACKAGES = (
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "systemd-sysv",
    "udev",
    "dbus",
    "grub-pc",
    "openssh-server",
    "cloud-init",
    "cloud-guest-utils",
    "fdisk",
    "e2fsprogs",
    "iproute2",
    "netbase",
    "ca-certificates",
    "sudo",
    "python3",
    "nftables",  # the metadata guard every image loads (provisioners/common/05-metadata-guard.sh)
)
PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")


@dataclass(frozen=True)
class BaseRecipe:
    """What goes into an image; sources default to the host's apt sources for the suite.

    `extra_packages` are a flavor's declared packages: with any, the image is that flavor's layer.
    """

    suite: str = oses.get(oses.DEFAULT_OS).suite
    architecture: str = "amd64"
    packages: tuple[str, ...] = ()  # default: DEFAULT_PACKAGES and the suite's network stack
    extra_packages: tuple[str, ...] = ()
    python_venv: str = ""  # a virtual environment in the layer, from python_packages
    python_packages: tuple[str, ...] = ()
    python_build: tuple[str, ...] = ()  # of those, what is built from source for the suite
    disk_size_mib: int = 4096
    user: str = "debian"
    hostname: str = "debian"
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.architecture != "amd64":
            raise ImageforgeError(f"base images are amd64 only, not {self.architecture}")
        if not self.packages:
            packages = (*DEFAULT_PACKAGES, *guestfiles.network_packages(self.suite))
            object.__setattr__(self, "packages", packages)
        for name in (*self.packages, *self.extra_packages):
            if not PACKAGE_NAME.match(name):
                raise ImageforgeError(f"{name!r} is not a Debian package name")
        object.__setattr__(self, "packages", tuple(sorted(set(self.packages))))
        extra = sorted(set(self.extra_packages) - set(self.packages))
        object.__setattr__(self, "extra_packages", tuple(extra))
        sources = tuple(self.sources) or aptsources.host_sources(self.suite)
        object.__setattr__(self, "sources", sources)

    @property
    def kind(self) -> str:
        return "layers" if self.extra_packages or self.python_packages else "base"


@dataclass(frozen=True)
class BaseImage:
    """A built (or reused) base image or layer."""

    path: Path
    sha256: str
    recipe_hash: str
    built: bool
    packages: dict[str, str] = field(default_factory=dict)
    downloaded: int = 0
    python_packages: dict[str, str] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """What a build record keeps of it."""
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "recipe_hash": self.recipe_hash,
            "packages": self.packages,
            "python_packages": self.python_packages,
            "downloaded": self.downloaded,
        }


def cache_dir() -> Path:
    """$IMAGEFORGE_CACHE_DIR, else $XDG_CACHE_HOME/imageforge (~/.cache/imageforge)."""
    explicit = settings.current().cache_dir
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    path = Path(explicit or Path(xdg) / "imageforge").expanduser().absolute()
    inside_repo = (REPO_ROOT / "pyproject.toml").exists() and path.is_relative_to(REPO_ROOT)
    if inside_repo:
        raise ImageforgeError(
            f"the imageforge cache ({path}) must not be inside the repository",
            hint="set IMAGEFORGE_CACHE_DIR or XDG_CACHE_HOME to a directory outside it",
        )
    return path


def deb_cache(suite: str) -> DebCache:
    """The .deb files every build of suite has downloaded, shared by all of them. One cache per
    release: a file name (name_version_arch.deb) is not unique across releases."""
    return DebCache(cache_dir() / "debs" / suite)


@functools.cache
def tool_versions() -> dict[str, str]:
    """Versions of the tools whose output ends up in the image (part of the recipe hash)."""

    def first_line(argv: list[str]) -> str:
        return runner.output(argv).strip().splitlines()[0]

    return {
        "mmdebstrap": first_line(["mmdebstrap", "--version"]),
        "e2fsprogs": first_line(["mke2fs", "-V"]),
        "sfdisk": first_line(["sfdisk", "--version"]),
        "qemu-img": qemu.qemu_img_version(),
    }


def recipe_hash(recipe: BaseRecipe) -> str:
    """sha256 over the recipe, the files and options the build uses, and the tool versions."""
    document = {
        "format": BASE_FORMAT,
        "recipe": asdict(recipe),
        "guest": guestfiles.fingerprint(recipe.user, recipe.hostname, recipe.suite),
        # How the Python environment is installed (only layers with one).
        "python": pyenv.fingerprint() if recipe.python_packages else "",
        "mmdebstrap_options": MMDEBSTRAP_OPTIONS,
        "tools": tool_versions(),
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
