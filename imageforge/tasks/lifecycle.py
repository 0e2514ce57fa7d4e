"""Tasks that make images: build and verify."""

from __future__ import annotations

from typing import Any

from invoke.context import Context
from invoke.tasks import Task, task

from imageforge.config import matrix
from imageforge.config.oses import warn_unverified
from imageforge.errors import ConfigError
from imageforge.records import state
from imageforge.stages import attest as attesting
from imageforge.stages import build as builder
from imageforge.stages import keep
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
    "on_error": "cleanup (default: a failed build leaves nothing) or keep: the failed build VM "
    "stays up (local: SSH on 127.0.0.1, a ready ssh command; cloud: the build instance, "
    "which `invoke sweep` removes after --keep-hours)",
    "keep_hours": f"with --on-error=keep on a cloud: hours from the start of the build until "
    f"`invoke sweep` may remove the kept instance (default {keep.DEFAULT_HOURS:g})",
    "release": "stop the VM kept from failed build RELEASE and remove its key, then exit",
    "dry_run": "print what would be built and its cloud cost estimate (images.yml `prices:`); "
    "build nothing",
}


class _LetterShortFlags(Task[Any]):
    """invoke's own short flags, letters only: it would give --on-error the flag "--"."""

    def arg_opts(self, name: str, default: str, taken_names: set[str]) -> dict[str, Any]:
        opts = super().arg_opts(name, default, taken_names)
        opts["names"] = [n for n in opts["names"] if len(n) > 1 or n.isalpha()]
        return opts


@task(help={k: v for k, v in HELP.items() if k != "build"}, klass=_LetterShortFlags)
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
    on_error: str = "cleanup",
    keep_hours: str | None = None,
    release: str | None = None,
) -> None:
    """Build an image with Packer (local: QEMU) and verify it with testinfra."""
    proj = project(config)
    if release is not None:
        if image is not None or on_error != "cleanup" or keep_hours is not None:
            raise ConfigError("--release BUILD takes no other option: it only stops a kept VM")
        keep.release_build(proj.root, release)
        return
    keeping = keep.on_error_mode(on_error)
    if keep_hours is not None and not keeping:
        raise ConfigError("--keep-hours: only with --on-error=keep")
    hours = None
    if keeping:
        hours = keep.keep_hours(keep.DEFAULT_HOURS if keep_hours is None else keep_hours)
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
        keep_hours=hours,
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
    record = verification.verify(proj, cell, record)
    attesting.attest(proj, cell, record)


TASKS = [build, verify]
