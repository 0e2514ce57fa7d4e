"""publish: share a verified build on its cloud, and take the sharing back.

Only builds whose verification still binds to their content are shared. Each cloud reports
per region (or project); a second run changes nothing and says so. What publish added is kept
in the record per place, so that revoking removes exactly that.
"""

from __future__ import annotations

from imageforge import clouds, log
from imageforge.clouds.capabilities import Sharer, Tagger
from imageforge.clouds.common import Outcome
from imageforge.clouds.sdkerrors import errors_into
from imageforge.config import Project, publishpolicy
from imageforge.config.publishpolicy import Sharing
from imageforge.errors import ImageforgeError
from imageforge.records import provenance, state
from imageforge.records.record import BuildRecord
from imageforge.stages import attest


def candidates(project: Project, flavor: str, cloud: str) -> list[BuildRecord]:
    """Builds that have an image on cloud, oldest first: built there, or local builds imported
    into it."""
    return [
        r
        for r in state.records(project.root, flavor)
        if r.cloud == cloud or any(k.split(":")[0] == cloud for k in r.imported)
    ]


def find_publishable(
    project: Project, flavor: str, cloud: str, build_id: str | None
) -> BuildRecord:
    """The build to publish on cloud: one built there, or a local build imported into it."""
    found = candidates(project, flavor, cloud)
    if build_id:
        found = [r for r in found if r.id == build_id]
    if not found:
        return state.find(project.root, flavor, cloud, build_id)  # says what is missing
    return found[-1]


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
    place = cloud_name or record.cloud
    sharer = clouds.capability(place, Sharer)
    if not revoke:
        state.require_bound(record)
        if publishpolicy.requires_signature(project.images, record.flavor, place):
            attest.require_signed(record, None)
    action = "unpublish" if revoke else "publish"
    with log.step(f"{action} {record.flavor} build {record.id} on {place} ({sharing.describe()})"):
        result = (sharer.unpublish if revoke else sharer.publish)(project, record, sharing)
        if not revoke:
            result.outcomes.extend(_tag_provenance(project, record, sharer, place))
        report(result.outcomes)
    state.published(
        record,
        place,
        None if revoke else sharing.describe(),
        [o.__dict__ for o in result.outcomes],
        result.added,
        revoked=revoke,
    )
    failed = [o for o in result.outcomes if o.error]
    if failed:
        raise ImageforgeError(
            f"{action} incomplete in {', '.join(o.where for o in failed)}",
            hint=f"fix the cause and run `invoke {action.replace('un', '')} ...` again"
            + (" --revoke" if revoke else "")
            + "; it completes only what is missing",
        )
    return result.outcomes


def _tag_provenance(
    project: Project, record: BuildRecord, sharer: object, place: str
) -> list[Outcome]:
    """The images carry the sha256 of the build's signed provenance (a tag, label or
    property), so whoever has an image can fetch and check the envelope it names. A failure
    is an outcome: what was shared is still recorded."""
    envelope = record.directory / provenance.FILE
    if not envelope.is_file() or not isinstance(sharer, Tagger):
        return []
    digest = state.sha256(envelope)
    value = provenance.label_value(digest) if place == "gcp" else digest
    failed = Outcome(place, f"{provenance.TAG} tag")
    with errors_into(failed):
        return sharer.tag(project, record, provenance.TAG, value)
    return [failed]


def report(outcomes: list[Outcome]) -> None:
    """One line per place: what changed, nothing, or the error."""
    for outcome in outcomes:
        if outcome.error:
            log.warn(f"{outcome.where}: {outcome.subject}: {outcome.error}")
        elif outcome.changes:
            log.info(f"{outcome.where}: {outcome.subject}: {'; '.join(outcome.changes)}")
        else:
            log.info(f"{outcome.where}: {outcome.subject}: already so; nothing changed")
