"""The registry, report and diff of real local builds: `invoke history`, `show`, `report` (seen
by headless Chromium) and `diff` between two builds, the second with one package added."""

from __future__ import annotations

import json
import shutil
import sqlite3
from io import StringIO
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from imageforge import state
from tests.integration.conftest import ROOT, copy_project, invoke
from tests.unit.test_report import CHROMIUM, is_a_rendering, ocr, render_png

pytestmark = pytest.mark.integration

ADDED = "tree"  # a small package with no dependency the image lacks


@pytest.fixture(scope="module")
def built(slurm_build) -> tuple[Path, state.BuildRecord]:
    project, done = slurm_build
    assert done.returncode == 0, done.stderr[-3000:]
    return project, state.find(project, "slurm-node", "local", None)


def test_every_build_is_a_registry_row_and_history_lists_it(built) -> None:
    project, record = built
    db = project / "artifacts" / "registry.sqlite3"
    with sqlite3.connect(db) as connection:
        rows = dict(connection.execute("SELECT id, status FROM builds").fetchall())
    assert rows[record.id] == "verified"
    done = invoke(project, "history", "--image", "slurm-node")
    assert done.returncode == 0, done.stderr
    assert record.id in done.stdout and "verified" in done.stdout
    shown = invoke(project, "show", record.id)
    assert shown.returncode == 0, shown.stderr
    assert " passed, 0 failed" in shown.stdout
    assert f"{record.flavor}.box" in shown.stdout


def test_the_report_of_the_local_build_reads_at_a_glance_in_chromium(built, tmp_path) -> None:
    project, record = built
    done = invoke(project, "report", record.id)
    assert done.returncode == 0, done.stderr
    html = record.directory / "report.html"
    page = html.read_text()
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")
    assert CHROMIUM.is_file(), "scripts/setup.sh installs chromium"
    png = record.directory / "report.png"  # kept beside the report
    render_png(html, png, tmp_path / "profile")
    assert is_a_rendering(png)
    text = ocr(png).lower()
    print(f"report screenshot: {png}")
    for wanted in ("slurm-node", "verified", "packer", "passed"):
        assert wanted in text, f"{wanted!r} is not readable on the page: {text[:800]}"


@pytest.fixture(scope="module")
def second_build(built, tmp_path_factory) -> tuple[Path, str, str]:
    """The same flavor with one package more, built (not verified) beside a copy of the
    first build's record; returns the project and the two build ids."""
    _, first = built
    yaml = YAML()
    images = yaml.load((ROOT / "images.yml").read_text())
    images["flavors"]["slurm-node"]["packages"].append(ADDED)
    project = tmp_path_factory.mktemp("diff-build")
    text = StringIO()
    yaml.dump(images, text)
    copy_project(project, text.getvalue())
    kept = project / "artifacts" / "slurm-node" / first.id
    kept.mkdir(parents=True)
    shutil.copy(first.directory / "build.json", kept / "build.json")
    shutil.copytree(first.directory / "packer", kept / "packer")
    done = invoke(project, "build", "--image", "slurm-node", "--no-verify")
    assert done.returncode == 0, done.stderr[-3000:]
    second = state.find(project, "slurm-node", "local", None)
    assert second.id != first.id
    return project, first.id, second.id


def test_diff_shows_exactly_the_package_that_was_added(second_build) -> None:
    project, first, second = second_build
    done = invoke(project, "diff", first, second, "--format", "json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert list(result["packages"]["added"]) == [ADDED]
    assert result["packages"]["removed"] == {} and result["packages"]["changed"] == {}
    assert result["python_packages"] == {"added": {}, "removed": {}, "changed": {}}
    assert json.loads(result["fields"]["flavor.packages"]["new"]) == [
        *json.loads(result["fields"]["flavor.packages"]["old"]),
        ADDED,
    ]
    assert not [key for key in result["fields"] if key.startswith("cloud.")]
    shown = invoke(project, "diff", first, second)
    assert shown.returncode == 0, shown.stderr
    assert f"  + {ADDED} " in shown.stdout and "packages added: 1" in shown.stdout
    assert "packages removed: 0" in shown.stdout and "packages changed: 0" in shown.stdout


def test_diff_of_an_unknown_build_is_one_line_and_exit_2(second_build) -> None:
    project, first, _ = second_build
    done = invoke(project, "diff", first, first[:-1])
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "did you mean" in done.stderr
