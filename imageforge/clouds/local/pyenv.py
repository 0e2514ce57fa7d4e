"""A flavor's Python environment, installed natively into its layer like its Debian packages.

Wheels are fetched on the host by the host's own pip (its index, proxy and certificates), chosen
for the guest's exact Python version; mmdebstrap then creates the virtual environment inside the
tree and installs from those wheels with no index, so nothing is downloaded from inside the guest
and nothing is compiled in an emulated VM.
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
import sys
from importlib import metadata
from pathlib import Path

from imageforge.clouds.local import reproducible
from imageforge.config import oses
from imageforge.errors import ImageforgeError
from imageforge.process import runner

WHEELS_IN_TREE = "/tmp/imageforge-wheels"
# SOURCE_DATE_EPOCH: pip byte-compiles into hash-checked .pyc files, which hold no file times.
CLEAN_ENV = (
    "env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "
    f"SOURCE_DATE_EPOCH={reproducible.EPOCH}"
)


def pip_download() -> list[str]:
    """The host's pip download, quiet (its index, proxy and certificates)."""
    return [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet"]


def make_wheels(
    suite: str,
    requirements: tuple[str, ...],
    wheels: Path,
    logfile: Path,
    built: tuple[Path, ...] | list[Path] = (),
) -> None:
    """Every wheel the requirements need for the suite's Python, fetched by the host's pip
    (its index, proxy and certificates). Only wheels: nothing is built for the image."""
    # The suite's exact python3 version: a package may require a newer micro version than the
    # suite has (e.g. >=3.11.5 while bookworm has 3.11.2).
    try:
        version = oses.by_suite(suite).python
    except KeyError:
        raise ImageforgeError(
            f"no Python version is known for the Debian suite {suite!r}"
        ) from None
    wheels.mkdir(parents=True, exist_ok=True)
    argv = pip_download()
    argv += ["--only-binary=:all:", "--python-version", version, "--implementation", "cp"]
    for wheel in built:  # wheels built from source for this suite (wheelbuild.py)
        shutil.copy(wheel, wheels / wheel.name)
    if built:
        argv += ["--find-links", str(wheels)]
    argv += ["--dest", str(wheels), *requirements]
    runner.run(
        argv,
        logfile=logfile,
        prefix="pip download",
        what=f"pip download (wheels for the image's Python {version})",
    )


def mmdebstrap_options(venv: str, requirements: tuple[str, ...], wheels: Path) -> list[str]:
    """Hooks that create venv in the tree and install the requirements from wheels, offline.

    Inside the tree, pip runs with a clean environment: no PIP_* setting of the host applies.
    """
    pip = f"{venv}/bin/pip install --no-index --no-cache-dir --disable-pip-version-check"
    install = f"{pip} --find-links {WHEELS_IN_TREE} " + " ".join(map(shlex.quote, requirements))
    return [
        f'--customize-hook=mkdir -p "$1{WHEELS_IN_TREE}"',
        f"--customize-hook=sync-in {shlex.quote(str(wheels))} {WHEELS_IN_TREE}",
        f'--customize-hook=chroot "$1" {CLEAN_ENV} python3 -m venv {shlex.quote(venv)}',
        f'--customize-hook=chroot "$1" {CLEAN_ENV} {install}',
        f'--customize-hook=rm -rf "$1{WHEELS_IN_TREE}"',
    ]


def fingerprint() -> str:
    """Changes whenever the way this module installs an environment changes."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(Path(__file__).with_name("wheelbuild.py").read_bytes())
    return digest.hexdigest()


def installed(rootfs: Path, venv: str) -> dict[str, str]:
    """The distributions in the tree's venv with their versions, read natively."""
    found: dict[str, str] = {}
    for site in sorted((rootfs / venv.lstrip("/")).glob("lib/python3*/site-packages")):
        for dist in metadata.distributions(path=[str(site)]):
            name = dist.metadata["Name"]
            if name:
                found[name.lower()] = dist.version
    return dict(sorted(found.items()))
