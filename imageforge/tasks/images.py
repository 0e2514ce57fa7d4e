"""Tasks about the matrix itself: list, render, validate, matrix, schema."""

from __future__ import annotations

import json
from pathlib import Path

from invoke.context import Context
from invoke.tasks import task
from rich.table import Table

from imageforge import clouds, log, packer
from imageforge.config import matrix, publishpolicy, schema
from imageforge.config.oses import warn_unverified
from imageforge.errors import ConfigError, ImageforgeError
from imageforge.records import buildinfo
from imageforge.stages import render
from imageforge.stages import validate as validation
from imageforge.tasks.common import friendly, out, project
from imageforge.tools import changed

HELP = {
    "image": "flavor to act on (default: every flavor)",
    "cloud": "cloud to act on: local, aws, gcp or openstack (default: every cloud)",
    "config": "path to images.yml (default: ./images.yml)",
    "packer_version": "render for this Packer version instead of the installed one",
    "format": "github (strategy.matrix JSON), json or table",
    "changed_since": "only the cells whose inputs changed since this git revision (its merge "
    "base with HEAD): templates, provisioners, the flavor's or cloud's settings, the base recipe",
}


def helps(*names: str) -> dict[str, str]:
    return {name: HELP[name] for name in names}


@task(name="list", help=helps("config"))
@friendly
def list_(c: Context, config: str | None = None) -> None:
    """Show the matrix: each flavor × cloud cell, with what it builds."""
    proj = project(config)
    enabled = {(cell.flavor_name, cell.cloud): cell for cell in matrix.cells(proj)}
    table = Table(title=f"{proj.display}: {len(enabled)} cells")
    table.add_column("flavor")
    for cloud in clouds.CLOUDS:
        table.add_column(cloud)
    for name in proj.images.flavors:
        row = [name]
        for cloud in clouds.CLOUDS:
            cell = enabled.get((name, cloud))
            row.append(f"{cell.os} → {clouds.get(cloud).builder}" if cell else "[dim]—[/]")
        table.add_row(*row)
    out.print(table)


@task(name="render", help=helps("image", "cloud", "config", "packer_version"))
@friendly
def render_(
    c: Context,
    image: str | None = None,
    cloud: str | None = None,
    config: str | None = None,
    packer_version: str | None = None,
) -> None:
    """Write build/<flavor>-<cloud>/*.pkr.hcl and the .pkrvars.hcl for the chosen cells."""
    proj = project(config)
    version = packer.version(packer_version)
    build_id = buildinfo.new_build_id(proj.root)
    chosen = matrix.selected(proj, image, cloud)
    warn_unverified(chosen)
    for cell in chosen:
        rendered = render.render(proj, cell, version)
        render.write_vars(
            rendered, buildinfo.packer_vars(proj.root, build_id, rendered.template_hash)
        )
        where = rendered.directory.relative_to(proj.root)
        log.info(f"{cell.name}: {where}/ (Packer {version}, template {rendered.template_hash})")


@task(help=helps("image", "cloud", "config", "packer_version"))
@friendly
def validate(
    c: Context,
    image: str | None = None,
    cloud: str | None = None,
    config: str | None = None,
    packer_version: str | None = None,
) -> None:
    """Render every chosen cell and run the real `packer validate` and `packer fmt -check`."""
    proj = project(config)
    version = packer.version(packer_version)
    chosen = matrix.selected(proj, image, cloud)
    warn_unverified(chosen)
    with log.step(f"validate {len(chosen)} cells with Packer {version}"):
        for cell in chosen:
            with log.step(cell.name):
                validation.validate(proj, cell, version)
    log.info(f"all {len(chosen)} cells valid")


@task(name="matrix", help=helps("format", "config", "image", "cloud", "changed_since"))
@friendly
def matrix_(
    c: Context,
    format: str = "github",
    config: str | None = None,
    image: str | None = None,
    cloud: str | None = None,
    changed_since: str | None = None,
) -> None:
    """Print the enabled cells for CI: `--format github` gives a strategy.matrix include list."""
    proj = project(config)
    if format not in ("github", "json", "table"):
        raise ConfigError(f"unknown format {format!r}; allowed: github, json, table")
    chosen = matrix.selected(proj, image, cloud)
    if changed_since is not None:
        found = changed.since(proj, changed_since, chosen)
        log.info(f"{len(found)} of {len(chosen)} cells changed since {changed_since}")
        for entry in found:
            log.info(f"  {entry.cell.name}: {'; '.join(entry.reasons[:3])}")
        chosen = [entry.cell for entry in found]
    shared = {x.name for x in chosen if publishpolicy.shares(proj.images, x.flavor_name, x.cloud)}
    if format == "github":
        print(matrix.github(chosen, shared))
    elif format == "json":
        cells = [
            {"image": x.flavor_name, "cloud": x.cloud, "os": x.os, "publish": x.name in shared}
            for x in chosen
        ]
        print(json.dumps(cells, indent=2))
    elif format == "table":
        for cell in chosen:
            print(f"{cell.flavor_name}\t{cell.cloud}")


@task(
    name="schema",
    help={"check": "fail if schema/images.schema.json is out of date instead of writing it"},
)
@friendly
def schema_(c: Context, check: bool = False) -> None:
    """Write the JSON Schema of images.yml (schema/images.schema.json) for editors."""
    path = Path("schema/images.schema.json")
    text = schema.text()
    if check:
        if not path.is_file() or path.read_text() != text:
            raise ImageforgeError(f"{path} is out of date", hint="run `invoke schema`")
        log.info(f"{path} is up to date")
        return
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    log.info(f"wrote {path}")


TASKS = [list_, render_, validate, matrix_, schema_]
