"""OpenStack preflight: the clouds.yaml entry, a token, Nova and Glance, flavor, source image."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imageforge.clouds.openstack.connection import connect, errors, properties
from imageforge.errors import ImageforgeError

if TYPE_CHECKING:
    from imageforge.config import Project
    from imageforge.config.matrix import Cell


class OpenstackPreflight:
    def doctor(self, project: Project, cell: Cell) -> list[str]:
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
        with errors(cfg.cloud, "doctor", conn):
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
