"""The openstacksdk connection of every OpenStack concern, and the image ids of a build.

Credentials come only from the SDK's standard places (clouds.yaml, OS_* variables) through the
clouds.yaml entry `clouds.openstack.cloud`; they are never logged. A build's Glance image ids:
an openstack build records {"openstack": id} (the entry it was built with), an import records
{"openstack:<entry>": id}.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from imageforge.clouds.common import recorded_ids
from imageforge.clouds.sdkerrors import sdk_errors
from imageforge.errors import ImageforgeError

if TYPE_CHECKING:
    from imageforge.config import Project
    from imageforge.records.record import BuildRecord

PLACE = "openstack"
IMPORTED = "openstack:"


def cloud_name(project: Project) -> str:
    return project.images.clouds.openstack.cloud


@contextlib.contextmanager
def errors(cloud: str, operation: str, conn: Any = None) -> Iterator[None]:
    """SDK errors as one line naming the clouds.yaml entry, the operation and Keystone."""
    endpoint = ""
    if conn is not None:
        endpoint = (conn.config.config.get("auth") or {}).get("auth_url", "")
    with sdk_errors(f"OpenStack cloud {cloud!r}", operation, endpoint):
        yield


def connect(project: Project) -> Any:
    """A connection for the clouds.yaml entry `clouds.openstack.cloud`."""
    import openstack
    from openstack import exceptions as os_exc

    name = cloud_name(project)
    try:
        with errors(name, "connect"):
            return openstack.connect(cloud=name)
    except ImageforgeError as exc:
        if isinstance(exc.__context__, os_exc.ConfigException):
            exc.hint = (
                f"add an entry {name!r} to clouds.yaml (or point OS_CLIENT_CONFIG_FILE at one),"
                " or set clouds.openstack.cloud in images.yml"
            )
        raise


def image_ids(record: BuildRecord, built_in: str) -> dict[str, str]:
    """{clouds.yaml entry: Glance image id}; `built_in` is the entry an openstack build used."""
    ids = {}
    for key, value in recorded_ids(record).items():
        if key == PLACE:
            ids[built_in] = value
        elif key.startswith(IMPORTED):
            ids[key.removeprefix(IMPORTED)] = value
    return ids


def image_id(project: Project, record: BuildRecord) -> str:
    """The build's image in the project's cloud, or an error saying how to get one."""
    cloud = cloud_name(project)
    ids = image_ids(record, cloud)
    if cloud not in ids:
        known = ", ".join(sorted(ids)) or "none"
        raise ImageforgeError(
            f"build {record.id} of {record.flavor} has no Glance image in cloud {cloud!r}"
            f" (clouds with one: {known})",
            hint=f"`invoke import --image {record.flavor} --build {record.id}` uploads a local "
            "build; an openstack build records its image when it is built",
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
