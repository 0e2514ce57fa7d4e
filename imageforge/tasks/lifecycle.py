"""Tasks that make images: build and verify."""

from __future__ import annotations

from invoke.context import Context
from invoke.tasks import task

from imageforge.config import matrix
from imageforge.config.oses import warn_unverified
from imageforge.errors import ConfigError
from imageforge.records import state
from imageforge.stages import build as builder
from imageforge.stages import verify as verification
from imageforge.tasks.common import friendly, project
from imageforge.tools import cost

HELP = {
    "image": "flavor to build, e.g. slurm-node",
    "cloud": "local (default), aws, gcp or openstack",
    "config": "path to images.yml (default: ./images.yml)",
    "force": "build again even if a verified build of the same content exists",
    "refresh": "rebuild the package layer even if its recipe is unchanged (security updates)",
    "no_verify": "skip verification (the build cannot be published until verified)",
    "build": "build id (default: the newest build)",
    "packer_version": "render for this Packer version instead of the installed one",
    "dry_run": "print what would be built and its cloud cost estimate (images.yml `prices:`); "
    "build nothing",
}


@task(help={k: v for k, v in HELP.items() if k != "build"})
@friendly
def build(
    c: Context,
    image: str | None = None,
    cloud: str = "local",
    config: str | None = None,
    force: bool = False,
    refresh: bool = False,
    no_verify: bool = False,
    packer_version: str | None = None,
    dry_run: bool = False,
) -> None:
    """Build an image with Packer (local: QEMU) and verify it with testinfra."""
    proj = project(config)
    if dry_run:
        cost.show(cost.plan(proj, matrix.selected(proj, image, cloud)))
        return
    if image is None:
        raise ConfigError("--image is required (only --dry-run plans every cell of a cloud)")
    cell = matrix.find(proj, image, cloud)
    warn_unverified([cell])
    builder.build(
        proj,
        cell,
        force=force,
        refresh=refresh,
        verify=not no_verify,
        packer_version=packer_version,
    )


@task(help={k: HELP[k] for k in ("image", "cloud", "build", "config")})
@friendly
def verify(
    c: Context,
    image: str,
    cloud: str = "local",
    build: str | None = None,
    config: str | None = None,
) -> None:
    """Boot a build (local: QEMU; cloud: a verification instance) and run the suites in it."""
    proj = project(config)
    cell = matrix.find(proj, image, cloud)
    record = state.find(proj.root, cell.flavor_name, cell.cloud, build)
    verification.verify(proj, cell, record)


TASKS = [build, verify]
