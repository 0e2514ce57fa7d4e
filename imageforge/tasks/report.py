"""`invoke report BUILD`: a build's self-contained HTML report."""

from __future__ import annotations

from pathlib import Path

from invoke.context import Context
from invoke.tasks import task

from imageforge import log
from imageforge.records import registry
from imageforge.tasks.common import friendly, project
from imageforge.tools import report as reports

HELP = {
    "build": "build id, e.g. 20260101-120000-abc1234-x1y2z3",
    "output": "where to write it (default: report.html in the build's directory)",
    "config": "path to images.yml (default: ./images.yml)",
}


@task(help=HELP)
@friendly
def report(c: Context, build: str, output: str | None = None, config: str | None = None) -> None:
    """Write a build's report: status, timings, tests, SBOM, publishing, screenshot (one file)."""
    proj = project(config)
    record = registry.find(proj.root, build)
    flavor = proj.images.flavors.get(record.flavor)
    path = reports.write(record, proj.root / "templates", Path(output) if output else None, flavor)
    log.info(f"report of {record.flavor} build {record.id} ({record.status}): {path}")


TASKS = [report]
