"""A flavor's Python environment, installed natively into its layer like its Debian packages.

Wheels are made on the host with the host's own pip (its index, proxy and certificates), for the
guest's Python version; mmdebstrap then creates the virtual environment inside the tree and
installs from those wheels with no index, so nothing is downloaded from inside the guest and
nothing is compiled in an emulated VM.
"""

from __future__ import annotations

import shlex
import sys
from importlib import metadata
from pathlib import Path

from imageforge import runner
from imageforge.errors import ImageforgeError

# The Python of each suite's python3 package: wheels must be made for it.
SUITE_PYTHON = {"bookworm": (3, 11)}
WHEELS_IN_TREE = "/tmp/imageforge-wheels"


def make_wheels(suite: str, requirements: tuple[str, ...], wheels: Path, logfile: Path) -> None:
    """Every wheel the requirements need, made by the host's pip into wheels/."""
    wanted = SUITE_PYTHON.get(suite)
    if wanted is None:
        raise ImageforgeError(f"no Python version is known for the Debian suite {suite!r}")
    if sys.version_info[:2] != wanted:
        have = ".".join(map(str, sys.version_info[:2]))
        need = ".".join(map(str, wanted))
        raise ImageforgeError(
            f"the image's Python is {need}, but imageforge runs on Python {have}: "
            "wheels for the image are made by this Python",
            hint=f"run imageforge with Python {need} (Debian 12's python3)",
        )
    wheels.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--quiet"]
    argv += ["--wheel-dir", str(wheels), *requirements]
    runner.run(argv, logfile=logfile, prefix="pip wheel", what="pip wheel (the layer's Python)")


def mmdebstrap_options(venv: str, requirements: tuple[str, ...], wheels: Path) -> list[str]:
    """Hooks that create venv in the tree and install the requirements from wheels, offline."""
    pip = f"{venv}/bin/pip install --no-index --no-cache-dir --disable-pip-version-check"
    install = f"{pip} --find-links {WHEELS_IN_TREE} " + " ".join(map(shlex.quote, requirements))
    return [
        f'--customize-hook=mkdir -p "$1{WHEELS_IN_TREE}"',
        f"--customize-hook=sync-in {shlex.quote(str(wheels))} {WHEELS_IN_TREE}",
        f'--customize-hook=chroot "$1" python3 -m venv {shlex.quote(venv)}',
        f'--customize-hook=chroot "$1" {install}',
        f'--customize-hook=rm -rf "$1{WHEELS_IN_TREE}"',
    ]


def installed(rootfs: Path, venv: str) -> dict[str, str]:
    """The distributions in the tree's venv with their versions, read natively."""
    found: dict[str, str] = {}
    for site in sorted((rootfs / venv.lstrip("/")).glob("lib/python3*/site-packages")):
        for dist in metadata.distributions(path=[str(site)]):
            name = dist.metadata["Name"]
            if name:
                found[name.lower()] = dist.version
    return dict(sorted(found.items()))
