"""OpenStack publish, import, prune, sweep and doctor through openstacksdk, against fakes.

Keystone is openstacksdk's own fixture catalog (`ConnectionFixture`), Glance is the stateful
requests-mock fake of tests/fakes/glance.py, and Nova/Cinder are the small fakes below. No
server runs; a request to anything not faked fails the test (requests-mock's NoMockAddress).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests_mock

from imageforge import config
from imageforge.clouds import openstack as os_cloud
from imageforge.clouds.common import Outcome, Sharing
from imageforge.clouds.openstack.connection import connect, image_ids
from imageforge.config.matrix import find
from imageforge.errors import ImageforgeError
from imageforge.records import provenance, state
from imageforge.records.state import BuildRecord
from imageforge.stages import publish
from tests.fakes.glance import QCOW2_MAGIC, FakeCloud, FakeGlance

from ..conftest import write
from .records import make_record as record_of

COMPUTE = "https://compute.example.com/v2.1"
VOLUME = "https://block-storage.example.com"
FLAVOR = "slurm-node"
CLOUD = os_cloud.CLOUD
# openstacksdk warns about its own internals (PendingDeprecationWarning subclasses).
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
ADDED_MEMBER = "added as image member (pending until the project accepts it)"


class FakeNova:
    """Flavors, servers and key pairs of Nova, and volume deletion in Cinder."""

    def __init__(self, project_id: str) -> None:
        self.project_id = project_id
        self.flavors = [{"id": "3", "name": "m1.medium", "vcpus": 2, "ram": 4096, "disk": 40}]
        self.servers: dict[str, dict[str, Any]] = {}
        self.keypairs: dict[str, dict[str, Any]] = {}
        self.volumes: set[str] = set()
        self.deleted: list[str] = []

    def add_server(self, ident: str, name: str, metadata: dict[str, str], **extra: Any) -> None:
        self.servers[ident] = {
            "id": ident,
            "name": name,
            "status": "ACTIVE",
            "metadata": metadata,
            "tenant_id": self.project_id,
            "os-extended-volumes:volumes_attached": [],
            **extra,
        }

    def install(self, mocker: requests_mock.Mocker) -> None:
        version = {
            "id": "v2.1",
            "status": "CURRENT",
            "version": "2.90",
            "min_version": "2.1",
            "links": [{"rel": "self", "href": f"{COMPUTE}/"}],
        }
        mocker.get(f"{COMPUTE}/", json={"version": version})
        mocker.get("https://compute.example.com/", json={"versions": [version]})
        # requests-mock tries the latest registration first: specific paths go last.
        mocker.get(re.compile(rf"{COMPUTE}/flavors/[^/]+$"), json=self._flavor)
        mocker.get(re.compile(rf"{COMPUTE}/flavors/detail(\?.*)?$"), json=self._flavors)
        server = re.compile(rf"{COMPUTE}/servers/[^/]+$")
        mocker.get(server, json=self._server)
        mocker.delete(server, json=self._delete_server)
        mocker.get(re.compile(rf"{COMPUTE}/servers/detail(\?.*)?$"), json=self._servers)
        mocker.get(re.compile(rf"{COMPUTE}/os-keypairs(\?.*)?$"), json=self._keypairs)
        mocker.delete(re.compile(rf"{COMPUTE}/os-keypairs/[^/]+$"), json=self._delete_keypair)
        # Neutron: no verification security groups or floating IPs here.
        network = "https://network.example.com"
        link = {"rel": "self", "href": f"{network}/v2.0/"}
        mocker.get(f"{network}/", json={"versions": [{"id": "v2.0", "status": "CURRENT",
                                                      "links": [link]}]})  # fmt: skip
        for path, key in (("security-groups", "security_groups"), ("floatingips", "floatingips")):
            mocker.get(re.compile(rf"{network}/v2\.0/{path}(\?.*)?$"), json={key: []})
        cinder = {
            "id": "v3.0",
            "status": "CURRENT",
            "version": "3.70",
            "min_version": "3.0",
            "links": [{"rel": "self", "href": f"{VOLUME}/v3/"}],
        }
        mocker.get(f"{VOLUME}/", json={"versions": [cinder]})
        mocker.get(f"{VOLUME}/v3/", json={"version": cinder})
        volume = re.compile(rf"{VOLUME}/v3/{self.project_id}/volumes/[^/]+$")
        mocker.delete(volume, json=self._delete_volume)

    @staticmethod
    def _last(request: Any) -> str:
        return request.path.rstrip("/").rsplit("/", 1)[-1]

    def _flavor(self, request: Any, context: Any) -> Any:
        ident = self._last(request)
        for flavor in self.flavors:
            if ident in (flavor["id"], flavor["name"]):
                return {"flavor": flavor}
        context.status_code = 404
        return {"itemNotFound": {"code": 404, "message": f"Flavor {ident} could not be found."}}

    def _flavors(self, request: Any, context: Any) -> Any:
        return {"flavors": self.flavors}

    def _servers(self, request: Any, context: Any) -> Any:
        return {"servers": list(self.servers.values())}

    def _server(self, request: Any, context: Any) -> Any:
        ident = self._last(request)
        if ident not in self.servers:
            context.status_code = 404
            return {"itemNotFound": {"code": 404, "message": "Instance could not be found."}}
        return {"server": self.servers[ident]}

    def _delete_server(self, request: Any, context: Any) -> Any:
        ident = self._last(request)
        self.servers.pop(ident)
        self.deleted.append(f"server {ident}")
        context.status_code = 204
        return None

    def _keypairs(self, request: Any, context: Any) -> Any:
        return {"keypairs": [{"keypair": k} for k in self.keypairs.values()]}

    def _delete_keypair(self, request: Any, context: Any) -> Any:
        name = self._last(request)
        self.keypairs.pop(name)
        self.deleted.append(f"keypair {name}")
        context.status_code = 202
        return None

    def _delete_volume(self, request: Any, context: Any) -> Any:
        ident = self._last(request)
        self.volumes.remove(ident)
        self.deleted.append(f"volume {ident}")
        context.status_code = 202
        return None


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCloud]:
    """Keystone + Glance (+ Nova/Cinder as fake.nova) on requests-mock; clouds.yaml points there."""
    for var in [v for v in __import__("os").environ if v.startswith("OS_")]:
        monkeypatch.delenv(var)
    cloud = FakeCloud()
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(cloud.clouds_yaml(tmp_path / "clouds.yaml")))
    with requests_mock.Mocker() as mocker:
        cloud.install(mocker)
        nova = FakeNova(cloud.project_id)
        nova.install(mocker)
        cloud.nova = nova  # type: ignore[attr-defined]
        yield cloud


@pytest.fixture
def glance(fake: FakeCloud) -> FakeGlance:
    return fake.glance


def load_project(scratch: Path, openstack: str = "") -> config.Project:
    write(
        scratch,
        f"clouds:\n  openstack:\n    cloud: openstack\n{openstack}flavors:\n  {FLAVOR}: {{}}\n",
    )
    return config.load("images.yml")


@pytest.fixture
def project(scratch: Path, fake: FakeCloud) -> config.Project:
    return load_project(scratch)


def make_record(
    root: Path,
    *,
    build_id: str = "20250101-000000-abcdef0",
    cloud: str = "openstack",
    image_id: str | None = None,
    verified: bool = True,
    qcow2: bytes | None = None,
) -> BuildRecord:
    """A build record: an openstack build records its Glance image, a local one its qcow2."""
    files = {}
    if qcow2 is not None:
        files[f"image/{FLAVOR}.qcow2"] = qcow2
        qemu = {"builder_type": "qemu", "artifact_id": "VM",
                "custom_data": {"imageforge-version": "9.8.7"}}  # fmt: skip
        files["manifest.json"] = json.dumps({"builds": [qemu]}).encode()
    return record_of(
        root, FLAVOR, cloud, build_id, artifact_ids={"openstack": image_id} if image_id else {},
        verified=verified, files=files, failures=("test_common.py::test_sshd_hardened",),
    )  # fmt: skip


def pub(
    project: config.Project, record: BuildRecord, sharing: Sharing, *, revoke: bool = False
) -> list[Outcome]:
    """publish.publish with the record as it is on disk now (what earlier runs added)."""
    return publish.publish(project, state.load(record.directory), sharing, revoke=revoke)


def direct(verb: str, project: config.Project, record: BuildRecord, sharing: Sharing) -> list:
    """The sharer's own outcomes, with the record as it is on disk now."""
    return getattr(CLOUD, verb)(project, state.load(record.directory), sharing).outcomes


def ours(glance: FakeGlance, build_id: str, **attrs: Any) -> dict[str, Any]:
    """A Glance image with the imageforge properties of a build of FLAVOR."""
    props = {"imageforge-flavor": FLAVOR, "imageforge-build-id": build_id}
    return glance.add_image(name=f"imageforge-{FLAVOR}-{build_id}", **{**props, **attrs})


# --- image ids ---------------------------------------------------------------------------------


def test_artifact_ids_from_manifest_and_imports(scratch: Path) -> None:
    manifest = {"builds": [{"builder_type": "openstack", "artifact_id": "img-from-packer"}]}
    (scratch / "manifest.json").write_text(json.dumps(manifest))
    assert CLOUD.artifact_ids(scratch) == {"openstack": "img-from-packer"}
    record = make_record(scratch, image_id="img-from-packer")
    record = state.imported(record, "openstack:other-cloud", "img-imported")
    assert image_ids(record, "builder") == {
        "builder": "img-from-packer",
        "other-cloud": "img-imported",
    }


# --- publish -----------------------------------------------------------------------------------


def test_publish_public_then_idempotent(project, scratch: Path, glance: FakeGlance) -> None:
    image = ours(glance, "b1")
    record = make_record(scratch, image_id=image["id"])
    outcomes = pub(project, record, Sharing(public=True))
    assert [(o.where, o.changes, o.error) for o in outcomes] == [
        ("openstack", ["visibility private → public"], None)
    ]
    assert glance.images[image["id"]]["visibility"] == "public"
    before = list(glance.mutations)
    again = pub(project, record, Sharing(public=True))
    assert [(o.changes, o.error) for o in again] == [([], None)]
    assert glance.mutations == before


def test_public_means_community_when_images_yml_says_so(scratch: Path, glance: FakeGlance) -> None:
    project = load_project(scratch, "    image_visibility: community\n")
    image = ours(glance, "b1")
    record = make_record(scratch, image_id=image["id"])
    pub(project, record, Sharing(public=True))
    assert glance.images[image["id"]]["visibility"] == "community"


def test_public_refused_by_policy_suggests_community(
    project, scratch: Path, glance: FakeGlance
) -> None:
    glance.refuse_visibility["public"] = 403
    image = ours(glance, "b1")
    record = make_record(scratch, image_id=image["id"])
    with pytest.raises(ImageforgeError, match="publish incomplete in openstack"):
        pub(project, record, Sharing(public=True))
    error = state.load(record.directory).published["openstack"].outcomes[0]["error"]
    assert error.startswith("visibility public refused: 403")
    assert "image_visibility: community" in error
    assert glance.images[image["id"]]["visibility"] == "private"


def test_share_with_projects_then_unpublish_restores_private(
    project, scratch: Path, glance: FakeGlance
) -> None:
    image = ours(glance, "b1")
    record = make_record(scratch, image_id=image["id"])
    sharing = Sharing(public=False, accounts=("proj-a", "proj-b"))
    outcomes = pub(project, record, sharing)
    assert [o.subject.split()[-1] for o in outcomes[1:]] == ["proj-a", "proj-b"]
    assert outcomes[0].changes == ["visibility private → shared"]
    assert all(o.changes and "pending" in o.changes[0] for o in outcomes[1:])
    assert glance.images[image["id"]]["visibility"] == "shared"
    assert glance.member_ids(image["id"]) == ["proj-a", "proj-b"]
    assert all(m["status"] == "pending" for m in glance.members[image["id"]].values())
    added = state.load(record.directory).added("openstack")["openstack"]
    assert added == {
        "image": image["id"],
        "visibility_before": "private",
        "visibility": "shared",
        "members": ["proj-a", "proj-b"],
    }
    before = list(glance.mutations)
    assert all(not o.changes for o in direct("publish", project, record, sharing))
    assert glance.mutations == before

    undone = pub(project, record, sharing, revoke=True)
    assert glance.images[image["id"]]["visibility"] == "private"
    assert glance.member_ids(image["id"]) == []
    assert undone[0].changes == ["visibility shared → private"]
    assert [o.changes for o in undone[1:]] == [["removed image member"]] * 2


def test_unpublish_removes_exactly_what_publish_added(
    project, scratch: Path, glance: FakeGlance
) -> None:
    image = ours(glance, "b1", visibility="shared")
    glance.members[image["id"]] = {"theirs": {"member_id": "theirs", "status": "accepted"}}
    record = make_record(scratch, image_id=image["id"])
    sharing = Sharing(public=False, accounts=("theirs", "mine"))
    outcomes = pub(project, record, sharing)
    assert outcomes[0].changes == []  # already shared: not publish's doing
    assert [o.changes for o in outcomes[1:]] == [[], [ADDED_MEMBER]]
    pub(project, record, sharing, revoke=True)
    assert glance.images[image["id"]]["visibility"] == "shared"
    assert glance.member_ids(image["id"]) == ["theirs"]


def test_revoke_named_project_keeps_the_others(project, scratch: Path, glance: FakeGlance) -> None:
    image = ours(glance, "b1")
    record = make_record(scratch, image_id=image["id"])
    pub(project, record, Sharing(public=False, accounts=("proj-a", "proj-b")))
    pub(project, record, Sharing(public=False, accounts=("proj-a",)), revoke=True)
    assert glance.member_ids(image["id"]) == ["proj-b"]
    assert glance.images[image["id"]]["visibility"] == "shared"
    pub(project, record, Sharing(public=True), revoke=True)
    assert glance.member_ids(image["id"]) == []
    assert glance.images[image["id"]]["visibility"] == "private"


def test_unpublish_after_sharing_then_public_removes_members_too(
    project, scratch: Path, glance: FakeGlance
) -> None:
    image = ours(glance, "b1")
    record = make_record(scratch, image_id=image["id"])
    pub(project, record, Sharing(public=False, accounts=("proj-a",)))
    pub(project, record, Sharing(public=True))
    assert glance.images[image["id"]]["visibility"] == "public"
    undone = pub(project, record, Sharing(public=True), revoke=True)
    assert undone[0].changes == ["visibility public → shared", "visibility shared → private"]
    assert undone[1].changes == ["removed image member"]
    assert glance.member_ids(image["id"]) == []
    assert glance.images[image["id"]]["visibility"] == "private"


def test_revoking_one_project_of_a_public_image_says_why_not(
    project, scratch: Path, glance: FakeGlance
) -> None:
    image = ours(glance, "b1")
    record = make_record(scratch, image_id=image["id"])
    pub(project, record, Sharing(public=False, accounts=("proj-a",)))
    pub(project, record, Sharing(public=True))
    outcomes = direct("unpublish", project, record, Sharing(public=False, accounts=("proj-a",)))
    assert outcomes[1].error == "image is public: Glance removes members of shared images only"
    assert glance.images[image["id"]]["visibility"] == "public"
    assert glance.member_ids(image["id"]) == ["proj-a"]


def test_partial_member_failure_then_rerun_completes_only_it(
    project, scratch: Path, glance: FakeGlance
) -> None:
    glance.refuse_member["proj-b"] = 413
    image = ours(glance, "b1")
    record = make_record(scratch, image_id=image["id"])
    sharing = Sharing(public=False, accounts=("proj-a", "proj-b", "proj-c"))
    with pytest.raises(ImageforgeError, match="publish incomplete in openstack"):
        pub(project, record, sharing)
    saved = state.load(record.directory).published["openstack"].outcomes
    errors = {o["subject"].split()[-1]: o["error"] for o in saved[1:]}
    assert errors["proj-a"] is None and errors["proj-c"] is None
    assert errors["proj-b"].startswith("member refused: 413")
    assert glance.member_ids(image["id"]) == ["proj-a", "proj-c"]

    del glance.refuse_member["proj-b"]
    mark = len(glance.mutations)
    outcomes = pub(project, record, sharing)
    assert {o.subject.split()[-1]: o.changed for o in outcomes[1:]} == {
        "proj-a": False,
        "proj-b": True,
        "proj-c": False,
    }
    assert glance.mutations[mark:] == [f"POST /v2/images/{image['id']}/members"]
    assert glance.member_ids(image["id"]) == ["proj-a", "proj-b", "proj-c"]


def test_public_image_is_not_narrowed_to_projects(
    project, scratch: Path, glance: FakeGlance
) -> None:
    image = ours(glance, "b1", visibility="public")
    record = make_record(scratch, image_id=image["id"])
    outcomes = direct("publish", project, record, Sharing(public=False, accounts=("proj-a",)))
    assert outcomes[0].error is not None and "--revoke" in outcomes[0].error
    assert len(outcomes) == 1
    assert glance.images[image["id"]]["visibility"] == "public"


def test_non_owner_publish_is_refused_clearly(
    project, scratch: Path, glance: FakeGlance, fake: FakeCloud
) -> None:
    image = ours(glance, "b1", owner="someone-else", visibility="shared")
    glance.members[image["id"]] = {fake.project_id: {"member_id": fake.project_id}}
    record = make_record(scratch, image_id=image["id"])
    with pytest.raises(ImageforgeError, match=r"belongs to project someone-else.*only the owner"):
        pub(project, record, Sharing(public=True))
    assert glance.mutations == []


def test_missing_image_and_unverified_build_are_refused(
    project, scratch: Path, glance: FakeGlance
) -> None:
    gone = make_record(scratch, image_id="0000-gone")
    with pytest.raises(ImageforgeError, match="0000-gone not found in cloud 'openstack'"):
        publish.publish(project, gone, Sharing(public=True))
    image = ours(glance, "b2")
    bad = make_record(scratch, build_id="20250101-000002-b2", image_id=image["id"], verified=False)
    with pytest.raises(ImageforgeError, match=r"these checks failed: test_common.py::test_sshd"):
        publish.publish(project, bad, Sharing(public=True))
    local = make_record(scratch, build_id="20250101-000003-b3", cloud="local", qcow2=QCOW2_MAGIC)
    with pytest.raises(ImageforgeError, match=r"no Glance image in cloud 'openstack'.*import"):
        direct("publish", project, local, Sharing(public=True))
    assert glance.mutations == []


# --- import ------------------------------------------------------------------------------------


def qcow2_bytes() -> bytes:
    return QCOW2_MAGIC + b"\x00\x00\x00\x03" + bytes(504)


def test_import_uploads_private_qcow2_with_build_metadata(
    project, scratch: Path, glance: FakeGlance
) -> None:
    data = qcow2_bytes()
    record = make_record(scratch, build_id="20250102-030405-abcdef0", cloud="local", qcow2=data)
    ((place, image_id),) = CLOUD.import_build(project, record).items()
    assert place == "openstack:openstack"
    image = glance.images[image_id]
    assert image["name"] == "imageforge-slurm-node-20250102-030405-abcdef0"
    assert (image["disk_format"], image["container_format"]) == ("qcow2", "bare")
    assert (image["visibility"], image["status"]) == ("private", "active")
    assert glance.data[image_id] == data
    assert {k: v for k, v in image.items() if k.startswith("imageforge-")} == {
        "imageforge-flavor": FLAVOR,
        "imageforge-build-id": "20250102-030405-abcdef0",
        "imageforge-git-commit": "c0ffee",
        "imageforge-template-hash": "feedface",
        "imageforge-version": "9.8.7",
    }
    saved = state.imported(record, place, image_id)  # what the import task records
    assert image_ids(saved, "openstack") == {"openstack": image_id}
    assert (record.directory / "build.json").read_bytes() != b""

    before = list(glance.mutations)
    assert CLOUD.import_build(project, saved) == {place: image_id}
    assert glance.mutations == before
    # publish finds the imported image through the record (publish.publish would pick the
    # cloud of the record, `local`: an imported build is published on openstack explicitly)
    direct("publish", project, saved, Sharing(public=True))
    assert glance.images[image_id]["visibility"] == "public"


def test_import_refuses_unverified_build_naming_failed_checks(
    project, scratch: Path, glance: FakeGlance
) -> None:
    record = make_record(scratch, cloud="local", qcow2=qcow2_bytes(), verified=False)
    with pytest.raises(ImageforgeError, match="not verified: these checks failed: test_common"):
        CLOUD.import_build(project, record)
    assert glance.mutations == []
    assert glance.images == {}


def test_import_refuses_data_glance_does_not_take_as_qcow2(
    project, scratch: Path, glance: FakeGlance
) -> None:
    record = make_record(scratch, cloud="local", qcow2=b"not a disk image at all")
    with pytest.raises(ImageforgeError, match="415"):
        CLOUD.import_build(project, record)
    assert glance.images == {}  # the SDK deletes the image whose upload failed
    assert state.load(record.directory).imported == {}


def test_import_replaces_a_stale_queued_upload(project, scratch: Path, glance: FakeGlance) -> None:
    record = make_record(scratch, cloud="local", qcow2=qcow2_bytes())
    stale = ours(glance, record.id, status="queued")
    (image_id,) = CLOUD.import_build(project, record).values()
    assert image_id != stale["id"]
    assert set(glance.images) == {image_id}


def test_import_refuses_changed_artifacts(project, scratch: Path, glance: FakeGlance) -> None:
    record = make_record(scratch, cloud="local", qcow2=qcow2_bytes())
    qcow2 = record.directory / "image" / f"{FLAVOR}.qcow2"
    qcow2.write_bytes(qcow2_bytes()[:-4] + b"more")  # same size, other content
    with pytest.raises(ImageforgeError, match="changed since it was built"):
        CLOUD.import_build(project, record)
    assert glance.mutations == []


# --- prune -------------------------------------------------------------------------------------


def test_prune_rules(project, scratch: Path, glance: FakeGlance) -> None:
    ids = [f"2025010{i}-000000-abcdef0" for i in range(1, 10)]
    made = {b: ours(glance, b) for b in ids}  # created oldest first
    glance.images[made[ids[0]]["id"]]["visibility"] = "public"
    glance.images[made[ids[1]]["id"]]["visibility"] = "community"
    glance.images[made[ids[2]]["id"]]["visibility"] = "shared"
    glance.images[made[ids[3]]["id"]]["protected"] = True
    verified_old = made[ids[4]]["id"]
    make_record(scratch, build_id=ids[4], image_id=verified_old)
    make_record(scratch, build_id=ids[5], image_id=made[ids[5]]["id"], verified=False)
    foreign = glance.add_image(name="hand-made")  # no imageforge properties
    no_build = glance.add_image(name="half-ours", **{"imageforge-flavor": FLAVOR})
    other_flavor = glance.add_image(
        name="other", **{"imageforge-flavor": "training-desktop", "imageforge-build-id": "x"}
    )
    others = ours(glance, "theirs", owner="another-project", visibility="public")

    dry = CLOUD.prune(project, FLAVOR, 2, apply=False)
    doomed = {made[ids[i]]["id"] for i in (5, 6)}
    assert {o.subject.split()[1] for o in dry if o.changes} == doomed
    assert all(o.changes == ["would delete"] for o in dry if o.changes)
    kept = {o.subject.split()[1]: o.subject.split("kept: ")[1] for o in dry if not o.changes}
    assert kept == {
        made[ids[0]]["id"]: "public",
        made[ids[1]]["id"]: "community",
        made[ids[2]]["id"]: "shared",
        made[ids[3]]["id"]: "protected",
        verified_old: "newest verified build",
    }
    assert glance.mutations == []

    CLOUD.prune(project, FLAVOR, 2, apply=True)
    left = set(glance.images)
    assert doomed.isdisjoint(left)
    assert {made[ids[i]]["id"] for i in (0, 1, 2, 3, 4, 7, 8)} <= left
    assert {foreign["id"], no_build["id"], other_flavor["id"], others["id"]} <= left


def test_prune_keeps_only_newest_verified(project, scratch: Path, glance: FakeGlance) -> None:
    old = ours(glance, "20250101-000000-abcdef0")
    new = ours(glance, "20250102-000000-abcdef0")
    ours(glance, "20250103-000000-abcdef0")
    make_record(scratch, build_id="20250101-000000-abcdef0", image_id=old["id"])
    make_record(scratch, build_id="20250102-000000-abcdef0", image_id=new["id"])
    outcomes = CLOUD.prune(project, FLAVOR, 1, apply=True)
    assert {o.subject.split()[1]: o.changes for o in outcomes} == {
        new["id"]: [],
        old["id"]: ["deleted"],
    }
    assert old["id"] not in glance.images and new["id"] in glance.images


# --- sweep -------------------------------------------------------------------------------------


def test_sweep_finds_only_build_servers_and_their_packer_keys(project, fake: FakeCloud) -> None:
    nova: FakeNova = fake.nova  # type: ignore[attr-defined]
    nova.add_server(
        "srv-1",
        "imageforge-slurm-node-b1",
        {"imageforge-flavor": FLAVOR, "imageforge-build-id": "b1"},
        key_name="packer_6745a1c3-1111-2222-3333-444455556666",
        created="2025-01-01T00:00:00Z",
        **{"os-extended-volumes:volumes_attached": [{"id": "vol-1"}]},
    )
    nova.add_server("srv-2", "web", {"role": "web"}, key_name="packer_aaaa")
    nova.add_server("srv-3", "imageforge-slurm-node-b2", {}, key_name="mykey")
    for name in ("packer_6745a1c3-1111-2222-3333-444455556666", "packer_aaaa", "mykey"):
        nova.keypairs[name] = {"name": name, "fingerprint": "x", "public_key": "ssh-ed25519 A"}
    nova.volumes = {"vol-1", "vol-2"}

    dry = CLOUD.sweep(project, apply=False, min_age_minutes=120)
    assert [o.subject for o in dry] == [
        "server srv-1 imageforge-slurm-node-b1 (build b1)",
        "key pair packer_6745a1c3-1111-2222-3333-444455556666",
        "volume vol-1",
    ]
    assert all(o.changes == ["would remove"] for o in dry)
    assert nova.deleted == []

    CLOUD.sweep(project, apply=True, min_age_minutes=120)
    assert nova.deleted == [
        "server srv-1",
        "keypair packer_6745a1c3-1111-2222-3333-444455556666",
        "volume vol-1",
    ]
    assert set(nova.servers) == {"srv-2", "srv-3"}
    assert CLOUD.sweep(project, apply=False, min_age_minutes=120) == []


def test_rendered_source_gives_the_build_server_the_metadata(project) -> None:
    cell = find(project, FLAVOR, "openstack")
    attributes = CLOUD.source(project, cell)["metadata_attributes"]
    assert "instance_metadata" in attributes
    assert attributes.count('"imageforge-build-id"') == 2


# --- doctor ------------------------------------------------------------------------------------


def test_doctor_reports_what_it_found(project, glance: FakeGlance) -> None:
    glance.add_image(name="Debian 13", visibility="public", owner="admin-project")
    found = CLOUD.doctor(project, find(project, FLAVOR, "openstack"))
    assert found[0].startswith("clouds.yaml entry 'openstack' in ")
    assert found[1:] == [
        f"token for project {glance.project_id}",
        "flavor m1.medium (2 vCPU, 4096 MB)",
        f"source image Debian 13 ({next(iter(glance.images))}) for debian-13",
    ]


def test_doctor_names_everything_missing(project, fake: FakeCloud) -> None:
    fake.nova.flavors = [{"id": "1", "name": "m1.tiny", "vcpus": 1, "ram": 512, "disk": 1}]  # type: ignore[attr-defined]
    with pytest.raises(ImageforgeError) as caught:
        CLOUD.doctor(project, find(project, FLAVOR, "openstack"))
    assert str(caught.value) == (
        "openstack cloud 'openstack': flavor 'm1.medium' not found (available: m1.tiny); "
        "source image for debian-13 (name 'Debian 13') not found"
    )


def test_doctor_without_clouds_yaml_entry(scratch: Path, fake: FakeCloud) -> None:
    write(scratch, "clouds:\n  openstack:\n    cloud: nowhere\nflavors:\n  slurm-node: {}\n")
    project = config.load("images.yml")
    with pytest.raises(
        ImageforgeError, match=r"no entry 'nowhere' in clouds.yaml \(read: .*clouds.yaml\)"
    ):
        CLOUD.doctor(project, find(project, FLAVOR, "openstack"))
    with pytest.raises(ImageforgeError, match=r"OpenStack cloud 'nowhere'.*not found"):
        connect(project)


def test_prune_never_touches_an_image_named_by_another_pipeline(
    project, scratch: Path, glance: FakeGlance
) -> None:
    props = {"imageforge-flavor": FLAVOR, "imageforge-build-id": "20250101-000000-x"}
    foreign = glance.add_image(name="their-slurm-node", **props)
    old = ours(glance, "20250101-000001-abcdef0")
    new = ours(glance, "20250101-000002-abcdef0")
    done = CLOUD.prune(project, FLAVOR, 1, apply=True)
    assert [(o.subject.split()[1], o.changes) for o in done] == [(old["id"], ["deleted"])]
    assert {foreign["id"], new["id"]} <= set(glance.images)


def test_sweep_spares_young_servers_and_running_builds(
    project, scratch: Path, fake: FakeCloud
) -> None:
    nova: FakeNova = fake.nova  # type: ignore[attr-defined]
    record_of(scratch, FLAVOR, "openstack", "20250101-000008-abcdef0", status="building")
    meta = {"imageforge-flavor": FLAVOR}
    nova.add_server("young", "imageforge-a", {**meta, "imageforge-build-id": "b1"},
                    created="2999-01-01T00:00:00Z")  # fmt: skip
    nova.add_server("busy", "imageforge-b", {**meta, "imageforge-build-id": "20250101-000008-abcdef0"},
                    created="2025-01-01T00:00:00Z")  # fmt: skip
    outcomes = CLOUD.sweep(project, apply=True, min_age_minutes=120)
    assert all(not o.changes for o in outcomes) and len(outcomes) == 2
    assert "still building here" in outcomes[1].subject
    assert nova.deleted == [] and set(nova.servers) == {"young", "busy"}


def test_publish_sets_the_provenance_digest_property(
    project, scratch: Path, glance: FakeGlance
) -> None:
    image = ours(glance, "b1")
    record = make_record(scratch, image_id=image["id"])
    (record.directory / provenance.FILE).write_text('{"payloadType": "stand-in"}\n')
    digest = state.sha256(record.directory / provenance.FILE)
    outcomes = pub(project, record, Sharing(public=True))
    assert outcomes[-1].changes == [f"property {provenance.TAG}={digest}"]
    assert glance.images[image["id"]][provenance.TAG] == digest
    before = list(glance.mutations)
    pub(project, record, Sharing(public=True))
    assert glance.mutations == before
