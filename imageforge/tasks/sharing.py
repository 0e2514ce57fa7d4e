"""Tasks that touch cloud accounts: doctor, publish, import, prune, sweep."""

from __future__ import annotations

from invoke.context import Context
from invoke.tasks import task

from imageforge import clouds, log
from imageforge.clouds import Housekeeper, Importer, Preflight
from imageforge.clouds import housekeeping as rules
from imageforge.config import matrix
from imageforge.records import provenance, signingkeys, state
from imageforge.stages import attest as attesting
from imageforge.stages import publish as publishing
from imageforge.stages import publishplan
from imageforge.tasks.common import friendly, project

HELP = {
    "image": "flavor, e.g. training-desktop",
    "cloud": "aws, gcp or openstack (local builds are published by `import` to openstack)",
    "config": "path to images.yml (default: ./images.yml)",
    "build": "build id (default: the newest build)",
    "organization": "AWS: share with this organization or OU ARN (repeatable)",
    "revoke": "remove exactly what publish added",
    "keep": "how many of the newest images per flavor to keep (1 or more)",
    "min_age": f"leave alone what is younger than this many minutes (default "
    f"{rules.SWEEP_MIN_AGE_MINUTES}): it may be a running build's",
    "yes": "really delete (without it, only show what would go)",
}


def pick(*names: str) -> dict[str, str]:
    return {n: HELP[n] for n in names}


@task(help=pick("cloud", "image", "config"))
@friendly
def doctor(c: Context, cloud: str, image: str | None = None, config: str | None = None) -> None:
    """Check credentials, region/project and source image before a cloud build."""
    proj = project(config)
    for cell in matrix.selected(proj, image, cloud):
        with log.step(f"doctor {cell.name}"):
            for line in clouds.capability(cell.cloud, Preflight).doctor(proj, cell):
                log.info(f"ok: {line}")


PUBLISH_HELP = {
    **pick("build", "organization", "revoke", "config"),
    "image": "flavor (default: every flavor in the matrix)",
    "cloud": "aws, gcp or openstack (default: all three)",
    "account": "share with this account/project/member instead of what the policy says "
    "(repeatable)",
    "public": "share with everyone on the cloud (AWS: every account; GCP: "
    "allAuthenticatedUsers; OpenStack: visibility public)",
    "visibility": "OpenStack: private, shared (with --account), community or public",
    "dry_run": "print the plan only; change nothing",
}


@task(help=PUBLISH_HELP, iterable=["account", "organization"])
@friendly
def publish(
    c: Context,
    image: str | None = None,
    cloud: str | None = None,
    build: str | None = None,
    account: list[str] | None = None,
    organization: list[str] | None = None,
    public: bool = False,
    visibility: str | None = None,
    revoke: bool = False,
    dry_run: bool = False,
    config: str | None = None,
) -> None:
    """Share verified builds as images.yml's `publish:` says; a plan first, then the changes.

    Bare (or with only --image or --cloud): the newest verified build of each cell, shared per
    its policy; cells with no policy are skipped; a cell without a verified build fails the run
    (exit 2) after the others. With --image and --cloud: the newest build of that cell (or
    --build), shared as --account/--organization/--public/--visibility say, else per the
    cell's policy; with neither, nothing is shared (exit 2). --revoke removes exactly what
    publish added.
    """
    publishplan.run(
        project(config),
        image,
        cloud,
        build=build,
        accounts=tuple(account or ()),
        organizations=tuple(organization or ()),
        public=public,
        visibility=visibility,
        revoke=revoke,
        dry_run=dry_run,
    )


@task(name="import", help=pick("image", "cloud", "build", "config"))
@friendly
def import_(
    c: Context,
    image: str,
    cloud: str = "openstack",
    build: str | None = None,
    config: str | None = None,
) -> None:
    """Upload a verified local build (qcow2) to OpenStack Glance with its metadata."""
    proj = project(config)
    record = state.find(proj.root, image, "local", build)
    state.require_bound(record)
    for place, image_id in clouds.capability(cloud, Importer).import_build(proj, record).items():
        record = state.imported(record, place, image_id)
        log.info(f"imported {record.flavor} build {record.id} as {place} image {image_id}")
    if (record.directory / provenance.FILE).is_file():  # signed: now naming the new image too
        if signingkeys.signer() is None:
            log.warn(f"build {record.id}: its provenance does not name the imported image")
        else:
            attesting.attest(proj, matrix.find(proj, record.flavor, record.cloud), record)


@task(help=pick("cloud", "image", "keep", "yes", "config"))
@friendly
def prune(
    c: Context,
    cloud: str,
    keep: str = "3",
    image: str | None = None,
    yes: bool = False,
    config: str | None = None,
) -> None:
    """Delete this pipeline's old images beyond the newest N per flavor (dry run without --yes)."""
    count = rules.keep_count(keep)
    proj = project(config)
    housekeeper = clouds.capability(cloud, Housekeeper)
    flavors = [image] if image else list(proj.images.flavors)
    for flavor in flavors:
        publishing.report(housekeeper.prune(proj, flavor, count, apply=yes))
    if not yes:
        log.info("dry run: nothing was deleted (add --yes to delete)")


@task(help=pick("cloud", "yes", "min_age", "config"))
@friendly
def sweep(
    c: Context,
    cloud: str,
    yes: bool = False,
    min_age: str = str(rules.SWEEP_MIN_AGE_MINUTES),
    config: str | None = None,
) -> None:
    """Find what killed builds left behind (instances, keys, groups, volumes); --yes removes it."""
    minutes = rules.min_age(min_age)
    proj = project(config)
    housekeeper = clouds.capability(cloud, Housekeeper)
    outcomes = housekeeper.sweep(proj, apply=yes, min_age_minutes=minutes)
    publishing.report(outcomes)
    if not outcomes:
        log.info("nothing left behind")
    elif not yes:
        log.info("dry run: nothing was removed (add --yes to remove)")


TASKS = [doctor, publish, import_, prune, sweep]
