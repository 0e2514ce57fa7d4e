"""The registry and report of a real local build: `invoke history`, `show` and `report` (seen
by headless Chromium). `invoke diff` of two real builds is in test_debian12.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from imageforge.records import state
from tests.integration.conftest import invoke
from tests.unit.tools.test_report import CHROMIUM, is_a_rendering, ocr, render_png

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
