"""publish: share a verified build on its cloud, and take the sharing back.

Only verified builds are shared; there is no way around it for public sharing. Each cloud
reports per region (or project); a second run changes nothing and says so.
"""

from __future__ import annotations

from imageforge import clouds, log, state
from imageforge.clouds.base import Outcome, Sharing
from imageforge.config import Project
from imageforge.errors import ImageforgeError
from imageforge.state import BuildRecord


def find_publishable(
    project: Project, flavor: str, cloud: str, build_id: str | None
) -> BuildRecord:
    """The build to publish on cloud: one built there, or a local build imported into it."""
    candidates = [
        r
        for r in state.records(project.root, flavor)
        if r.cloud == cloud or any(k.startswith(f"{cloud}:") for k in r.artifact_ids)
    ]
    if build_id:
        candidates = [r for r in candidates if r.id == build_id]
    if not candidates:
        return state.find(project.root, flavor, cloud, build_id)  # says what is missing
    return candidates[-1]


def require_verified(record: BuildRecord) -> None:
    """Refuse a build that did not pass verification, naming what failed."""
    if record.verified:
        return
    failures = record.verification.get("failures") or []
    if failures:
        why = "these checks failed: " + ", ".join(failures)
    elif record.status in ("failed", "interrupted"):
        why = f"the build {record.status}" + (
            f" ({record.error.splitlines()[0]})" if record.error else ""
        )
    else:
        why = "it was never verified"
    raise ImageforgeError(
        f"build {record.id} of {record.flavor} on {record.cloud} is not verified: {why}",
        hint=f"fix the image and rebuild, or run `invoke verify --image {record.flavor} "
        f"--cloud {record.cloud}`; unverified builds cannot be published",
    )


def publish(
    project: Project,
    record: BuildRecord,
    sharing: Sharing,
    *,
    revoke: bool = False,
    cloud_name: str | None = None,
) -> list[Outcome]:
    """Share (or with revoke, unshare) a build's images; report and record every outcome.

    cloud_name defaults to the cloud the build ran on; a local build imported into OpenStack
    is published with cloud_name="openstack".
    """
    cloud = clouds.get(cloud_name or record.cloud)
    if not revoke:
        require_verified(record)
    action = "unpublish" if revoke else "publish"
    with log.step(
        f"{action} {record.flavor} build {record.id} on {cloud.name} ({sharing.describe()})"
    ):
        outcomes = (cloud.unpublish if revoke else cloud.publish)(project, record, sharing)
        report(outcomes)
    record.published = {
        **record.published,
        "sharing": None if revoke else sharing.describe(),
        "outcomes": [o.__dict__ for o in outcomes],
    }
    record.save()
    failed = [o for o in outcomes if o.error]
    if failed:
        raise ImageforgeError(
            f"{action} incomplete in {', '.join(o.where for o in failed)}",
            hint=f"fix the cause and run `invoke {action.replace('un', '')} ...` again"
            + (" --revoke" if revoke else "")
            + "; it completes only what is missing",
        )
    return outcomes


def report(outcomes: list[Outcome]) -> None:
    """One line per place: what changed, nothing, or the error."""
    for outcome in outcomes:
        if outcome.error:
            log.warn(f"{outcome.where}: {outcome.subject}: {outcome.error}")
        elif outcome.changes:
            log.info(f"{outcome.where}: {outcome.subject}: {'; '.join(outcome.changes)}")
        else:
            log.info(f"{outcome.where}: {outcome.subject}: already so; nothing changed")
