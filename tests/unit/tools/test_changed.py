"""`invoke matrix --changed-since REF`: only the cells whose inputs changed, in a real git repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PARTS = ("provisioners", "templates", "packer", "vagrant", "tests/infra", "imageforge")
ALL = {
    f"{flavor}-{cloud}"
    for flavor in ("quantum-mobile", "training-desktop", "slurm-node")
    for cloud in ("local", "aws", "gcp", "openstack")
}


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=True
    )
    return done.stdout


def changed(repo: Path, ref: str = "start") -> set[str]:
    """The cells `invoke matrix --format github --changed-since ref` prints."""
    done = invoke(repo, "matrix", "--format", "github", "--changed-since", ref)
    assert done.returncode == 0, done.stderr
    include = json.loads(done.stdout)["include"]
    return {entry["name"] for entry in include}


def invoke(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=repo, capture_output=True, text=True
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with the project's images.yml, tasks and inputs, tagged `start`."""
    for name in PARTS:
        shutil.copytree(ROOT / name, tmp_path / name)
    for name in ("images.yml", "tasks.py", "README.md", ".gitignore"):
        shutil.copy(ROOT / name, tmp_path / name)
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "start")
    git(tmp_path, "tag", "start")
    return tmp_path


def touch(path: Path) -> None:
    with path.open("a") as file:
        file.write("\n# changed\n")


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} is not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_nothing_changed_gives_an_empty_include_list(repo: Path) -> None:
    (repo / "README.md").write_text("only the docs changed\n")
    git(repo, "commit", "-qam", "docs")
    assert changed(repo) == set()


def test_a_flavor_provisioner_rebuilds_that_flavor_on_every_cloud(repo: Path) -> None:
    with (repo / "provisioners/slurm-node/20-slurm.py").open("a") as script:
        script.write("# changed\n")
    git(repo, "commit", "-qam", "slurm")
    assert changed(repo) == {f"slurm-node-{c}" for c in ("local", "aws", "gcp", "openstack")}


def test_uncommitted_and_untracked_changes_count(repo: Path) -> None:
    (repo / "provisioners/training-desktop/30-extra.sh").write_text("#!/bin/sh\n")
    assert changed(repo) == {f"training-desktop-{c}" for c in ("local", "aws", "gcp", "openstack")}


def test_a_package_added_to_a_flavor_rebuilds_only_that_flavor(repo: Path) -> None:
    edit(repo / "images.yml", "packages: [slurmd", "packages: [tree, slurmd")
    git(repo, "commit", "-qam", "tree")
    assert changed(repo) == {f"slurm-node-{c}" for c in ("local", "aws", "gcp", "openstack")}


def test_a_publish_policy_alone_rebuilds_nothing(repo: Path) -> None:
    with (repo / "images.yml").open("a") as images:
        images.write("publish:\n  aws: {public: true}\n")
    git(repo, "commit", "-qam", "publish")
    assert changed(repo) == set()


def test_a_cloud_setting_rebuilds_that_cloud_only(repo: Path) -> None:
    edit(repo / "images.yml", "region: eu-west-1", "region: eu-north-1")
    assert changed(repo) == {
        f"{f}-aws" for f in ("quantum-mobile", "training-desktop", "slurm-node")
    }


def test_a_cloud_source_template_or_module_rebuilds_that_cloud_only(repo: Path) -> None:
    with (repo / "templates/sources/gcp.pkr.hcl.j2").open("a") as template:
        template.write("\n")
    assert changed(repo) == {
        f"{f}-gcp" for f in ("quantum-mobile", "training-desktop", "slurm-node")
    }
    git(repo, "commit", "-qam", "gcp")
    git(repo, "tag", "gcp")
    touch(repo / "imageforge/clouds/aws/source.py")
    assert changed(repo, "gcp") == {
        f"{f}-aws" for f in ("quantum-mobile", "training-desktop", "slurm-node")
    }


def test_the_base_recipe_rebuilds_every_local_cell(repo: Path) -> None:
    touch(repo / "imageforge/clouds/local/recipe.py")
    assert changed(repo) == {
        f"{f}-local" for f in ("quantum-mobile", "training-desktop", "slurm-node")
    }


def test_the_build_template_or_rendering_rebuilds_every_cell(repo: Path) -> None:
    with (repo / "templates/build.pkr.hcl.j2").open("a") as template:
        template.write("\n")
    assert changed(repo) == ALL


@pytest.mark.parametrize(
    "path",
    [
        "provisioners/common/00-host-passthrough.sh",
        "provisioners/common/05-metadata-guard.sh",
        "provisioners/common/06-firstboot.py",
        "imageforge/config/userdata.py",
    ],
)
def test_what_every_build_gets_rebuilds_every_cell(repo: Path, path: str) -> None:
    """render adds these to every build, whatever its flavor lists."""
    touch(repo / path)
    assert changed(repo) == ALL


def test_the_os_table_rebuilds_every_cell(repo: Path) -> None:
    touch(repo / "imageforge/config/oses.py")
    assert changed(repo) == ALL


def test_a_flavors_os_rebuilds_that_flavor_only(repo: Path) -> None:
    # `os:` is part of the flavor's settings, which each of its cells records whole
    edit(repo / "images.yml", "  slurm-node:\n", "  slurm-node:\n    os: {gcp: debian-12}\n")
    assert changed(repo) == {f"slurm-node-{c}" for c in ("local", "aws", "gcp", "openstack")}


def test_a_cell_new_in_the_matrix_is_built(repo: Path) -> None:
    edit(
        repo / "images.yml",
        "clouds: [local, aws, gcp, openstack]",
        "clouds: [local, aws, gcp, openstack]\n  exclude: [{flavor: slurm-node, cloud: gcp}]",
    )
    git(repo, "commit", "-qam", "exclude")
    git(repo, "tag", "excluded")
    assert changed(repo) == set()  # a cell taken out needs no build
    edit(repo / "images.yml", "exclude: [{flavor: slurm-node, cloud: gcp}]", "exclude: []")
    assert changed(repo, "excluded") == {"slurm-node-gcp"}


def test_an_unreadable_images_yml_at_ref_rebuilds_everything(repo: Path) -> None:
    good = (repo / "images.yml").read_text()
    (repo / "images.yml").write_text("flavors: [\n")
    git(repo, "commit", "-qam", "broken")
    git(repo, "tag", "broken")
    (repo / "images.yml").write_text(good)
    done = invoke(repo, "matrix", "--format", "table", "--changed-since", "broken")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == len(ALL)
    assert "cannot be read" in done.stderr


def test_an_unknown_revision_is_one_line_and_exit_2(repo: Path) -> None:
    done = invoke(repo, "matrix", "--changed-since", "no-such-branch")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "no-such-branch" in done.stderr
    assert "Traceback" not in done.stderr


def test_code_outside_the_inputs_rebuilds_nothing(repo: Path) -> None:
    touch(repo / "imageforge/tools/report.py")
    assert changed(repo) == set()


@pytest.mark.parametrize("ref", ["--all", "--output=x", " ", "HEAD~99"])
def test_options_and_missing_revisions_are_refused(repo: Path, ref: str) -> None:
    done = invoke(repo, "matrix", f"--changed-since={ref}")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1


def test_outside_a_git_checkout_is_one_line(repo: Path) -> None:
    shutil.rmtree(repo / ".git")
    done = invoke(repo, "matrix", "--changed-since", "HEAD")
    assert done.returncode == 2 and "not in a git checkout" in done.stderr
