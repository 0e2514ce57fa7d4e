"""The base OS of each cell: Debian 13 by default, Ubuntu on clouds only and never verified
locally, which every task that renders, builds or publishes such a cell says once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from invoke import Context

from imageforge import config
from imageforge.config import matrix, oses
from imageforge.errors import ConfigError
from imageforge.stages import build, publishplan, validate
from imageforge.tasks import images as image_tasks
from imageforge.tasks import lifecycle
from tests.records import make_record

from ..conftest import write

# Two Ubuntu cells on two clouds, one on another Ubuntu, and Debian everywhere else.
MIXED = """\
publish:
  aws: {public: true}
flavors:
  a:
    os: {aws: ubuntu-24.04, gcp: ubuntu-24.04, openstack: ubuntu-22.04}
  b: {}
matrix:
  clouds: [local, aws, gcp, openstack]
"""
NOTE = "not verified locally"


def load(scratch: Path, text: str = MIXED) -> config.Project:
    write(scratch, text)
    return matrix.load(scratch / "images.yml")


def warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if NOTE in line]


def test_every_cloud_and_local_default_to_debian_13(scratch: Path) -> None:
    project = load(scratch, "flavors:\n  a: {}\n")
    assert {c.cloud: c.os for c in matrix.cells(project)} == dict.fromkeys(
        ("local", "aws", "gcp", "openstack"), "debian-13"
    )
    assert oses.unverified_note(matrix.cells(project)) is None


def test_ubuntu_is_for_cloud_cells_only(scratch: Path) -> None:
    write(scratch, "flavors:\n  a:\n    os: {local: ubuntu-24.04}\n")
    with pytest.raises(ConfigError, match=r"flavors.a.os.local: 'ubuntu-24.04' is not allowed"):
        matrix.load(scratch / "images.yml")
    write(scratch, "flavors:\n  a:\n    os: {local: debian-12, aws: debian-12}\n")
    assert {c.os for c in matrix.cells(matrix.load(scratch / "images.yml"))} == {
        "debian-12",
        "debian-13",
    }


def test_the_note_names_every_unverified_cell_in_one_line_by_os(scratch: Path) -> None:
    note = oses.unverified_note(matrix.cells(load(scratch)))
    assert note is not None and "\n" not in note
    assert note.startswith(
        f"{NOTE}: ubuntu-24.04 (a-aws, a-gcp); ubuntu-22.04 (a-openstack). imageforge builds and "
        "boots only Debian"
    )
    assert "b-" not in note and "a-local" not in note


def test_render_says_it_once_for_all_its_cells(
    scratch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    load(scratch)
    image_tasks.render_(Context(), config="images.yml")
    err = capsys.readouterr().err
    assert len(warnings(err)) == 1, err
    assert "ubuntu-24.04 (a-aws, a-gcp); ubuntu-22.04 (a-openstack)" in warnings(err)[0]
    assert (scratch / "build" / "a-aws" / "source.pkr.hcl").is_file()  # and renders them
    image_tasks.render_(Context(), config="images.yml", image="b")
    assert warnings(capsys.readouterr().err) == []  # Debian only: nothing to say


def test_validate_says_it_once(
    scratch: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    load(scratch)
    checked: list[str] = []
    monkeypatch.setattr(validate, "validate", lambda p, cell, v: checked.append(cell.name))
    image_tasks.validate(Context(), config="images.yml", packer_version="1.6.6")
    assert len(checked) == 8
    assert len(warnings(capsys.readouterr().err)) == 1


@pytest.mark.parametrize(("cloud", "said"), [("aws", 1), ("local", 0)])
def test_build_says_it_for_an_ubuntu_cell(
    scratch: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    cloud: str,
    said: int,
) -> None:
    load(scratch)
    built: list[str] = []
    monkeypatch.setattr(build, "build", lambda p, cell, **kw: built.append(cell.name))
    lifecycle.build(Context(), image="a", cloud=cloud, config="images.yml")
    assert built == [f"a-{cloud}"]
    found = warnings(capsys.readouterr().err)
    assert len(found) == said
    if said:
        assert "ubuntu-24.04 (a-aws)." in found[0]


def test_publish_says_it_once_for_the_cells_it_would_share(
    scratch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = load(scratch)
    for flavor in ("a", "b"):
        make_record(scratch / "artifacts", flavor, "aws", artifact_ids={"eu-west-1": "ami-1"})
    publishplan.run(project, None, "aws", dry_run=True)
    err = capsys.readouterr().err
    assert [line.split(": ", 1)[1] for line in warnings(err)] == [
        oses.UNVERIFIED_NOTE.format(what="ubuntu-24.04 (a-aws)")
    ]
    publishplan.run(project, "b", "aws", dry_run=True)  # Debian
    assert warnings(capsys.readouterr().err) == []
    publishplan.run(project, "a", "aws", revoke=True, dry_run=True)  # takes back: no warning
    assert warnings(capsys.readouterr().err) == []


def test_list_shows_the_os_of_every_cell_and_the_matrix_json_has_it(
    scratch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    load(scratch, "flavors:\n  a:\n    os: {aws: ubuntu-24.04}\nmatrix:\n  clouds: [local, aws]\n")
    image_tasks.list_(Context(), config="images.yml")
    shown = capsys.readouterr().out  # the matrix is what `list` is asked for: stdout
    assert "debian-13 → qemu" in shown and "ubuntu-24.04 → amazon-ebs" in shown
    image_tasks.matrix_(Context(), format="json", config="images.yml")
    listed: Any = json.loads(capsys.readouterr().out)
    assert listed == [
        {"image": "a", "cloud": "local", "os": "debian-13", "publish": False},
        {"image": "a", "cloud": "aws", "os": "ubuntu-24.04", "publish": False},
    ]
    image_tasks.matrix_(Context(), format="github", config="images.yml")
    include = json.loads(capsys.readouterr().out)["include"]
    assert [(c["name"], c["os"]) for c in include] == [
        ("a-local", "debian-13"),
        ("a-aws", "ubuntu-24.04"),
    ]
