"""OpenStack import: a verified local build's qcow2 uploaded to Glance with its metadata."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from imageforge import __version__, log
from imageforge.clouds.common import (
    BUILD_KEY,
    FLAVOR_KEY,
    VERSION_KEY,
    build_keys,
    manifest_artifacts,
    name,
)
from imageforge.clouds.openstack.connection import (
    IMPORTED,
    cloud_name,
    connect,
    errors,
    properties,
)
from imageforge.errors import ImageforgeError
from imageforge.records import state

if TYPE_CHECKING:
    from imageforge.config import Project
    from imageforge.records.record import BuildRecord


class OpenstackImporter:
    def import_build(self, project: Project, record: BuildRecord) -> dict[str, str]:
        """Upload (private, with the build metadata); idempotent: an active image of this build
        is reused. Returns {"openstack:<clouds.yaml entry>": Glance id} for the caller to
        record."""
        state.require_bound(record)
        if record.cloud != "local":
            raise ImageforgeError(
                f"build {record.id} of {record.flavor} is a {record.cloud} build: import uploads "
                "local (QEMU) builds only"
            )
        qcow2 = record.directory / "image" / f"{record.flavor}.qcow2"
        if not qcow2.is_file():
            raise ImageforgeError(f"build {record.id} has no image: {qcow2} is missing")
        cloud = cloud_name(project)
        conn = connect(project)
        with errors(cloud, "import", conn):
            found = _existing_import(conn, record)
            if found is None:
                found = _upload(conn, project, record, qcow2)
        return {IMPORTED + cloud: found}


def build_properties(record: BuildRecord) -> dict[str, str]:
    """The build metadata as Glance properties: the same keys as every cloud's tags."""
    version = __version__
    for build in manifest_artifacts(record.directory, "qemu"):
        version = (build.get("custom_data") or {}).get(VERSION_KEY) or version
    return build_keys(record, version)


def _existing_import(conn: Any, record: BuildRecord) -> str | None:
    """An active image of this build; stale half-uploads of it are deleted."""
    for image in conn.image.images(owner=conn.current_project_id):
        props = properties(image)
        if props.get(BUILD_KEY) != record.id or props.get(FLAVOR_KEY) != record.flavor:
            continue
        if image.status == "active":
            log.info(f"build {record.id} is already Glance image {image.id}")
            return str(image.id)
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
    pattern = project.images.clouds.openstack.image_name
    glance_name = name(project, pattern, record.flavor, record.id)
    log.info(f"uploading {qcow2.name} ({qcow2.stat().st_size} bytes) to Glance as {glance_name}")
    image = conn.image.create_image(
        glance_name,
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
