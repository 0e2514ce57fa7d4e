"""`invoke outdated`: the package updates each cell's newest verified image still misses.

Exit code 0: no security update is pending; 100 (tools.outdated.SECURITY_PENDING): at least one
is, so a scheduled workflow rebuilds the cells `--format github` prints; 1: none is known, but
a verified build could not be checked; 2: a usage error.
"""

from __future__ import annotations

import json

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task
from rich.table import Table

from imageforge import log
from imageforge.config import matrix, publishpolicy
from imageforge.errors import ConfigError
from imageforge.tasks.common import friendly, out, project
from imageforge.tools import outdated as checks
from imageforge.tools.outdated import CellReport

FORMATS = ("table", "json", "github")
HELP = {
    "format": "table, json (per cell: build, packages, CVEs) or github (the cells to rebuild, "
    "as a strategy.matrix)",
    "image": "flavor to check (default: every flavor)",
    "cloud": "cloud to check: local, aws, gcp or openstack (default: every cloud)",
    "config": "path to images.yml (default: ./images.yml)",
}


@task(help=HELP)
@friendly
def outdated(
    c: Context,
    format: str = "table",
    image: str | None = None,
    cloud: str | None = None,
    config: str | None = None,
) -> None:
    """List the packages each cell's newest verified build has older than its suite, -updates
    and -security; name the CVEs of security updates. Exits 100 when one is pending."""
    if format not in FORMATS:
        raise ConfigError(f"unknown format {format!r}; allowed: {', '.join(FORMATS)}")
    proj = project(config)
    cells = matrix.selected(proj, image, cloud)
    reports = checks.check(proj.root, cells)
    if format == "json":
        document = {
            "security_pending": any(r.security_pending for r in reports),
            "cells": [r.as_json() for r in reports],
        }
        print(json.dumps(document, indent=2))
    elif format == "github":
        pending = {(r.flavor, r.cloud) for r in reports if r.security_pending}
        chosen = [x for x in cells if (x.flavor_name, x.cloud) in pending]
        shared = {
            x.name for x in chosen if publishpolicy.shares(proj.images, x.flavor_name, x.cloud)
        }
        print(matrix.github(chosen, shared))
    else:
        out.print(table(reports))
    for report in reports:
        if report.unchecked:
            log.warn(f"{report.flavor} on {report.cloud}: not checked: {report.unchecked}")
    if any(r.security_pending for r in reports):
        raise Exit(code=checks.SECURITY_PENDING)
    if any(r.failed for r in reports):  # never "nothing pending" when it could not look
        raise Exit(code=checks.CHECK_FAILED)


def table(reports: list[CellReport]) -> Table:
    """One row per outdated package, cells in matrix order; unchecked cells say why."""
    grid = Table(title="outdated packages of the newest verified builds")
    for column in ("cell", "build", "package", "installed", "candidate", "security", "CVEs"):
        grid.add_column(column)
    for report in reports:
        cell = f"{report.flavor} on {report.cloud}"
        if report.unchecked:
            grid.add_row(cell, report.build or "—", f"[yellow]not checked: {report.unchecked}[/]")
            continue
        if not report.updates:
            grid.add_row(cell, report.build, "[green]up to date[/]")
        for update in report.updates:
            named = "unknown" if update.cves is None else ", ".join(update.cves) or "—"
            grid.add_row(
                cell,
                report.build,
                update.name,
                update.installed,
                update.candidate,
                "[red]yes[/]" if update.security else "",
                named if update.security else "",
            )
    return grid


TASKS = [outdated]
