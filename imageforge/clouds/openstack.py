"""openstack: openstack builds; publishing sets the Glance image visibility or members.

The SDK (openstacksdk) is imported inside the functions that talk to a cloud, so `invoke --list`
and rendering work without it configured. Credentials come only from the SDK's standard places
(clouds.yaml, OS_* variables) through the clouds.yaml entry `clouds.openstack.cloud`; they are
never logged.

Where image ids come from: Packer's manifest (an openstack build's `artifact_id` is the Glance
image id) and `record.artifact_ids["openstack:<cloud>"]`, which `import_image` sets for a local
build it uploaded. The manifest does not name the clouds.yaml entry: its id belongs to the entry
the project builds with (`artifact_ids()` alone, without a project, says `openstack`).

Sharing rules:
- public sharing sets visibility `public`, or `community` when images.yml sets
  `clouds.openstack.image_visibility: community` (Glance's default policy lets only admins make
  images public; any owner may make them community);
- sharing with accounts (project ids) sets visibility `shared` and adds one image member per
  project; each project accepts (or rejects) the member itself;
- publish records what it changed in `record.published["openstack_added"][<cloud>]`
  (`visibility_before`, `visibility`, `members`), and unpublish takes back exactly that.
  Only the owner project of an image shares it; anyone else gets an error before any change.

Prune looks at images of the project carrying `imageforge-flavor` and `imageforge-build-id`,
newest first, and never deletes public, community, shared or protected ones, nor the newest one
a verified build record names. Sweep finds build servers by their `imageforge-build-id`
metadata (the rendered source sets it as `instance_metadata`), the `packer_<uuid>` key pairs
they use and the volumes attached to them.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imageforge import hcl, keystone_stub, log
from imageforge.clouds.base import Cloud, Outcome, Sharing
from imageforge.errors import ImageforgeError

if TYPE_CHECKING:
    from imageforge.config import Project
    from imageforge.matrix import Cell
    from imageforge.state import BuildRecord

FLAVOR_KEY = "imageforge-flavor"
BUILD_KEY = "imageforge-build-id"
RECORD_PREFIX = "openstack:"
ADDED = "openstack_added"
DEFAULT_CLOUD = "openstack"
# Packer's openstack builder names its temporary key pair packer_<uuid>.
PACKER_KEYPAIR = re.compile(r"^packer_[0-9a-fA-F-]+$")


class OpenstackCloud(Cloud):
    name = "openstack"
    builder = "openstack"

    def source(self, project: Project, cell: Cell) -> dict[str, Any]:
        cfg = project.images.clouds.openstack
        image = cfg.source_image[cell.os]
        metadata = self.metadata(project, cell, cfg.metadata)
        return {
            "cloud": cfg.cloud,
            "flavor": cfg.flavor,
            "source_image_name": image.name,
            "source_image_filter": hcl.attributes(image.filter, indent=6) if image.filter else "",
            "networks": list(cfg.networks),
            "floating_ip_pool": cfg.floating_ip_pool,
            "security_groups": list(cfg.security_groups),
            "image_name": self.image_name(project, cell, cfg.image_name),
            "use_blockstorage_volume": cfg.use_blockstorage_volume,
            "volume_size": cfg.volume_size_gb if cfg.use_blockstorage_volume else None,
            "ssh_username": self.ssh_username(cell.os),
            # Images start private; `invoke publish` sets the visibility once verified.
            # The build server carries the same metadata, so `invoke sweep` can find it.
            "metadata_attributes": hcl.attributes(
                {"metadata": metadata, "instance_metadata": metadata}
            ),
        }

    @contextlib.contextmanager
    def validation_env(self, project: Project, scratch: Path) -> Iterator[dict[str, str]]:
        """A clouds.yaml with dummy credentials, authenticated by a local token endpoint."""
        with keystone_stub.serve() as auth_url:
            yield self._validation_env(project, scratch, auth_url)

    def _validation_env(self, project: Project, scratch: Path, auth_url: str) -> dict[str, str]:
        clouds_yaml = scratch / "clouds.yaml"
        clouds_yaml.write_text(
            "clouds:\n"
            f"  {_yaml_key(project.images.clouds.openstack.cloud)}:\n"
            "    auth:\n"
            f"      auth_url: {auth_url}\n"
            "      username: validate\n"
            "      password: validate-only\n"
            "      project_name: validate\n"
            "      user_domain_name: Default\n"
            "      project_domain_name: Default\n"
            "    region_name: RegionOne\n"
        )
        return {"OS_CLIENT_CONFIG_FILE": str(clouds_yaml)}

    def doctor(self, project: Project, cell: Cell) -> list[str]:
        return _doctor(project, cell)

    def artifact_ids(self, record: BuildRecord) -> dict[str, str]:
        return image_ids(record, DEFAULT_CLOUD)

    def publish(self, project: Project, record: BuildRecord, sharing: Sharing) -> list[Outcome]:
        return _publish(project, record, sharing)

    def unpublish(self, project: Project, record: BuildRecord, sharing: Sharing) -> list[Outcome]:
        return _unpublish(project, record, sharing)

    def prune(self, project: Project, flavor: str, keep: int, *, apply: bool) -> list[Outcome]:
        return _prune(project, flavor, keep, apply)

    def sweep(self, project: Project, *, apply: bool) -> list[Outcome]:
        return _sweep(project, apply)

    def import_image(self, project: Project, record: BuildRecord) -> str:
        """Upload a verified local build's qcow2 to Glance (private, with the build metadata).

        Idempotent: an active image of this build is reused. The id goes into
        `record.artifact_ids["openstack:<cloud>"]` and the record is saved.
        """
        return _import_image(project, record)


def _yaml_key(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- connection and errors --------------------------------------------------------------------


def connect(project: Project) -> Any:
    """A connection for the clouds.yaml entry `clouds.openstack.cloud` (SDK imported lazily)."""
    import openstack

    name = project.images.clouds.openstack.cloud
    with sdk_errors(name):
        return openstack.connect(cloud=name)


@contextlib.contextmanager
def sdk_errors(cloud: str) -> Iterator[None]:
    """Turn SDK, config and auth failures into one-line ImageforgeErrors (no credentials)."""
    from keystoneauth1 import exceptions as ks_exc
    from openstack import exceptions as os_exc

    try:
        yield
    except ImageforgeError:
        raise
    except os_exc.ConfigException as exc:
        raise ImageforgeError(
            f"OpenStack cloud {cloud!r}: {exc}",
            hint=f"add an entry {cloud!r} to clouds.yaml (or point OS_CLIENT_CONFIG_FILE at one),"
            " or set clouds.openstack.cloud in images.yml",
        ) from None
    except ks_exc.Unauthorized as exc:
        raise _refused(cloud, str(exc)) from None
    except ks_exc.ClientException as exc:
        raise ImageforgeError(f"OpenStack cloud {cloud!r}: {type(exc).__name__}: {exc}") from None
    except os_exc.SDKException as exc:
        # Connection.authorize() wraps keystoneauth's Unauthorized in a bare SDKException.
        if http_status(exc) == 401 or isinstance(exc.__context__, ks_exc.Unauthorized):
            raise _refused(cloud, why(exc)) from None
        raise ImageforgeError(f"OpenStack cloud {cloud!r}: {why(exc)}") from None


def _refused(cloud: str, detail: str) -> ImageforgeError:
    return ImageforgeError(
        f"OpenStack cloud {cloud!r}: authentication refused ({detail})",
        hint="check the credentials of this clouds.yaml entry (or the OS_* variables)",
    )


def why(exc: Exception) -> str:
    """An SDK error as 'status: what the service said'."""
    status = getattr(exc, "status_code", None)
    details = getattr(exc, "details", None) or getattr(exc, "message", None) or str(exc)
    details = re.sub(r"<br\s*/?>", " ", str(details)).strip()
    return f"{status}: {details}" if status else details


def http_status(exc: Exception) -> int | None:
    return getattr(exc, "status_code", None)


# --- image ids ---------------------------------------------------------------------------------


def image_ids(record: BuildRecord, manifest_cloud: str) -> dict[str, str]:
    """{clouds.yaml entry: Glance image id} from the manifest and record.artifact_ids."""
    ids = {
        key.removeprefix(RECORD_PREFIX): value
        for key, value in record.artifact_ids.items()
        if key.startswith(RECORD_PREFIX) and value
    }
    manifest = record.directory / "manifest.json"
    if manifest.is_file():
        for build in json.loads(manifest.read_text()).get("builds", []):
            if build.get("builder_type") == "openstack" and build.get("artifact_id"):
                ids.setdefault(manifest_cloud, build["artifact_id"])
    return ids


def image_id(project: Project, record: BuildRecord) -> str:
    """The build's image in the project's cloud, or an error saying how to get one."""
    cloud = project.images.clouds.openstack.cloud
    ids = image_ids(record, cloud)
    if cloud not in ids:
        known = ", ".join(sorted(ids)) or "none"
        raise ImageforgeError(
            f"build {record.id} of {record.flavor} has no Glance image in cloud {cloud!r}"
            f" (clouds with one: {known})",
            hint=f"`invoke import --image {record.flavor} --build {record.id}` uploads a local "
            "build; an openstack build records its image in manifest.json",
        )
    return ids[cloud]


def properties(image: Any) -> dict[str, Any]:
    """An image's custom properties (imageforge-*, and the rest Glance keeps)."""
    return dict(image.properties or {})


def owned_image(conn: Any, cloud: str, image_id: str) -> Any:
    """The image, when the connection's project owns it; a clear error otherwise."""
    from openstack import exceptions as os_exc

    try:
        image = conn.image.get_image(image_id)
    except os_exc.NotFoundException:
        raise ImageforgeError(
            f"Glance image {image_id} not found in cloud {cloud!r}: deleted, or not visible to "
            f"project {conn.current_project_id}"
        ) from None
    if image.owner != conn.current_project_id:
        raise ImageforgeError(
            f"Glance image {image_id} in cloud {cloud!r} belongs to project {image.owner}, not to "
            f"project {conn.current_project_id} these credentials are scoped to: only the owner "
            "can share it",
            hint="use the clouds.yaml entry of the project that imported or built the image",
        )
    return image


# --- publish and unpublish ---------------------------------------------------------------------


def target_visibility(project: Project, sharing: Sharing) -> str | None:
    """What publish sets: public (or community, per images.yml), shared, or nothing."""
    if sharing.public:
        return (
            "community"
            if project.images.clouds.openstack.image_visibility == "community"
            else "public"
        )
    return "shared" if sharing.accounts else None


def _added(record: BuildRecord, cloud: str, image: str) -> dict[str, Any]:
    """What publish added to this cloud's image so far (a fresh entry for a new image)."""
    entry = dict(record.published.get(ADDED, {}).get(cloud) or {})
    if entry.get("image") != image:
        entry = {"image": image, "visibility_before": None, "visibility": None, "members": []}
    entry["members"] = list(entry.get("members") or [])
    return entry


def _store_added(record: BuildRecord, cloud: str, entry: dict[str, Any]) -> None:
    added = dict(record.published.get(ADDED, {}))
    added[cloud] = entry
    record.published = {**record.published, ADDED: added}


def _publish(project: Project, record: BuildRecord, sharing: Sharing) -> list[Outcome]:
    cloud = project.images.clouds.openstack.cloud
    wanted = image_id(project, record)
    entry = _added(record, cloud, wanted)
    conn = connect(project)
    try:
        with sdk_errors(cloud):
            image = owned_image(conn, cloud, wanted)
            target = target_visibility(project, sharing)
            outcome = Outcome(cloud, f"image {wanted} ({image.name})")
            outcomes = [outcome]
            if target is not None:
                _share_visibility(conn, image, target, entry, outcome)
            if target == "shared" and outcome.error is None:
                outcomes += _add_members(conn, cloud, image, sharing.accounts, entry)
    finally:  # what was changed stays recorded, even when a later step failed
        _store_added(record, cloud, entry)
    return outcomes


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
        if target == "public" and http_status(exc) == 403:
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


def _unpublish(project: Project, record: BuildRecord, sharing: Sharing) -> list[Outcome]:
    cloud = project.images.clouds.openstack.cloud
    wanted = image_id(project, record)
    entry = _added(record, cloud, wanted)
    conn = connect(project)
    try:
        with sdk_errors(cloud):
            image = owned_image(conn, cloud, wanted)
            outcome = Outcome(cloud, f"image {wanted} ({image.name})")
            only = set(sharing.accounts) if sharing.accounts else None
            if only is None and entry["members"]:
                _back_to_shared(conn, image, entry, outcome)
            outcomes = _remove_members(conn, cloud, image, entry, only)
            failed = any(o.error for o in outcomes)
            if not failed and not entry["members"] and entry["visibility"]:
                _restore_visibility(conn, image, entry, outcome)
    finally:
        _store_added(record, cloud, entry)
    return [outcome, *outcomes]


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


# --- import ------------------------------------------------------------------------------------


def build_properties(record: BuildRecord) -> dict[str, str]:
    """The build metadata as Glance properties: the same keys as every cloud's tags."""
    from imageforge import __version__

    version = __version__
    manifest = record.directory / "manifest.json"
    if manifest.is_file():
        for build in json.loads(manifest.read_text()).get("builds", []):
            version = (build.get("custom_data") or {}).get("imageforge-version") or version
    return {
        FLAVOR_KEY: record.flavor,
        BUILD_KEY: record.id,
        "imageforge-git-commit": record.git_commit or "unknown",
        "imageforge-template-hash": record.template_hash or "unknown",
        "imageforge-version": version,
    }


def glance_name(project: Project, record: BuildRecord) -> str:
    pattern = project.images.clouds.openstack.image_name
    return (
        pattern.replace("{prefix}", project.images.settings.name_prefix)
        .replace("{flavor}", record.flavor)
        .replace("{build_id}", record.id)
    )


def _import_image(project: Project, record: BuildRecord) -> str:
    from imageforge import state
    from imageforge.publish import require_verified

    require_verified(record)
    if record.cloud != "local":
        raise ImageforgeError(
            f"build {record.id} of {record.flavor} is a {record.cloud} build: import uploads "
            "local (QEMU) builds only"
        )
    qcow2 = record.directory / "image" / f"{record.flavor}.qcow2"
    if not qcow2.is_file():
        raise ImageforgeError(f"build {record.id} has no image: {qcow2} is missing")
    if not state.artifacts_intact(record):
        raise ImageforgeError(f"build {record.id}: artifacts changed since the build; rebuild it")
    cloud = project.images.clouds.openstack.cloud
    conn = connect(project)
    with sdk_errors(cloud):
        found = _existing_import(conn, record)
        if found is None:
            found = _upload(conn, project, record, qcow2)
    record.artifact_ids = {**record.artifact_ids, RECORD_PREFIX + cloud: found}
    record.save()
    return found


def _existing_import(conn: Any, record: BuildRecord) -> str | None:
    """An active image of this build; stale half-uploads of it are deleted."""
    for image in conn.image.images(owner=conn.current_project_id):
        props = properties(image)
        if props.get(BUILD_KEY) != record.id or props.get(FLAVOR_KEY) != record.flavor:
            continue
        if image.status == "active":
            log.info(f"build {record.id} is already Glance image {image.id}")
            return image.id
        if image.status in ("queued", "killed"):
            log.info(f"deleting unfinished upload {image.id} ({image.status}) of {record.id}")
            conn.image.delete_image(image, ignore_missing=True)
            continue
        raise ImageforgeError(
            f"Glance image {image.id} of build {record.id} is {image.status}: another upload "
            "may be running",
            hint=f"wait for it, or delete it: openstack image delete {image.id}",
        )
    return None


def _upload(conn: Any, project: Project, record: BuildRecord, qcow2: Path) -> str:
    name = glance_name(project, record)
    log.info(f"uploading {qcow2.name} ({qcow2.stat().st_size} bytes) to Glance as {name}")
    image = conn.image.create_image(
        name,
        filename=str(qcow2),
        disk_format="qcow2",
        container_format="bare",
        visibility="private",
        allow_duplicates=True,
        disable_vendor_agent=False,
        validate_checksum=True,
        **build_properties(record),
    )
    return str(image.id)


# --- prune -------------------------------------------------------------------------------------


def ours(image: Any, flavor: str) -> bool:
    """An image this pipeline made for the flavor: it carries the imageforge properties."""
    props = properties(image)
    return props.get(FLAVOR_KEY) == flavor and bool(props.get(BUILD_KEY))


def _prune(project: Project, flavor: str, keep: int, apply: bool) -> list[Outcome]:
    from imageforge import state

    cloud = project.images.clouds.openstack.cloud
    verified = {
        ident
        for r in state.records(project.root, flavor)
        if r.verified
        for ident in image_ids(r, cloud).values()
    }
    conn = connect(project)
    with sdk_errors(cloud):
        images = [i for i in conn.image.images(owner=conn.current_project_id) if ours(i, flavor)]
        images.sort(key=lambda i: (i.created_at or "", properties(i)[BUILD_KEY]), reverse=True)
        newest_verified = next((i.id for i in images if i.id in verified), None)
        return [_prune_one(conn, cloud, i, newest_verified, apply) for i in images[keep:]]


def _prune_one(
    conn: Any, cloud: str, image: Any, newest_verified: str | None, apply: bool
) -> Outcome:
    outcome = Outcome(cloud, f"image {image.id} ({image.name})")
    reason = None
    if image.visibility in ("public", "community", "shared"):
        reason = image.visibility
    elif image.id == newest_verified:
        reason = "newest verified build"
    elif image.is_protected:
        reason = "protected"
    if reason:
        outcome.subject += f", kept: {reason}"
        return outcome
    if apply:
        try:
            conn.image.delete_image(image, ignore_missing=True)
        except Exception as exc:
            outcome.error = f"delete refused: {why(exc)}"
            return outcome
    outcome.changes.append("deleted" if apply else "would delete")
    return outcome


# --- sweep -------------------------------------------------------------------------------------


def _sweep(project: Project, apply: bool) -> list[Outcome]:
    """Build servers (with imageforge metadata), their packer_ key pairs and volumes."""
    cloud = project.images.clouds.openstack.cloud
    conn = connect(project)
    verb = "removed" if apply else "would remove"
    with sdk_errors(cloud):
        servers = [s for s in conn.compute.servers(details=True) if BUILD_KEY in (s.metadata or {})]
        wanted = {s.key_name for s in servers if s.key_name and PACKER_KEYPAIR.match(s.key_name)}
        keys = sorted(k.name for k in conn.compute.keypairs() if k.name in wanted)
        volumes = sorted({v["id"] for s in servers for v in _volumes(s)})
        outcomes = [
            Outcome(cloud, f"server {s.id} {s.name} (build {s.metadata[BUILD_KEY]})", [verb])
            for s in servers
        ]
        outcomes += [Outcome(cloud, f"key pair {k}", [verb]) for k in keys]
        outcomes += [Outcome(cloud, f"volume {v}", [verb]) for v in volumes]
        if apply:
            _remove(conn, servers, keys, volumes)
    return outcomes


def _volumes(server: Any) -> list[dict[str, Any]]:
    return [dict(v) for v in (server.attached_volumes or [])]


def _remove(conn: Any, servers: list[Any], keys: list[str], volumes: list[str]) -> None:
    for server in servers:
        conn.compute.delete_server(server, ignore_missing=True)
    for server in servers:
        conn.compute.wait_for_delete(server, interval=2, wait=600)
    for key in keys:
        conn.compute.delete_keypair(key, ignore_missing=True)
    for volume in volumes:
        conn.block_storage.delete_volume(volume, ignore_missing=True)


# --- doctor ------------------------------------------------------------------------------------


def _doctor(project: Project, cell: Cell) -> list[str]:
    import openstack.config

    cfg = project.images.clouds.openstack
    loader = openstack.config.OpenStackConfig()
    if cfg.cloud not in loader.get_cloud_names():
        files = loader.config_filename or "none found"
        raise ImageforgeError(
            f"no entry {cfg.cloud!r} in clouds.yaml (read: {files})",
            hint="add it (or set OS_CLIENT_CONFIG_FILE), or set clouds.openstack.cloud",
        )
    found = [f"clouds.yaml entry {cfg.cloud!r} in {loader.config_filename}"]
    conn = connect(project)
    with sdk_errors(cfg.cloud):
        conn.authorize()
        found.append(f"token for project {conn.current_project_id}")
        missing = [
            f"no {kind} service ({name}) in the service catalog"
            for kind, name in (("compute", "Nova"), ("image", "Glance"))
            if not conn.has_service(kind)
        ]
        if conn.has_service("compute"):
            missing += _check_flavor(conn, cfg.flavor, found)
        if conn.has_service("image"):
            missing += _check_source(conn, cfg.source_image[cell.os], cell.os, found)
    if missing:
        raise ImageforgeError(f"openstack cloud {cfg.cloud!r}: " + "; ".join(missing))
    return found


def _find(finder: Any, name: str) -> Any:
    """A find_* result, or None (ignore_missing=True is deprecated in openstacksdk)."""
    from openstack import exceptions as os_exc

    try:
        return finder(name, ignore_missing=False)
    except os_exc.NotFoundException:
        return None


def _check_flavor(conn: Any, wanted: str, found: list[str]) -> list[str]:
    flavor = _find(conn.compute.find_flavor, wanted)
    if flavor is None:
        names = sorted(f.name for f in conn.compute.flavors())
        return [f"flavor {wanted!r} not found (available: {', '.join(names) or 'none'})"]
    found.append(f"flavor {wanted} ({flavor.vcpus} vCPU, {flavor.ram} MB)")
    return []


def _check_source(conn: Any, source: Any, os_name: str, found: list[str]) -> list[str]:
    image = _source_image(conn, source.name, dict(source.filter))
    if image is None:
        wanted = f"name {source.name!r}" if source.name else f"filter {dict(source.filter)}"
        return [f"source image for {os_name} ({wanted}) not found"]
    found.append(f"source image {image.name} ({image.id}) for {os_name}")
    return []


def _source_image(conn: Any, name: str | None, filters: dict[str, str]) -> Any:
    """The image Packer would start from: by name, or the newest one matching the filter."""
    if name:
        return _find(conn.image.find_image, name)
    matches = [i for i in conn.image.images() if _matches(i, filters)]
    return max(matches, key=lambda i: i.created_at or "", default=None)


def _matches(image: Any, filters: dict[str, str]) -> bool:
    props = properties(image)
    return all(
        str(getattr(image, key, None) or props.get(key)) == value for key, value in filters.items()
    )


CLOUD = OpenstackCloud()
