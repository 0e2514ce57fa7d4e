"""slurm-node on Debian 12 (oldstable, still selectable): built and verified for real beside
the Debian 13 build, and `invoke diff` between the two names the OS and the packages that moved.

The Debian 12 build runs in a project of its own that also holds a copy of the Debian 13
build's record, so the other tests' "newest verified build" stays the Debian 13 one.
"""

from __future__ import annotations

import json
import shutil
from io import StringIO
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from imageforge.records import state
from tests.integration.conftest import copy_project, images_without_boxes, invoke

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bookworm_build(
    slurm_build, tmp_path_factory
) -> tuple[Path, state.BuildRecord, state.BuildRecord]:
    """The Debian 13 build's record, then `invoke build --image slurm-node` with
    `os: {local: debian-12}`, in one project: (project, debian-13 record, debian-12 record)."""
    trixie_project, done = slurm_build
    assert done.returncode == 0, done.stderr[-3000:]
    trixie = state.find(trixie_project, "slurm-node", "local", None)
    yaml = YAML()
    images = yaml.load(images_without_boxes())
    images["flavors"]["slurm-node"]["os"] = {"local": "debian-12"}
    text = StringIO()
    yaml.dump(images, text)
    project = copy_project(tmp_path_factory.mktemp("debian-12"), text.getvalue())
    kept = project / "artifacts" / "slurm-node" / trixie.id
    kept.mkdir(parents=True)
    shutil.copy(trixie.directory / "build.json", kept / "build.json")
    shutil.copytree(trixie.directory / "packer", kept / "packer")
    built = invoke(project, "build", "--image", "slurm-node")
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    bookworm = state.find(project, "slurm-node", "local", None)
    assert bookworm.id != trixie.id
    return project, trixie, bookworm


def test_the_debian_12_build_is_verified_on_debian_12(bookworm_build) -> None:
    _, trixie, bookworm = bookworm_build
    assert trixie.os == "debian-13" and bookworm.os == "debian-12"
    assert bookworm.status == "verified", bookworm.verification
    assert bookworm.verification["failed"] == 0 and bookworm.verification["passed"] >= 10
    # Each from its own release's packages: Slurm 22.05 against 24.11.
    assert bookworm.packages["slurmd"].startswith("22.05"), bookworm.packages["slurmd"]
    assert trixie.packages["slurmd"].startswith("24.11"), trixie.packages["slurmd"]
    assert "ifupdown" in bookworm.packages and "ifupdown" not in trixie.packages
    assert bookworm.base_image["recipe_hash"] != trixie.base_image["recipe_hash"]


def test_diff_names_the_os_and_the_packages_that_moved(bookworm_build) -> None:
    project, trixie, bookworm = bookworm_build
    done = invoke(project, "diff", trixie.id, bookworm.id, "--format", "json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["fields"]["os"] == {"old": "debian-13", "new": "debian-12"}
    changed = result["packages"]["changed"]
    assert changed["slurmd"]["old"].startswith("24.11") and changed["slurmd"]["new"].startswith(
        "22.05"
    )
    assert "ifupdown" in result["packages"]["added"]
    assert "systemd-resolved" in result["packages"]["removed"]
    # Of the cloud's settings, only what this project changed: it makes no Vagrant box.
    assert [key for key in result["fields"] if key.startswith("cloud.")] == ["cloud.formats"]
    shown = invoke(project, "diff", trixie.id, bookworm.id)
    assert shown.returncode == 0, shown.stderr
    assert "debian-13" in shown.stdout and "debian-12" in shown.stdout


def test_diff_of_an_unknown_build_is_one_line_and_exit_2(bookworm_build) -> None:
    project, trixie, _ = bookworm_build
    done = invoke(project, "diff", trixie.id, trixie.id[:-1])
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "did you mean" in done.stderr
