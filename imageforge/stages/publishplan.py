"""`invoke publish`: a plan first (cell, build, image ids, what will change), then publishing.

Bare `invoke publish` (or with only --image or only --cloud) applies the images.yml publish
policy to the newest verified build of each selected cell on a cloud that shares images. A
cell whose policy shares with nobody (or that has none) is skipped; a cell with no verified
build, or whose verification no longer binds, is reported and fails the run at the end.

With --image and --cloud (and --build, --account, --organization, --public, --visibility,
--revoke, which need them), one build is published: the newest of the cell unless --build
names one, shared as the options say, else as the cell's policy says. A cell with no policy
and options that name nobody is refused: nothing is shared that nobody asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

from imageforge import clouds, log
from imageforge.clouds import Sharer, Sharing
from imageforge.clouds.capabilities import Importer
from imageforge.config import Project, matrix, oses, publishpolicy
from imageforge.config.matrix import Cell
from imageforge.errors import ConfigError, ImageforgeError, Interrupted
from imageforge.records import state
from imageforge.records.record import BuildRecord
from imageforge.stages import publish as publishing


class Unpublished(ImageforgeError):
    """Some cells could not be published (the others were)."""

    exit_code = 2


@dataclass(frozen=True)
class Entry:
    """One cell of the plan: the build and sharing to apply, or why there is none."""

    cell: Cell
    record: BuildRecord | None = None
    sharing: Sharing | None = None
    skipped: str = ""  # nothing to do, by the policy's choice
    problem: str = ""  # cannot be published: fails the run

    @property
    def place(self) -> str:
        return self.cell.cloud


def run(
    project: Project,
    image: str | None,
    cloud: str | None,
    *,
    build: str | None = None,
    accounts: tuple[str, ...] = (),
    organizations: tuple[str, ...] = (),
    public: bool = False,
    visibility: str | None = None,
    revoke: bool = False,
    dry_run: bool = False,
) -> list[Entry]:
    """Plan, show the plan, and unless dry_run apply it; Unpublished if any cell failed."""
    single = build or accounts or organizations or public or visibility or revoke
    if single and (image is None or cloud is None):
        raise ConfigError(
            "--build, --account, --organization, --public, --visibility and --revoke act on "
            "one cell: give --image and --cloud too"
        )
    one_cell = image is not None and cloud is not None
    if image is not None and cloud is not None:
        cell = matrix.find(project, image, cloud)
        asked = Asked(accounts, organizations, public, visibility)
        entries = [one(project, cell, build, asked, revoke=revoke)]
    else:
        entries = plan(project, matrix.selected(project, image, cloud))
    if not revoke:
        oses.warn_unverified(e.cell for e in entries if e.record and e.sharing and not e.problem)
    show(entries, revoke=revoke)
    if dry_run:
        log.info("dry run: nothing was changed")
        failed = [f"{e.cell.name}: {e.problem}" for e in entries if e.problem]
    else:
        failed = apply(project, entries, revoke=revoke, keep_going=not one_cell)
    if failed:
        names = ", ".join(line.split(":")[0] for line in failed)
        raise Unpublished(f"not published: {names} (the reasons are above)")
    return entries


def plan(project: Project, cells: list[Cell]) -> list[Entry]:
    """The policy's entry for every cell on a cloud that shares images."""
    sharing_cells = [c for c in cells if isinstance(clouds.get(c.cloud), Sharer)]
    if not sharing_cells:
        raise ConfigError(
            "nothing to publish: local builds are shared through OpenStack",
            hint="`invoke import --image F` uploads one, then `invoke publish --cloud openstack`",
        )
    return [_planned(project, cell) for cell in sharing_cells]


def _planned(project: Project, cell: Cell) -> Entry:
    policy = publishpolicy.policy_for(project.images, cell.flavor_name, cell.cloud)
    if policy is None:
        return Entry(cell, skipped=f"images.yml has no publish policy for {cell.cloud}")
    sharing = publishpolicy.sharing(policy)
    if sharing is None:
        return Entry(cell, skipped="the publish policy shares with nobody")
    found = publishing.candidates(project, cell.flavor_name, cell.cloud)
    verified = [r for r in found if r.verified]
    if not verified:
        how = f"`invoke build --image {cell.flavor_name} --cloud {cell.cloud}`"
        if isinstance(clouds.get(cell.cloud), Importer):
            how += f" (or `invoke import --image {cell.flavor_name}` of a local build)"
        if not found:
            return Entry(cell, sharing=sharing, problem=f"no build yet; {how} makes one")
        newest = found[-1]
        reason = state.unbound_reason(newest) or newest.status
        return Entry(
            cell, sharing=sharing, problem=f"no verified build (newest {newest.id}: {reason})"
        )
    record = verified[-1]
    unbound = state.unbound_reason(record)
    if unbound:
        return Entry(cell, record, sharing, problem=f"build {record.id}: {unbound}")
    return Entry(cell, record, sharing)


@dataclass(frozen=True)
class Asked:
    """Whom the command line of `invoke publish --image F --cloud C` names."""

    accounts: tuple[str, ...] = ()
    organizations: tuple[str, ...] = ()
    public: bool = False
    visibility: str | None = None

    def policy(self, cloud: str) -> publishpolicy.CloudPolicy | None:
        return publishpolicy.from_command_line(
            cloud, self.accounts, self.organizations, self.public, self.visibility
        )


def one(project: Project, cell: Cell, build: str | None, asked: Asked, *, revoke: bool) -> Entry:
    """The entry of `--image F --cloud C`: the build asked for, shared as the command line
    says, else as the cell's policy says; refused when neither names anyone, or when the
    build is not verified."""
    if revoke:
        record = publishing.find_publishable(project, cell.flavor_name, cell.cloud, build)
        named = asked.accounts or asked.organizations
        # public here means all that publish added; else only these accounts' part of it
        return Entry(cell, record, Sharing(not named, asked.accounts, asked.organizations))
    policy = asked.policy(cell.cloud) or publishpolicy.policy_for(
        project.images, cell.flavor_name, cell.cloud
    )
    if policy is None:
        raise ConfigError(
            f"not published: images.yml has no publish policy for {cell.name} and the "
            "command names nobody; add `publish: {"
            f"{cell.cloud}: ...}}` to images.yml, or give {OPTIONS[cell.cloud]}"
        )
    record = publishing.find_publishable(project, cell.flavor_name, cell.cloud, build)
    state.require_bound(record)
    sharing = publishpolicy.sharing(policy)
    if sharing is None:
        return Entry(cell, record, skipped="the publish policy shares with nobody")
    return Entry(cell, record, sharing)


OPTIONS = {
    "aws": "--account ID, --organization ARN or --public",
    "gcp": "--account MEMBER (user:, group:, serviceAccount:, domain:) or --public",
    "openstack": "--account PROJECT_ID (shared), --visibility or --public",
}


def image_ids(record: BuildRecord, cloud: str) -> dict[str, str]:
    """The build's images on cloud by place: built (and copied) there, or imported into it."""
    if record.cloud == cloud:
        return {**record.artifact_ids, **record.copies}
    return {k: v for k, v in record.imported.items() if k.split(":")[0] == cloud}


def changes(entry: Entry, *, revoke: bool = False) -> tuple[str, list[str]]:
    """(what the record says is shared, what publish will change) for an entry to apply.

    No sharer reports in advance, so this compares the policy with the record: the sharing
    it describes, and whether every image of the build was shared without error."""
    assert entry.record is not None and entry.sharing is not None
    publication = entry.record.published.get(entry.place)
    done = publication.sharing if publication and publication.status == "published" else None
    recorded = f"shared ({done})" if done else "not shared yet"
    if revoke:
        if publication is None or not publication.added:
            return recorded, []
        return recorded, ["remove exactly what publish added"]
    wanted = entry.sharing.describe()
    ids = image_ids(entry.record, entry.place)
    if done is None:
        return recorded, [f"share ({wanted}) in {', '.join(ids) or entry.place}"]
    if done != wanted:
        return recorded, [f"share ({wanted}); what was shared before stays until --revoke"]
    outcomes = publication.outcomes if publication else []
    missing = [
        place
        for place, image in ids.items()
        if not any(image in str(o.get("subject")) and not o.get("error") for o in outcomes)
    ]
    return recorded, [f"share ({wanted}) in {', '.join(missing)}"] if missing else []


def show(entries: list[Entry], *, revoke: bool = False) -> None:
    """The plan, one block per cell."""
    log.info(f"plan ({len(entries)} cell{'s' if len(entries) != 1 else ''}):")
    for entry in entries:
        name = entry.cell.name
        if entry.problem:
            log.info(f"  {name}: cannot publish: {entry.problem}")
            continue
        if entry.record is None or entry.sharing is None:
            log.info(f"  {name}: skipped: {entry.skipped}")
            continue
        ids = image_ids(entry.record, entry.place)
        recorded, will = changes(entry, revoke=revoke)
        log.info(f"  {name}: build {entry.record.id}")
        log.info(f"    images: {', '.join(f'{k} {v}' for k, v in ids.items()) or 'none recorded'}")
        asked = "revoke" if revoke else f"policy: {entry.sharing.describe()}"
        log.info(f"    {asked}; record: {recorded}")
        log.info(f"    will change: {'; '.join(will) if will else 'nothing (already so)'}")


def apply(
    project: Project, entries: list[Entry], *, revoke: bool = False, keep_going: bool = True
) -> list[str]:
    """Publish every entry that has a build and a sharing; the failures, one line per cell.
    Without keep_going, the first error is raised as it is (one cell: as publish always did)."""
    failed = []
    for entry in entries:
        if entry.problem:
            failed.append(f"{entry.cell.name}: {entry.problem}")
            continue
        if entry.record is None or entry.sharing is None:
            continue
        try:
            publishing.publish(
                project, entry.record, entry.sharing, revoke=revoke, cloud_name=entry.place
            )
        except Interrupted:
            raise
        except ImageforgeError as exc:
            if not keep_going:
                raise
            log.error(f"{entry.cell.name}: {exc}")
            failed.append(f"{entry.cell.name}: {exc.message}")
    return failed
