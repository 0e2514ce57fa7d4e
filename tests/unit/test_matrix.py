"""The matrix: product, exclude, include, and the GitHub Actions form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imageforge import config, matrix
from imageforge.errors import ConfigError

from .conftest import ROOT, write


def test_shipped_matrix_has_all_twelve_cells() -> None:
    cells = matrix.cells(config.load(ROOT / "images.yml"))
    assert len(cells) == 12
    assert len({c.name for c in cells}) == 12


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
    assert len(data["include"]) == 12
    assert {
        "image": "slurm-node",
        "cloud": "aws",
        "name": "slurm-node-aws",
        "os": "ubuntu-24.04",
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
