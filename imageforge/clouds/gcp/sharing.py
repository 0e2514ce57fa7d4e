"""GCP sharing: roles/compute.imageUser on the image, and the family kept on a verified image.

Publishing grants roles/compute.imageUser (to allAuthenticatedUsers, or to named members), the
binding `gcloud compute images add-iam-policy-binding` makes, through a read-modify-write of
the image's IAM policy with its etag, so a concurrent change is never overwritten. What publish
added is kept as {project: [member]}; unpublish revokes exactly those.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from imageforge import log
from imageforge.clouds.common import (
    FLAVOR_KEY,
    Outcome,
    Published,
    added_before,
    label,
    merge_added,
    remove_added,
)
from imageforge.clouds.gcp.connection import Gce, project_id
from imageforge.clouds.housekeeping import owned, verified_builds
from imageforge.clouds.sdkerrors import errors_into
from imageforge.config.publishpolicy import Sharing
from imageforge.errors import ImageforgeError

if TYPE_CHECKING:
    from imageforge.config import Project
    from imageforge.records.record import BuildRecord

PLACE = "gcp"
IMAGE_USER = "roles/compute.imageUser"
EVERYONE = "allAuthenticatedUsers"
EVERYONES = ("allUsers", EVERYONE)  # members a publish policy may name as well
MEMBER_TYPES = ("user:", "group:", "serviceAccount:", "domain:", "principal://", "principalSet://")
INACTIVE = ("DEPRECATED", "OBSOLETE", "DELETED")
POLICY_VERSION = 3  # read conditional bindings intact, so writing back never drops them
ETAG_ATTEMPTS = 5
RETRY_SECONDS = 0.5


class GcpSharing:
    def publish(self, project: Project, record: BuildRecord, sharing: Sharing) -> Published:
        members = _members(sharing)
        where, name = locate(project, record)
        gce = Gce(where)
        outcome = Outcome(where, name)
        granted: list[str] = []
        with errors_into(outcome):
            granted = _update_policy(gce, name, lambda policy: _grant(policy, members))
            outcome.changes += [f"granted {IMAGE_USER} to {m}" for m in granted]
            outcome.changes += _steer_family(gce, project, record.flavor, name)
        added = merge_added(added_before(record, PLACE), {where: granted})
        return Published([outcome], added)

    def unpublish(self, project: Project, record: BuildRecord, sharing: Sharing) -> Published:
        """Revoke the members publish added (all of them, or the named ones among them)."""
        where, name = locate(project, record)
        added = added_before(record, PLACE)
        ours: list[str] = added.get(where, [])
        targets = ours if sharing.public else [m for m in ours if m in sharing.accounts]
        outcome = Outcome(where, name)
        if targets:
            with errors_into(outcome):
                removed = _update_policy(Gce(where), name, lambda p: _revoke(p, targets))
                outcome.changes = [f"revoked {IMAGE_USER} from {m}" for m in removed]
        gone = {} if outcome.error else {where: targets}
        return Published([outcome], remove_added(added, gone))

    def tag(self, project: Project, record: BuildRecord, key: str, value: str) -> list[Outcome]:
        """Label the image key=value, with its label fingerprint (no concurrent change lost)."""
        from google.cloud import compute_v1

        where, name = locate(project, record)
        gce = Gce(where)
        outcome = Outcome(where, name)
        with errors_into(outcome):
            image = gce.images.get(project=gce.project, image=name)
            labels = dict(image.labels)
            if labels.get(key) != value:
                request = compute_v1.GlobalSetLabelsRequest(
                    labels={**labels, key: value}, label_fingerprint=image.label_fingerprint
                )
                gce.wait(
                    gce.images.set_labels(
                        project=gce.project,
                        resource=name,
                        global_set_labels_request_resource=request,
                    )
                )
                outcome.changes = [f"labelled {key}={value}"]
        return [outcome]


def locate(project: Project, record: BuildRecord) -> tuple[str, str]:
    """(project id, image name) of a build: the image recorded at build time, in the project
    images.yml names (rendered into the build), else the one the build ran in."""
    if not record.artifact_ids:
        raise ImageforgeError(
            f"build {record.id} of {record.flavor} recorded no googlecompute image",
            hint="did the build finish? `invoke build --cloud gcp` records it",
        )
    where, name = next(iter(record.artifact_ids.items()))
    return (project.images.clouds.gcp.project or where or project_id(project)), name


def _members(sharing: Sharing) -> list[str]:
    """IAM members for a Sharing: allAuthenticatedUsers, or the named members."""
    if sharing.organizations:
        raise ImageforgeError(
            "GCP shares images with IAM members, not organizations",
            hint="use --account domain:example.com or --account group:team@example.com",
        )
    if sharing.public:
        return [EVERYONE]
    if not sharing.accounts:
        raise ImageforgeError("nothing to share with", hint="name a member: --account user:a@b.c")
    bad = [a for a in sharing.accounts if a not in EVERYONES and not a.startswith(MEMBER_TYPES)]
    if bad:
        raise ImageforgeError(
            f"not an IAM member: {', '.join(bad)}",
            hint="prefix each with user:, group:, serviceAccount: or domain: "
            "(e.g. --account user:ada@example.com)",
        )
    return list(dict.fromkeys(sharing.accounts))


# --- the IAM policy -------------------------------------------------------------------------


def _plain_bindings(policy: Any) -> list[Any]:
    """The unconditional roles/compute.imageUser bindings: the only ones publish touches."""
    return [b for b in policy.bindings if b.role == IMAGE_USER and "condition" not in b]


def _grant(policy: Any, members: list[str]) -> list[str]:
    from google.cloud import compute_v1

    plain = _plain_bindings(policy)
    have = {m for b in plain for m in b.members}
    missing = [m for m in members if m not in have]
    if missing and plain:
        plain[0].members.extend(missing)
    elif missing:
        policy.bindings.append(compute_v1.Binding(role=IMAGE_USER, members=missing))
    return missing


def _revoke(policy: Any, members: list[str]) -> list[str]:
    removed: list[str] = []
    for binding in _plain_bindings(policy):
        gone = [m for m in binding.members if m in members]
        if gone:
            binding.members = [m for m in binding.members if m not in members]
            removed += gone
    policy.bindings = [b for b in policy.bindings if b.members]
    return list(dict.fromkeys(removed))


def get_policy(gce: Gce, image: str) -> Any:
    return gce.images.get_iam_policy(
        request={
            "project": gce.project,
            "resource": image,
            "options_requested_policy_version": POLICY_VERSION,
        }
    )


def _update_policy(gce: Gce, image: str, change: Callable[[Any], list[str]]) -> list[str]:
    """Read-modify-write the image's IAM policy with its etag; start over when another writer
    got in between (412/409). Returns what `change` changed; no write if nothing."""
    from google.api_core import exceptions
    from google.cloud import compute_v1

    for attempt in range(ETAG_ATTEMPTS):
        policy = get_policy(gce, image)
        changed = change(policy)
        if not changed:
            return []
        try:
            gce.images.set_iam_policy(
                project=gce.project,
                resource=image,
                global_set_policy_request_resource=compute_v1.GlobalSetPolicyRequest(policy=policy),
            )
            return changed
        except (exceptions.PreconditionFailed, exceptions.Conflict, exceptions.Aborted) as exc:
            log.debug(f"IAM policy of {image} changed concurrently ({exc.code}); retrying")
            time.sleep(RETRY_SECONDS * 2**attempt)
    raise ImageforgeError(
        f"the IAM policy of image {image} kept changing under us ({ETAG_ATTEMPTS} attempts)",
        hint="run the command again",
    )


# --- the image family ---------------------------------------------------------------------


def created(image: Any) -> datetime:
    return datetime.fromisoformat(image.creation_timestamp)


def set_deprecation(gce: Gce, image: str, state: str, replacement: str = "") -> None:
    from google.cloud import compute_v1

    status = compute_v1.DeprecationStatus(state=state)
    if replacement:
        status.replacement = replacement
    gce.wait(
        gce.images.deprecate_unary(
            project=gce.project, image=image, deprecation_status_resource=status
        )
    )


def _steer_family(gce: Gce, project: Project, flavor: str, name: str) -> list[str]:
    """Keep the image family resolving to the newest verified image.

    The published image is made ACTIVE if it was DEPRECATED (refused if OBSOLETE or DELETED);
    every image of its family that is newer, ours (name prefix and build-id label) for this
    flavor, not verified by a local record and not deprecated yet is marked DEPRECATED with the
    published image as `replacement`. Older images and images not ours are never touched.
    """
    image = gce.images.get(project=gce.project, image=name)
    changes = []
    state = image.deprecated.state
    if state in ("OBSOLETE", "DELETED"):
        raise ImageforgeError(f"image {name} is {state}; publish a newer build instead")
    if state == "DEPRECATED":
        set_deprecation(gce, name, "ACTIVE")
        changes.append("made active again (was deprecated)")
    if not image.family:
        return changes
    verified = verified_builds(project, flavor)
    for other in gce.list_images(f"family = {json.dumps(image.family)}"):
        labels = dict(other.labels)
        if (
            other.name == name
            or created(other) <= created(image)
            or not owned(project, other.name, labels)
            or labels.get(FLAVOR_KEY) != label(flavor)
            or verified.covers(other.name, labels)
            or other.deprecated.state in INACTIVE
        ):
            continue
        set_deprecation(gce, other.name, "DEPRECATED", image.self_link)
        changes.append(
            f"deprecated newer unverified {other.name} so family {image.family} resolves here"
        )
    return changes
