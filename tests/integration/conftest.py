"""Integration fixtures: a copy of the project to build in, and process/temp-file accounting."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imageforge.clouds.local import disk

ROOT = Path(__file__).resolve().parents[2]
PROJECT_PARTS = ("tasks.py", "packer", "templates", "provisioners", "vagrant", "tests/infra")


def copy_project(dest: Path, images_yml: str | None = None) -> Path:
    """A throwaway copy of the project's build inputs (its own artifacts/ and build/)."""
    for part in PROJECT_PARTS:
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, dest / part)
        else:
            (dest / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest / part)
    (dest / "images.yml").write_text(images_yml or (ROOT / "images.yml").read_text())
    return dest


def invoke(project: Path, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=project,
        capture_output=True,
        text=True,
        **kwargs,
    )


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes (not zombies) that mention text."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if text in cmdline and state != "Z":
            found.append(cmdline)
    return found


def temp_leftovers(build_id: str) -> list[Path]:
    import tempfile

    return sorted(Path(tempfile.gettempdir()).glob(f"imageforge-*{build_id}*"))


@pytest.fixture(scope="session")
def base_cache() -> Path:
    """Where the Debian base image is cached; CI and developers keep it between runs."""
    path = Path(
        os.environ.get("IMAGEFORGE_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imageforge"
    )
    return path


@pytest.fixture(scope="session")
def slurm_build(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One real `invoke build --image slurm-node` (layer, packer, verification, signed
    provenance with a key `invoke keygen` made) per test run, shared by every test that only
    reads what it made."""
    project = copy_project(tmp_path_factory.mktemp("local-build"))
    env = {**os.environ, SIGNING_KEY: str(signing_key(project))}
    made = invoke(project, "keygen", env=env)
    assert made.returncode == 0, made.stderr
    return project, invoke(project, "build", "--image", "slurm-node", env=env)


SIGNING_KEY = "IMAGEFORGE_SIGNING_KEY"


def signing_key(project: Path) -> Path:
    """The signing key of a test project's builds: beside the project, never in it."""
    return project.parent / f"{project.name}-signing" / "signing-key"


def images_without_boxes() -> str:
    """The shipped images.yml, but local builds make no Vagrant box: the box is made and
    tested from the slurm-node build (test_vagrant.py); the other flavors' tests need none."""
    text = (ROOT / "images.yml").read_text()
    marker = "  local:\n    accelerator: auto\n"
    assert marker in text, "images.yml's clouds.local changed; update this helper"
    return text.replace(marker, marker + "    formats: [qcow2]\n", 1)


@pytest.fixture(scope="session")
def desktop_build(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One real `invoke build --image training-desktop`, screenshot included, per test run."""
    project = copy_project(tmp_path_factory.mktemp("desktop-build"), images_without_boxes())
    return project, invoke(project, "build", "--image", "training-desktop")


@pytest.fixture(scope="session")
def quantum_mobile_build(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One real `invoke build --image quantum-mobile`, the AiiDA calculation included."""
    project = copy_project(tmp_path_factory.mktemp("qm-build"), images_without_boxes())
    return project, invoke(project, "build", "--image", "quantum-mobile")


class Offline:
    """debugfs on a raw copy of the image's root partition."""

    def __init__(self, image: Path, tmp: Path) -> None:
        self.raw = tmp / "disk.raw"
        subprocess.run(["qemu-img", "convert", "-O", "raw", image, self.raw], check=True)
        self.device = f"{self.raw}?offset={disk.PARTITION_START_MIB * disk.MIB}"

    def debugfs(self, request: str) -> str:
        result = subprocess.run(
            ["debugfs", "-R", request, self.device], capture_output=True, text=True, check=True
        )
        return result.stdout

    def names(self, directory: str) -> list[str]:
        return [n for n in self.debugfs(f"ls -p {directory}").split("\n") if n.strip()]

    def files(self, directory: str) -> dict[str, int]:
        """name: size of the regular files directly in directory (ls -p rows: /ino/mode/...)."""
        found = {}
        for row in self.names(directory):
            fields = row.strip("/").split("/")
            if len(fields) >= 6 and fields[1].startswith("100"):
                found[fields[4]] = int(fields[5])
        return found
