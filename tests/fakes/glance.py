"""A stateful Glance v2 on requests-mock, behind openstacksdk's own fake Keystone catalog.

`FakeCloud.install(mocker)` answers Keystone discovery and token requests with the v3 token of
openstacksdk's `openstack.fixture.connection.ConnectionFixture` (a catalog with every service
at https://<service-type>.example.com), and Glance with `FakeGlance`.

FakeGlance keeps images, their data and members in memory and behaves the way a real Glance
(33.x, default policy) was seen to behave:

- a new image is `queued` with visibility `shared`; `PUT .../file` makes it `active`, with md5
  `checksum` and size; data that is not qcow2 for `disk_format: qcow2` is refused with 415
  (Glance's format inspection) and the image stays `queued`;
- `PATCH` takes JSON-patch (`application/openstack-images-v2.1-json-patch`): add, replace and
  remove of `/visibility`, `/name`, `/protected` and custom properties; only the owner patches;
- members exist only on `shared` images (403 "Only shared images have members" otherwise),
  only the owner adds or removes them, a duplicate is 409, a new member is `pending`;
- `refuse_visibility` and `refuse_member` make chosen requests fail (say, `public` → 403,
  which is what Glance's default policy answers a non-admin);
- the image list shows own images plus public, community and accepted shared ones of others,
  filtered by `owner`, `visibility`, `status` and `name`; one page, oldest first.

Every request that changes something is appended to `mutations` as "METHOD /path".
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests_mock

IDENTITY = "https://identity.example.com"
IMAGE = "https://image.example.com"
QCOW2_MAGIC = b"QFI\xfb"
VISIBILITIES = ("public", "private", "shared", "community")
PATCHABLE = {"visibility", "name", "protected", "min_disk", "min_ram", "tags"}
READ_ONLY = {"id", "status", "owner", "size", "checksum", "created_at", "updated_at", "file"}
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class GlanceError(Exception):
    """An error answer: status and the message Glance would put in its body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class FakeGlance:
    """Glance v2's images, image data and members for one caller project."""

    project_id: str
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    data: dict[str, bytes] = field(default_factory=dict)
    members: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    refuse_visibility: dict[str, int] = field(default_factory=dict)
    refuse_member: dict[str, int] = field(default_factory=dict)
    mutations: list[str] = field(default_factory=list)
    _clock: itertools.count = field(default_factory=itertools.count)

    # --- test helpers -------------------------------------------------------------------------

    def add_image(self, **attrs: Any) -> dict[str, Any]:
        """An image as if created earlier: active, private, owned by the caller unless said."""
        image = self._new(attrs.pop("name", "seeded"))
        image.update(status="active", visibility="private", disk_format="qcow2")
        image.update(container_format="bare", size=16, checksum="0" * 32)
        image.update(attrs)
        self.images[image["id"]] = image
        return image

    def member_ids(self, image_id: str) -> list[str]:
        return sorted(self.members.get(image_id, {}))

    # --- routes -------------------------------------------------------------------------------

    def install(self, mocker: requests_mock.Mocker) -> None:
        versions = {
            "versions": [
                {"id": v, "status": s, "links": [{"rel": "self", "href": f"{IMAGE}/v2/"}]}
                for v, s in (("v2.16", "CURRENT"), ("v2.1", "SUPPORTED"))
            ]
        }
        mocker.get(f"{IMAGE}/", status_code=300, json=versions)
        mocker.get(f"{IMAGE}/v2/", json={"versions": versions["versions"][:1]})
        images = re.compile(rf"^{re.escape(IMAGE)}/v2/images(\?.*)?$")
        one = re.compile(rf"^{re.escape(IMAGE)}/v2/images/[^/?]+(\?.*)?$")
        data = re.compile(rf"^{re.escape(IMAGE)}/v2/images/[^/]+/file$")
        members = re.compile(rf"^{re.escape(IMAGE)}/v2/images/[^/]+/members(\?.*)?$")
        member = re.compile(rf"^{re.escape(IMAGE)}/v2/images/[^/]+/members/[^/?]+$")
        routes = [
            ("GET", images, self.list_images),
            ("POST", images, self.create_image),
            ("GET", one, self.get_image),
            ("PATCH", one, self.patch_image),
            ("DELETE", one, self.delete_image),
            ("PUT", data, self.upload),
            ("GET", members, self.list_members),
            ("POST", members, self.add_member),
            ("GET", member, self.get_member),
            ("PUT", member, self.update_member),
            ("DELETE", member, self.remove_member),
        ]
        for method, pattern, handler in routes:
            mocker.register_uri(method, pattern, json=self._answer(handler))

    def _answer(self, handler: Any) -> Any:
        def respond(request: Any, context: Any) -> Any:
            parts = urlsplit(request.url).path.split("/")[3:]  # after /v2/images
            query = dict(parse_qsl(urlsplit(request.url).query))
            if request.method != "GET":
                self.mutations.append(f"{request.method} {urlsplit(request.url).path}")
            try:
                status, body = handler(request, parts, query)
            except GlanceError as exc:
                context.status_code = exc.status
                return {"message": exc.message, "code": exc.status, "title": "error"}
            context.status_code = status
            return body

        return respond

    # --- images -------------------------------------------------------------------------------

    def _new(self, name: str) -> dict[str, Any]:
        moment = iso(EPOCH + timedelta(seconds=next(self._clock)))
        ident = str(uuid.uuid4())
        return {
            "id": ident,
            "name": name,
            "status": "queued",
            "visibility": "shared",
            "owner": self.project_id,
            "protected": False,
            "os_hidden": False,
            "tags": [],
            "min_disk": 0,
            "min_ram": 0,
            "size": None,
            "checksum": None,
            "disk_format": None,
            "container_format": None,
            "created_at": moment,
            "updated_at": moment,
            "file": f"/v2/images/{ident}/file",
            "self": f"/v2/images/{ident}",
            "schema": "/v2/schemas/image",
        }

    def visible(self, image: dict[str, Any]) -> bool:
        if image["owner"] == self.project_id or image["visibility"] in ("public", "community"):
            return True
        return image["visibility"] == "shared" and self.project_id in self.members.get(
            image["id"], {}
        )

    def _image(self, ident: str) -> dict[str, Any]:
        image = self.images.get(ident)
        if image is None or not self.visible(image):
            raise GlanceError(404, f"No image found with ID {ident}")
        return image

    def _owned(self, ident: str, action: str) -> dict[str, Any]:
        image = self._image(ident)
        if image["owner"] != self.project_id:
            raise GlanceError(403, f"You are not authorized to complete {action} action.")
        return image

    def list_images(self, request: Any, parts: list[str], query: dict[str, str]) -> Any:
        found = []
        for image in self.images.values():
            listed = image["owner"] == self.project_id or image["visibility"] == "public"
            member = self.members.get(image["id"], {}).get(self.project_id)
            listed = listed or (member is not None and member["status"] == "accepted")
            if not listed:
                continue
            if all(str(image.get(k)) == v for k, v in query.items() if k in _FILTERS):
                found.append(image)
        return 200, {"images": found, "first": "/v2/images", "schema": "/v2/schemas/images"}

    def create_image(self, request: Any, parts: list[str], query: dict[str, str]) -> Any:
        body = request.json()
        visibility = body.get("visibility", "shared")
        if visibility not in VISIBILITIES:
            raise GlanceError(400, f"Invalid visibility value: {visibility}")
        if visibility in self.refuse_visibility:
            raise GlanceError(self.refuse_visibility[visibility], "Forbidden")
        image = self._new(body.pop("name", ""))
        image.update({k: v for k, v in body.items() if k not in READ_ONLY})
        self.images[image["id"]] = image
        return 201, image

    def get_image(self, request: Any, parts: list[str], query: dict[str, str]) -> Any:
        return 200, self._image(parts[0])

    def patch_image(self, request: Any, parts: list[str], query: dict[str, str]) -> Any:
        content_type = request.headers.get("Content-Type", "")
        if content_type != "application/openstack-images-v2.1-json-patch":
            raise GlanceError(415, f"Unsupported Content-Type {content_type}")
        image = self._owned(parts[0], "modify_image")
        changed = dict(image)
        for op in request.json():
            self._apply(changed, op)
        image.update(changed)
        for key in set(image) - set(changed):
            del image[key]
        image["updated_at"] = iso(EPOCH + timedelta(seconds=next(self._clock)))
        return 200, image

    def _apply(self, image: dict[str, Any], op: dict[str, Any]) -> None:
        key = op["path"].lstrip("/")
        if key in READ_ONLY:
            raise GlanceError(403, f"Attribute '{key}' is read-only.")
        if op["op"] == "remove":
            if key in PATCHABLE or key not in image:
                raise GlanceError(409, f"Property {key} does not exist or cannot be removed.")
            del image[key]
            return
        if op["op"] not in ("add", "replace"):
            raise GlanceError(400, f"Unsupported JSON-patch operation {op['op']}")
        value = op["value"]
        if key == "visibility":
            if value not in VISIBILITIES:
                raise GlanceError(400, f"Invalid visibility value: {value}")
            if value in self.refuse_visibility:
                raise GlanceError(self.refuse_visibility[value], "Forbidden")
        elif key not in PATCHABLE and not isinstance(value, str):
            raise GlanceError(400, f"Property {key} must be a string")
        image[key] = value

    def delete_image(self, request: Any, parts: list[str], query: dict[str, str]) -> Any:
        image = self._owned(parts[0], "delete_image")
        if image["protected"]:
            raise GlanceError(403, f"Image {image['id']} is protected and cannot be deleted.")
        del self.images[image["id"]]
        self.members.pop(image["id"], None)
        self.data.pop(image["id"], None)
        return 204, None

    def upload(self, request: Any, parts: list[str], query: dict[str, str]) -> Any:
        image = self._owned(parts[0], "upload_image")
        if image["status"] != "queued":
            raise GlanceError(409, f"Image status transition from {image['status']} is not allowed")
        body = request.body
        payload = body.read() if hasattr(body, "read") else bytes(body or b"")
        if image.get("disk_format") == "qcow2" and not payload.startswith(QCOW2_MAGIC):
            raise GlanceError(415, "Image disk format qcow2 does not match the data")
        self.data[image["id"]] = payload
        image.update(status="active", size=len(payload), checksum=hashlib.md5(payload).hexdigest())
        return 204, None

    # --- members ------------------------------------------------------------------------------

    def _shared(self, ident: str, action: str) -> dict[str, Any]:
        image = self._owned(ident, action)
        if image["visibility"] != "shared":
            raise GlanceError(
                403, f"Not allowed to {action} for image {ident}: only shared images have members."
            )
        return image

    def list_members(self, request: Any, parts: list[str], query: dict[str, str]) -> Any:
        image = self._shared(parts[0], "list members")
        found = list(self.members.get(image["id"], {}).values())
        return 200, {"members": found, "schema": "/v2/schemas/members"}

    def add_member(self, request: Any, parts: list[str], query: dict[str, str]) -> Any:
        image = self._shared(parts[0], "add member")
        member_id = request.json()["member"]
        if member_id in self.refuse_member:
            raise GlanceError(self.refuse_member[member_id], f"Member {member_id} refused")
        current = self.members.setdefault(image["id"], {})
        if member_id in current:
            raise GlanceError(409, f"Member {member_id} is duplicated for image {image['id']}")
        moment = iso(EPOCH + timedelta(seconds=next(self._clock)))
        current[member_id] = {
            "member_id": member_id,
            "image_id": image["id"],
            "status": "pending",
            "created_at": moment,
            "updated_at": moment,
            "schema": "/v2/schemas/member",
        }
        return 200, current[member_id]

    def _member(self, parts: list[str]) -> dict[str, Any]:
        member = self.members.get(parts[0], {}).get(parts[2])
        if member is None:
            raise GlanceError(404, f"{parts[2]} is not a member of image {parts[0]}")
        return member

    def get_member(self, request: Any, parts: list[str], query: dict[str, str]) -> Any:
        self._image(parts[0])
        return 200, self._member(parts)

    def update_member(self, request: Any, parts: list[str], query: dict[str, str]) -> Any:
        member = self._member(parts)
        if parts[2] != self.project_id:
            raise GlanceError(403, "Only the member project may change its status")
        member["status"] = request.json()["status"]
        return 200, member

    def remove_member(self, request: Any, parts: list[str], query: dict[str, str]) -> Any:
        self._shared(parts[0], "delete member")
        self._member(parts)
        del self.members[parts[0]][parts[2]]
        return 204, None


_FILTERS = ("owner", "visibility", "status", "name")


@dataclass
class FakeCloud:
    """Keystone (openstacksdk's fixture catalog) plus FakeGlance, and a clouds.yaml for them."""

    project_id: str = "0123456789abcdef0123456789abcdef"
    glance: FakeGlance = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.glance = FakeGlance(self.project_id)

    def install(self, mocker: requests_mock.Mocker) -> None:
        from openstack.fixture.connection import ConnectionFixture

        token = ConnectionFixture(project_id=self.project_id).v3_token
        discovery = {
            "versions": {
                "values": [
                    {
                        "id": "v3.14",
                        "status": "stable",
                        "links": [{"rel": "self", "href": f"{IDENTITY}/v3/"}],
                        "media-types": [
                            {
                                "base": "application/json",
                                "type": "application/vnd.openstack.identity-v3+json",
                            }
                        ],
                    }
                ]
            }
        }
        mocker.get(f"{IDENTITY}/", json=discovery, status_code=300)
        mocker.get(f"{IDENTITY}/v3/", json={"version": discovery["versions"]["values"][0]})
        mocker.post(
            f"{IDENTITY}/v3/auth/tokens",
            json=token,
            status_code=201,
            headers={"X-Subject-Token": "fake-token"},
        )
        self.glance.install(mocker)

    def clouds_yaml(self, path: Path, cloud: str = "openstack") -> Path:
        path.write_text(
            "clouds:\n"
            f"  {cloud}:\n"
            "    auth:\n"
            f"      auth_url: {IDENTITY}\n"
            "      username: admin\n"
            "      password: fake-password\n"
            "      project_name: admin\n"
            "      user_domain_name: Default\n"
            "      project_domain_name: Default\n"
            "    region_name: RegionOne\n"
            "    identity_api_version: 3\n"
        )
        return path
