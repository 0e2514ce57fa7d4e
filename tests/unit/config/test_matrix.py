"""The matrix: product, exclude, include, and the GitHub Actions form."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from imageforge import config
from imageforge.config import matrix
from imageforge.errors import ConfigError

from ..conftest import ROOT, write


def expected_cells(path: Path) -> set[tuple[str, str]]:
    """The cells images.yml asks for, computed from the raw file (not by imageforge)."""
    raw = yaml.safe_load(path.read_text())
    wanted = raw.get("matrix") or {}
    flavors = wanted.get("flavors") or list(raw["flavors"])
    clouds = wanted.get("clouds") or ["local", "aws", "gcp", "openstack"]
    cells = {(f, c) for f in flavors for c in clouds}
    cells -= {(e["flavor"], e["cloud"]) for e in wanted.get("exclude") or []}
    return cells | {(i["flavor"], i["cloud"]) for i in wanted.get("include") or []}


def test_shipped_matrix_has_the_cells_the_file_asks_for() -> None:
    cells = matrix.cells(config.load(ROOT / "images.yml"))
    assert {(c.flavor_name, c.cloud) for c in cells} == expected_cells(ROOT / "images.yml")
    assert len({c.name for c in cells}) == len(cells) > 0


def test_full_product_of_a_fixture_file(scratch: Path) -> None:
    write(scratch, "flavors:\n  a: {}\n  b: {}\n  c: {}\n")
    cells = matrix.cells(config.load("images.yml"))
    assert len(cells) == 12
    assert [c.name for c in cells[:4]] == ["a-local", "a-aws", "a-gcp", "a-openstack"]


def test_exclude_and_include(scratch: Path) -> None:
    write(
        scratch,
        "flavors:\n  a: {}\n  b: {}\n"
        "matrix:\n  flavors: [a]\n  clouds: [local, aws]\n"
        "  exclude:\n    - {flavor: a, cloud: aws}\n"
        "  include:\n    - {flavor: b, cloud: gcp}\n",
    )
    cells = matrix.cells(config.load("images.yml"))
    assert [(c.flavor_name, c.cloud) for c in cells] == [("a", "local"), ("b", "gcp")]


def test_github_format_is_an_include_list() -> None:
    project = config.load(ROOT / "images.yml")
    data = json.loads(matrix.github(matrix.cells(project)))
    assert set(data) == {"include"}
    assert len(data["include"]) == len(expected_cells(ROOT / "images.yml"))
    assert {
        "image": "slurm-node",
        "cloud": "aws",
        "name": "slurm-node-aws",
        "os": "debian-13",
        "publish": False,  # the shipped images.yml shares nothing
    } in data["include"]


def test_find_suggests_the_nearest_image() -> None:
    project = config.load(ROOT / "images.yml")
    with pytest.raises(ConfigError, match=r"unknown image 'slurm'.*did you mean 'slurm-node'"):
        matrix.find(project, "slurm", "local")
    with pytest.raises(ConfigError, match=r"unknown cloud 'aws2'.*did you mean 'aws'"):
        matrix.find(project, "slurm-node", "aws2")


def test_cell_outside_matrix_is_refused(scratch: Path) -> None:
    write(scratch, "flavors:\n  a: {}\nmatrix:\n  clouds: [local]\n")
    with pytest.raises(ConfigError, match="a on aws is not in the matrix"):
        matrix.find(config.load("images.yml"), "a", "aws")


def test_selected_refuses_a_cloud_outside_the_matrix(scratch: Path) -> None:
    write(scratch, "flavors:\n  a: {}\nmatrix:\n  clouds: [local]\n")
    project = config.load("images.yml")
    with pytest.raises(ConfigError, match=r"^the matrix of images.yml has no cell on aws"):
        matrix.selected(project, None, "aws")
    assert [c.name for c in matrix.selected(project, None, "local")] == ["a-local"]


def invoke(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=project, capture_output=True, text=True
    )


CLI = {
    "unknown cloud": (
        ["matrix", "--cloud", "azure"],
        "unknown cloud 'azure'; allowed: local, aws, gcp, openstack",
    ),
    "misspelt cloud": (["validate", "--cloud", "awz"], "did you mean 'aws'?"),
    "misspelt cloud of one image": (
        ["validate", "--image", "a", "--cloud", "gpc"],
        "unknown cloud 'gpc'; allowed: local, aws, gcp, openstack; did you mean 'gcp'?",
    ),
    "misspelt image": (["render", "--image", "ab"], "unknown image 'ab'; allowed: a, b"),
    "cloud outside the matrix": (
        ["matrix", "--cloud", "openstack"],
        "the matrix of images.yml has no cell on openstack",
    ),
    "unknown build id": (
        ["verify", "--image", "a", "--build", "20250101-nope"],
        "no build '20250101-nope' of a on local (recent: none)",
    ),
    "build id that climbs": (["verify", "--image", "a", "--build", ".."], "no build '..' of a"),
    "unknown image to verify": (["verify", "--image", "zz"], "unknown image 'zz'"),
}


@pytest.mark.parametrize("name", list(CLI))
def test_bad_command_line_values_exit_2_with_one_line(scratch: Path, name: str) -> None:
    args, expected = CLI[name]
    write(scratch, "flavors:\n  a: {}\n  b: {}\nmatrix:\n  clouds: [local, aws, gcp]\n")
    (scratch / "tasks.py").write_text((ROOT / "tasks.py").read_text())
    result = invoke(scratch, *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert expected in result.stderr
