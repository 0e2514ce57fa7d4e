"""gcp: googlecompute builds; publishing is an IAM binding on the image.

Publishing grants roles/compute.imageUser on the image (to allAuthenticatedUsers, or to named
members), the binding `gcloud compute images add-iam-policy-binding` makes, through a
read-modify-write of the image's IAM policy with its etag, so a concurrent change is never
overwritten. The Compute Engine SDK is imported only inside the functions that call the API:
`invoke --list` works without it. `IMAGEFORGE_GCP_ENDPOINT` points every client elsewhere (a
local test server).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imageforge import hcl, log
from imageforge.clouds.base import Cloud, Outcome, Sharing
from imageforge.errors import ImageforgeError
from imageforge.hcl import Raw

if TYPE_CHECKING:
    from imageforge.config import Project
    from imageforge.matrix import Cell
    from imageforge.state import BuildRecord


def label(text: str) -> str:
    """GCP labels take lowercase letters, digits, '_' and '-', at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]", "_", text.lower())[:63]


class GcpCloud(Cloud):
    name = "gcp"
    builder = "googlecompute"

    def source(self, project: Project, cell: Cell) -> dict[str, Any]:
        gcp = project.images.clouds.gcp
        image = gcp.source_image[cell.os]
        labels = {
            label(key): (value if isinstance(value, Raw) else label(value))
            for key, value in self.metadata(project, cell, gcp.labels).items()
        }
        labels["imageforge-version"] = Raw('replace(var.imageforge_version, ".", "-")')
        return {
            "project_id": hcl.value(gcp.project) if gcp.project else "var.gcp_project_id",
            "zone": gcp.zone,
            "machine_type": gcp.machine_type,
            "source_image_family": image.family,
            "source_image_project": [image.project],
            "image_name": self.image_name(project, cell, gcp.image_name),
            "image_family": self.image_name(project, cell, gcp.image_family),
            "description": cell.flavor.description or f"imageforge {cell.flavor_name}",
            "disk_size": gcp.disk_size_gb,
            "network": gcp.network,
            "subnetwork": gcp.subnetwork,
            "ssh_username": self.ssh_username(cell.os),
            "label_attributes": hcl.attributes({"image_labels": labels, "labels": labels}),
        }

    @contextlib.contextmanager
    def validation_env(self, project: Project, scratch: Path) -> Iterator[dict[str, str]]:
        yield {"GOOGLE_CLOUD_PROJECT": "imageforge-validate"}

    def doctor(self, project: Project, cell: Cell) -> list[str]:
        return _doctor(project, cell)

    def artifact_ids(self, record: BuildRecord) -> dict[str, str]:
        return _artifact_ids(record)

    def publish(self, project: Project, record: BuildRecord, sharing: Sharing) -> list[Outcome]:
        return _publish(project, record, sharing)

    def unpublish(self, project: Project, record: BuildRecord, sharing: Sharing) -> list[Outcome]:
        return _unpublish(project, record, sharing)

    def prune(self, project: Project, flavor: str, keep: int, *, apply: bool) -> list[Outcome]:
        return _prune(project, flavor, keep, apply)

    def sweep(self, project: Project, *, apply: bool) -> list[Outcome]:
        return _sweep(project, apply)


CLOUD = GcpCloud()

# --- connection --------------------------------------------------------------------------------

ENDPOINT_ENV = "IMAGEFORGE_GCP_ENDPOINT"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
ADC_MISSING = (
    "no application default credentials: run `gcloud auth application-default login` "
    "or set GOOGLE_APPLICATION_CREDENTIALS"
)
OPERATION_TIMEOUT = 900.0


def project_id(project: Project) -> str:
    """The GCP project: clouds.gcp.project, else $GOOGLE_CLOUD_PROJECT (as the build uses)."""
    found = project.images.clouds.gcp.project or os.environ.get("GOOGLE_CLOUD_PROJECT", "")
    if not found:
        raise ImageforgeError(
            "no GCP project: set clouds.gcp.project in images.yml or GOOGLE_CLOUD_PROJECT"
        )
    return found


def connection() -> tuple[Any, dict[str, str]]:
    """Credentials and client options for every Compute Engine client.

    With IMAGEFORGE_GCP_ENDPOINT set, clients talk to that endpoint; a plain-http one (a local
    test server) gets anonymous credentials, so no token is ever sent in clear. Otherwise:
    application default credentials.
    """
    endpoint = os.environ.get(ENDPOINT_ENV, "").strip()
    options = {"api_endpoint": endpoint} if endpoint else {}
    if endpoint.startswith("http://"):
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials(), options
    return _default_credentials(), options


def _default_credentials() -> Any:
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, _ = google.auth.default(scopes=SCOPES)
    except DefaultCredentialsError as exc:
        path = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        detail = f" (GOOGLE_APPLICATION_CREDENTIALS={path}: {exc})" if path else ""
        raise ImageforgeError(ADC_MISSING + detail) from exc
    return credentials


def compute_client(kind: str, conn: tuple[Any, dict[str, str]] | None = None) -> Any:
    """A google.cloud.compute_v1 client by class name (ImagesClient, ...) over REST."""
    from google.cloud import compute_v1

    credentials, options = conn or connection()
    return getattr(compute_v1, kind)(
        transport="rest", credentials=credentials, client_options=options or None
    )


class Gce:
    """The Compute Engine clients of one command in one project, sharing one connection."""

    def __init__(self, project: str) -> None:
        self.project = project
        self.connection = connection()
        self._clients: dict[str, Any] = {}

    def client(self, kind: str) -> Any:
        if kind not in self._clients:
            self._clients[kind] = compute_client(kind, self.connection)
        return self._clients[kind]

    @property
    def images(self) -> Any:
        return self.client("ImagesClient")

    def wait(self, operation: Any) -> None:
        """Wait for a global or zonal operation; raise ImageforgeError if it failed.

        Waits through this object's operations clients: the SDK's own `.result()` polls with a
        client built without our client options, i.e. past an endpoint override.
        """
        from google.cloud import compute_v1

        deadline = time.monotonic() + OPERATION_TIMEOUT
        while operation.status != compute_v1.Operation.Status.DONE:
            if time.monotonic() > deadline:
                raise ImageforgeError(f"operation {operation.name} still not done; gave up")
            zone = operation.zone.rsplit("/", 1)[-1]
            if zone:
                operation = self.client("ZoneOperationsClient").wait(
                    project=self.project, zone=zone, operation=operation.name
                )
            else:
                operation = self.client("GlobalOperationsClient").wait(
                    project=self.project, operation=operation.name
                )
        errors = [e.message or e.code for e in operation.error.errors]
        if errors:
            raise ImageforgeError(f"{operation.operation_type} failed: " + "; ".join(errors))


def _api_errors() -> tuple[type[Exception], ...]:
    """What an API call raises that becomes an Outcome's error instead of a traceback."""
    from google.api_core.exceptions import GoogleAPICallError
    from google.auth.exceptions import GoogleAuthError
    from requests.exceptions import ConnectionError as Unreachable

    return (ImageforgeError, GoogleAPICallError, GoogleAuthError, Unreachable)


def _failure(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc)
    code = getattr(exc, "code", None)
    return f"{code} {message}" if isinstance(code, int) else message


# --- images and build records ------------------------------------------------------------------

IMAGE_USER = "roles/compute.imageUser"
EVERYONE = "allAuthenticatedUsers"
FLAVOR_LABEL = "imageforge-flavor"
BUILD_LABEL = "imageforge-build-id"
VERIFIED_LABEL = "imageforge-verified"  # honoured if present ("true"); imageforge does not set it
MEMBER_TYPES = ("user:", "group:", "serviceAccount:", "domain:", "principal://", "principalSet://")
INACTIVE = ("DEPRECATED", "OBSOLETE", "DELETED")
ADDED = "gcp_added"  # record.published key: members publish added, by project


def image_name(record: BuildRecord) -> str | None:
    """The image a build made: googlecompute's artifact_id in Packer's manifest (last run)."""
    manifest = record.directory / "manifest.json"
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    builds = [
        b
        for b in data.get("builds", [])
        if b.get("builder_type") == "googlecompute" and b.get("artifact_id")
    ]
    last = [b for b in builds if b.get("packer_run_uuid") == data.get("last_run_uuid")]
    chosen = last or builds
    return chosen[-1]["artifact_id"] if chosen else None


def _artifact_ids(record: BuildRecord) -> dict[str, str]:
    name = image_name(record)
    if name is None:
        return dict(record.artifact_ids)
    recorded = [p for p, n in record.artifact_ids.items() if n == name and p]
    where = recorded[0] if recorded else os.environ.get("GOOGLE_CLOUD_PROJECT", "")
    return {where: name}


def _locate(project: Project, record: BuildRecord) -> tuple[str, str]:
    """(project id, image name) of a build: where its record says, else the configured one."""
    name = image_name(record)
    if not name:
        raise ImageforgeError(
            f"build {record.id} of {record.flavor} has no googlecompute image in "
            f"{record.directory / 'manifest.json'}",
            hint="did the build finish? `invoke build --cloud gcp` writes the manifest",
        )
    recorded = [p for p, n in record.artifact_ids.items() if n == name and p]
    return (recorded[0] if recorded else project_id(project)), name


def _created(image: Any) -> datetime:
    return datetime.fromisoformat(image.creation_timestamp)


def _ours(image: Any, flavor: str) -> bool:
    return image.labels.get(FLAVOR_LABEL) == label(flavor) and BUILD_LABEL in image.labels


def _verified_images(project: Project, flavor: str) -> set[str]:
    """Names of the images whose local build record is verified."""
    from imageforge import state

    return {
        name
        for record in state.records(project.root, flavor, "gcp")
        if record.verified and (name := image_name(record))
    }


def _is_verified(image: Any, verified: set[str]) -> bool:
    return image.name in verified or image.labels.get(VERIFIED_LABEL) == "true"


def _images(gce: Gce, list_filter: str) -> list[Any]:
    return list(gce.images.list(request={"project": gce.project, "filter": list_filter}))


def _set_deprecation(gce: Gce, image: str, state: str, replacement: str = "") -> None:
    from google.cloud import compute_v1

    status = compute_v1.DeprecationStatus(state=state)
    if replacement:
        status.replacement = replacement
    gce.wait(
        gce.images.deprecate_unary(
            project=gce.project, image=image, deprecation_status_resource=status
        )
    )


# --- IAM policy ----------------------------------------------------------------------------------

POLICY_VERSION = 3  # read conditional bindings intact, so writing back never drops them
ETAG_ATTEMPTS = 5
RETRY_SECONDS = 0.5


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


def _update_policy(gce: Gce, image: str, change: Callable[[Any], list[str]]) -> list[str]:
    """Read-modify-write the image's IAM policy with its etag; start over when another writer
    got in between (412/409). Returns what `change` changed; no write if nothing."""
    from google.api_core import exceptions
    from google.cloud import compute_v1

    for attempt in range(ETAG_ATTEMPTS):
        policy = gce.images.get_iam_policy(
            request={
                "project": gce.project,
                "resource": image,
                "options_requested_policy_version": POLICY_VERSION,
            }
        )
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


def _shared_with(gce: Gce, image: str) -> list[str]:
    """Everyone the image's policy grants roles/compute.imageUser (conditionally or not)."""
    policy = gce.images.get_iam_policy(
        request={
            "project": gce.project,
            "resource": image,
            "options_requested_policy_version": POLICY_VERSION,
        }
    )
    return [m for b in policy.bindings if b.role == IMAGE_USER for m in b.members]


# --- publish and unpublish -----------------------------------------------------------------


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
    bad = [a for a in sharing.accounts if not a.startswith(MEMBER_TYPES)]
    if bad:
        raise ImageforgeError(
            f"not an IAM member: {', '.join(bad)}",
            hint="prefix each with user:, group:, serviceAccount: or domain: "
            "(e.g. --account user:ada@example.com)",
        )
    return list(dict.fromkeys(sharing.accounts))


def _publish(project: Project, record: BuildRecord, sharing: Sharing) -> list[Outcome]:
    members = _members(sharing)
    where, name = _locate(project, record)
    gce = Gce(where)
    outcome = Outcome(where=where, subject=name)
    added: list[str] = []
    try:
        added = _update_policy(gce, name, lambda policy: _grant(policy, members))
        outcome.changes += [f"granted {IMAGE_USER} to {m}" for m in added]
        outcome.changes += _steer_family(gce, project, record.flavor, name)
    except _api_errors() as exc:
        outcome.error = _failure(exc)
    ours = dict(record.published.get(ADDED, {}))
    ours[where] = list(dict.fromkeys([*ours.get(where, []), *added]))
    record.published = {**record.published, ADDED: ours}
    return [outcome]


def _steer_family(gce: Gce, project: Project, flavor: str, name: str) -> list[str]:
    """Keep the image family resolving to the newest verified image.

    A family resolves to its newest image that is not deprecated. The rule: the published
    image is made ACTIVE if it was DEPRECATED (refused if OBSOLETE or DELETED); every image of
    its family that is newer (creationTimestamp), carries this flavor's imageforge labels, is
    not verified (no verified local build record names it, no `imageforge-verified=true` label)
    and is not deprecated yet is marked DEPRECATED with the published image as `replacement`.
    Newer verified images stay: the family then resolves to the newest of them. Older images
    and images without our labels are never touched.
    """
    image = gce.images.get(project=gce.project, image=name)
    changes = []
    state = image.deprecated.state
    if state in ("OBSOLETE", "DELETED"):
        raise ImageforgeError(f"image {name} is {state}; publish a newer build instead")
    if state == "DEPRECATED":
        _set_deprecation(gce, name, "ACTIVE")
        changes.append("made active again (was deprecated)")
    if not image.family:
        return changes
    verified = _verified_images(project, flavor)
    for other in _images(gce, f"family = {json.dumps(image.family)}"):
        if (
            other.name == name
            or _created(other) <= _created(image)
            or not _ours(other, flavor)
            or _is_verified(other, verified)
            or other.deprecated.state in INACTIVE
        ):
            continue
        _set_deprecation(gce, other.name, "DEPRECATED", image.self_link)
        changes.append(
            f"deprecated newer unverified {other.name} so family {image.family} resolves here"
        )
    return changes


def _unpublish(project: Project, record: BuildRecord, sharing: Sharing) -> list[Outcome]:
    """Revoke the members publish added (all of them, or the named ones among them)."""
    where, name = _locate(project, record)
    ours: list[str] = record.published.get(ADDED, {}).get(where, [])
    targets = ours if sharing.public else [m for m in ours if m in sharing.accounts]
    outcome = Outcome(where=where, subject=name)
    if targets:
        try:
            removed = _update_policy(Gce(where), name, lambda policy: _revoke(policy, targets))
            outcome.changes = [f"revoked {IMAGE_USER} from {m}" for m in removed]
        except _api_errors() as exc:
            outcome.error = _failure(exc)
            return [outcome]
    left = [m for m in ours if m not in targets]
    record.published = {**record.published, ADDED: {**record.published.get(ADDED, {}), where: left}}
    return [outcome]


# --- prune, sweep, doctor ------------------------------------------------------------------


def _prune(project: Project, flavor: str, keep: int, apply: bool) -> list[Outcome]:
    """Delete this flavor's images beyond the newest `keep` (by creationTimestamp).

    Never deleted: an image without the imageforge labels, the newest verified image, one still
    being created, or one whose IAM policy grants roles/compute.imageUser to anyone.
    """
    if keep < 0:
        raise ImageforgeError(f"keep must be 0 or more, not {keep}")
    where = project_id(project)
    gce = Gce(where)
    listed = _images(gce, f"labels.{FLAVOR_LABEL} = {json.dumps(label(flavor))}")
    images = sorted((i for i in listed if _ours(i, flavor)), key=_created, reverse=True)
    verified = _verified_images(project, flavor)
    newest_verified = next((i.name for i in images if _is_verified(i, verified)), None)
    outcomes = []
    for image in images[keep:]:
        reason = _kept_because(gce, image, newest_verified)
        if reason:
            log.info(f"{where}: keeping {image.name}: {reason}")
            continue
        build = image.labels.get(BUILD_LABEL)
        outcome = Outcome(
            where, f"{image.name} (build {build}, created {image.creation_timestamp})"
        )
        outcome.changes = ["deleted image" if apply else "would delete image"]
        if apply:
            try:
                gce.wait(gce.images.delete_unary(project=where, image=image.name))
            except _api_errors() as exc:
                outcome.changes, outcome.error = [], _failure(exc)
        outcomes.append(outcome)
    return outcomes


def _kept_because(gce: Gce, image: Any, newest_verified: str | None) -> str:
    if image.name == newest_verified:
        return "newest verified image"
    if image.status == "PENDING":
        return "still being created (PENDING)"
    shared = _shared_with(gce, image.name)
    return f"shared with {', '.join(shared)}" if shared else ""


def _aggregated(gce: Gce, kind: str, attribute: str) -> list[tuple[str, Any]]:
    """(zone, resource) for every instance or disk carrying our build label."""
    pages = gce.client(kind).aggregated_list(
        request={"project": gce.project, "filter": f"labels.{BUILD_LABEL}:*"}
    )
    return [
        (scope.rsplit("/", 1)[-1], item)
        for scope, scoped in pages
        for item in getattr(scoped, attribute)
        if BUILD_LABEL in item.labels
    ]


def _sweep(project: Project, apply: bool) -> list[Outcome]:
    """Build instances a killed `packer build` left (Packer puts our labels on them), their
    boot disks (Packer creates them with autoDelete off), and disks with our build label that
    no other instance uses. Other attached disks are never touched."""
    where = project_id(project)
    gce = Gce(where)
    verb = "removed" if apply else "would remove"
    instances = _aggregated(gce, "InstancesClient", "instances")
    doomed = {instance.self_link for _, instance in instances}
    disks: dict[str, tuple[str, str]] = {}
    for zone, instance in instances:
        for attached in instance.disks:
            if attached.boot and not attached.auto_delete:
                disks[attached.source] = (zone, attached.source.rsplit("/", 1)[-1])
    for zone, disk in _aggregated(gce, "DisksClient", "disks"):
        if set(disk.users) <= doomed:
            disks[disk.self_link] = (zone, disk.name)
    outcomes = []
    for zone, instance in instances:
        build = instance.labels[BUILD_LABEL]
        subject = f"instance {instance.name} (build {build}, created {instance.creation_timestamp})"
        outcomes.append(
            _remove(gce, zone, subject, verb, apply, "InstancesClient", instance=instance.name)
        )
    for zone, name in disks.values():
        outcomes.append(_remove(gce, zone, f"disk {name}", verb, apply, "DisksClient", disk=name))
    return outcomes


def _remove(
    gce: Gce, zone: str, subject: str, verb: str, apply: bool, kind: str, **resource: str
) -> Outcome:
    outcome = Outcome(f"{gce.project}/{zone}", subject, [verb])
    if apply:
        try:
            client = gce.client(kind)
            gce.wait(client.delete_unary(project=gce.project, zone=zone, **resource))
        except _api_errors() as exc:
            outcome.changes, outcome.error = [], _failure(exc)
    return outcome


def _doctor(project: Project, cell: Cell) -> list[str]:
    """Credentials resolve, the project answers, the source image family resolves."""
    from google.api_core import exceptions
    from google.auth.exceptions import RefreshError
    from requests.exceptions import ConnectionError as Unreachable

    where = project_id(project)
    gce = Gce(where)
    credentials, options = gce.connection
    found = [f"credentials: {_describe(credentials, options)}"]
    try:
        gce.images.list(request={"project": where, "max_results": 1})
    except Unreachable as exc:
        raise ImageforgeError(
            f"cannot reach the Compute Engine API: {exc}",
            hint=f"check the network, proxy settings and {ENDPOINT_ENV} if set",
        ) from exc
    except RefreshError as exc:
        raise ImageforgeError(
            f"application default credentials got no access token: {exc}",
            hint="run `gcloud auth application-default login` again",
        ) from exc
    except exceptions.NotFound as exc:
        raise ImageforgeError(
            f"GCP project {where!r} not found",
            hint="check clouds.gcp.project in images.yml or GOOGLE_CLOUD_PROJECT",
        ) from exc
    except (exceptions.Forbidden, exceptions.Unauthorized) as exc:
        raise ImageforgeError(
            f"no access to Compute Engine in project {where!r}: {exc.message}",
            hint="enable the API (`gcloud services enable compute.googleapis.com`) and grant "
            "the account roles/compute.instanceAdmin.v1 and roles/iam.serviceAccountUser",
        ) from exc
    found.append(f"project {where}: Compute Engine answers")
    source = project.images.clouds.gcp.source_image[cell.os]
    try:
        image = gce.images.get_from_family(project=source.project, family=source.family)
    except exceptions.NotFound as exc:
        raise ImageforgeError(
            f"source image family {source.family!r} not found in project {source.project!r}",
            hint=f"check clouds.gcp.source_image.{cell.os} in images.yml; "
            f"`gcloud compute images describe-from-family {source.family} "
            f"--project {source.project}` shows what exists",
        ) from exc
    found.append(f"source image {image.name} (family {source.family} in {source.project})")
    return found


def _describe(credentials: Any, options: dict[str, str]) -> str:
    if "api_endpoint" in options and type(credentials).__name__ == "AnonymousCredentials":
        return f"anonymous, for the endpoint {options['api_endpoint']}"
    account = getattr(credentials, "service_account_email", None)
    kind = type(credentials).__module__.rsplit(".", 1)[-1]
    return f"application default credentials ({kind}{', ' + account if account else ''})"
