"""OpenStack sharing: the Glance image's visibility, or one image member per project.

- public sharing sets visibility `public`, or `community` when images.yml sets
  `clouds.openstack.image_visibility: community` (Glance's default policy lets only admins
  make images public; any owner may make them community);
- sharing with accounts (project ids) sets visibility `shared` and adds one member per project;
  each project accepts (or rejects) the member itself;
- what publish changed is kept per clouds.yaml entry (`image`, `visibility_before`,
  `visibility`, `members`); unpublish takes back exactly that. Only the owner project shares.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imageforge.clouds.common import Outcome, Published, added_before
from imageforge.clouds.openstack.connection import (
    PLACE,
    cloud_name,
    connect,
    errors,
    image_id,
    owned_image,
)
from imageforge.clouds.sdkerrors import errors_into, why
from imageforge.config.publishpolicy import Sharing

if TYPE_CHECKING:
    from imageforge.config import Project
    from imageforge.records.record import BuildRecord


class OpenstackSharing:
    def publish(self, project: Project, record: BuildRecord, sharing: Sharing) -> Published:
        cloud, conn, image, entry, added = _start(project, record, "publish")
        target = target_visibility(project, sharing)
        outcome = Outcome(cloud, f"image {image.id} ({image.name})")
        outcomes = [outcome]
        with errors_into(outcome):
            if target is not None:
                _share_visibility(conn, image, target, entry, outcome)
            if target == "shared" and outcome.error is None:
                outcomes += _add_members(conn, cloud, image, sharing.accounts, entry)
        return Published(outcomes, _kept(added, cloud, entry))

    def unpublish(self, project: Project, record: BuildRecord, sharing: Sharing) -> Published:
        cloud, conn, image, entry, added = _start(project, record, "unpublish")
        outcome = Outcome(cloud, f"image {image.id} ({image.name})")
        outcomes: list[Outcome] = []
        with errors_into(outcome):
            only = set(sharing.accounts) if sharing.accounts else None
            if only is None and entry["members"]:
                _back_to_shared(conn, image, entry, outcome)
            outcomes = _remove_members(conn, cloud, image, entry, only)
            failed = any(o.error for o in outcomes)
            if not failed and not entry["members"] and entry["visibility"]:
                _restore_visibility(conn, image, entry, outcome)
        return Published([outcome, *outcomes], _kept(added, cloud, entry))

    def tag(self, project: Project, record: BuildRecord, key: str, value: str) -> list[Outcome]:
        """Set the Glance image property key=value."""
        cloud, conn, image, _, _ = _start(project, record, "tag")
        outcome = Outcome(cloud, f"image {image.id} ({image.name})")
        with errors_into(outcome):
            if image.properties.get(key) != value:
                conn.image.update_image(image, **{key: value})
                outcome.changes = [f"property {key}={value}"]
        return [outcome]


def _start(
    project: Project, record: BuildRecord, operation: str
) -> tuple[str, Any, Any, dict[str, Any], dict[str, Any]]:
    """(entry name, connection, the owned image, what publish added to it so far, all that
    publish added); nothing has changed if this fails."""
    cloud = cloud_name(project)
    wanted = image_id(project, record)
    added = added_before(record, PLACE)
    entry = dict(added.get(cloud) or {})
    if entry.get("image") != wanted:
        entry = {"image": wanted, "visibility_before": None, "visibility": None, "members": []}
    entry["members"] = list(entry.get("members") or [])
    conn = connect(project)
    with errors(cloud, operation, conn):
        image = owned_image(conn, cloud, wanted)
    return cloud, conn, image, entry, added


def _kept(added: dict[str, Any], cloud: str, entry: dict[str, Any]) -> dict[str, Any]:
    """All that publish added, with this entry's part as it is now (gone when nothing)."""
    rest = {k: v for k, v in added.items() if k != cloud}
    return {**rest, cloud: entry} if entry["visibility"] or entry["members"] else rest


def target_visibility(project: Project, sharing: Sharing) -> str | None:
    """What publish sets: the visibility a publish policy names, else public (or community,
    per images.yml), shared, or nothing."""
    if sharing.visibility:
        return sharing.visibility
    if sharing.public:
        wanted = project.images.clouds.openstack.image_visibility
        return "community" if wanted == "community" else "public"
    return "shared" if sharing.accounts else None


def _share_visibility(
    conn: Any, image: Any, target: str, entry: dict[str, Any], outcome: Outcome
) -> None:
    """Set the visibility publish wants, unless the image is already at least that open."""
    current = image.visibility
    if current == target:
        return
    if target == "shared" and current in ("public", "community"):
        outcome.error = (
            f"image is {current}: every project can already use it; "
            "`invoke publish --revoke` first to share it with named projects only"
        )
        return
    try:
        conn.image.update_image(image, visibility=target)
    except Exception as exc:
        outcome.error = f"visibility {target} refused: {why(exc)}"
        if target == "public" and getattr(exc, "status_code", None) == 403:
            outcome.error += (
                " (Glance's default policy lets only admins make images public; set "
                "clouds.openstack.image_visibility: community to publish as a community image)"
            )
        return
    if entry["visibility_before"] is None:
        entry["visibility_before"] = current
    entry["visibility"] = target
    outcome.changes.append(f"visibility {current} → {target}")


def _add_members(
    conn: Any, cloud: str, image: Any, accounts: tuple[str, ...], entry: dict[str, Any]
) -> list[Outcome]:
    """One outcome per project: added (pending until it accepts), already there, or refused."""
    present = {m.member_id for m in conn.image.members(image)}
    outcomes = []
    for account in accounts:
        outcome = Outcome(cloud, f"image {image.id} member {account}")
        outcomes.append(outcome)
        if account in present:
            continue
        try:
            conn.image.add_member(image, member=account)
        except Exception as exc:
            outcome.error = f"member refused: {why(exc)}"
            continue
        entry["members"].append(account)
        outcome.changes.append("added as image member (pending until the project accepts it)")
    return outcomes


def _back_to_shared(conn: Any, image: Any, entry: dict[str, Any], outcome: Outcome) -> None:
    """Members publish added to an image it later made public (or community): Glance removes
    members of shared images only, so unpublishing everything passes through shared."""
    current = image.visibility
    if current == "shared" or current != entry["visibility"]:
        return
    conn.image.update_image(image, visibility="shared")
    entry["visibility"] = "shared"
    outcome.changes.append(f"visibility {current} → shared")


def _remove_members(
    conn: Any, cloud: str, image: Any, entry: dict[str, Any], only: set[str] | None
) -> list[Outcome]:
    """Remove the members publish added (or the named ones of them)."""
    mine = [m for m in entry["members"] if only is None or m in only]
    if not mine:
        return []
    shared = image.visibility == "shared"
    present = {m.member_id for m in conn.image.members(image)} if shared else set()
    outcomes = []
    for account in mine:
        outcome = Outcome(cloud, f"image {image.id} member {account}")
        outcomes.append(outcome)
        if not shared:
            outcome.error = (
                f"image is {image.visibility}: Glance removes members of shared images only"
            )
            continue
        if account in present:
            try:
                conn.image.remove_member(account, image, ignore_missing=True)
            except Exception as exc:
                outcome.error = f"removing member refused: {why(exc)}"
                continue
            outcome.changes.append("removed image member")
        entry["members"].remove(account)
    return outcomes


def _restore_visibility(conn: Any, image: Any, entry: dict[str, Any], outcome: Outcome) -> None:
    """Back to the visibility before publish, if nobody changed it since."""
    before = entry["visibility_before"] or "private"
    current = image.visibility
    if current == entry["visibility"] and current != before:
        try:
            conn.image.update_image(image, visibility=before)
        except Exception as exc:
            outcome.error = f"visibility {before} refused: {why(exc)}"
            return
        outcome.changes.append(f"visibility {current} → {before}")
    entry["visibility"] = None
    entry["visibility_before"] = None
