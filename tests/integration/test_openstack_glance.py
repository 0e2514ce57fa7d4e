"""Import, publish, share and prune against REAL Keystone and Glance (pip install keystone glance).

The services run on sqlite on 127.0.0.1 for the whole session (tests/integration/
openstack_services.py). The pipeline's credentials are the member user of project `builder`;
`consumer` gets shares, `outsider` sees nothing of builder's, `admin` is Keystone's bootstrap
admin. Each test deletes the images it left behind.

Imported builds are local records, and publish.publish() picks the cloud of the record: these
tests call the openstack cloud's publish/unpublish directly, and record what they return the
way publish.publish does (`Recorded`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from imageforge import config
from imageforge.clouds import openstack as os_cloud
from imageforge.clouds.common import Outcome, Sharing
from imageforge.errors import ImageforgeError
from imageforge.process import runner
from imageforge.records import state
from imageforge.records.state import BuildRecord

from .openstack_services import MEMBER_QUOTA, Services, running

pytestmark = [
    pytest.mark.integration,
    # openstacksdk warns about its own internals (PendingDeprecationWarning subclasses).
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
]

ROOT = Path(__file__).resolve().parents[2]
FLAVOR = "slurm-node"


class Recorded:
    """The openstack cloud, with what publish and import return recorded in the build's record
    (read afresh from disk each time) as the publish and import tasks do."""

    def __getattr__(self, name: str) -> Any:
        return getattr(os_cloud.CLOUD, name)

    def publish(
        self, project: config.Project, record: BuildRecord, sharing: Sharing
    ) -> list[Outcome]:
        return self._share("publish", project, record, sharing)

    def unpublish(
        self, project: config.Project, record: BuildRecord, sharing: Sharing
    ) -> list[Outcome]:
        return self._share("unpublish", project, record, sharing)

    def _share(
        self, verb: str, project: config.Project, record: BuildRecord, sharing: Sharing
    ) -> list[Outcome]:
        fresh = state.load(record.directory)
        result = getattr(os_cloud.CLOUD, verb)(project, fresh, sharing)
        outcomes = [o.__dict__ for o in result.outcomes]
        revoked = verb == "unpublish"
        state.published(
            fresh, "openstack", sharing.describe(), outcomes, result.added, revoked=revoked
        )
        return result.outcomes

    def import_image(self, project: config.Project, record: BuildRecord) -> str:
        record = state.load(record.directory)
        ((place, image_id),) = os_cloud.CLOUD.import_build(project, record).items()
        state.imported(record, place, image_id)
        return image_id


CLOUD = Recorded()


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    pytest.importorskip("keystone", reason="pip install keystone glance")
    pytest.importorskip("glance", reason="pip install keystone glance")
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is needed to make a real qcow2")
    with running() as found:
        print(f"\nkeystone+glance up in {found.seconds}")
        yield found


@pytest.fixture
def env(services: Services, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    """OS_CLIENT_CONFIG_FILE at the services' clouds.yaml; every image made is deleted after."""
    for var in [v for v in os.environ if v.startswith("OS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(services.clouds_yaml))
    yield services
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(services.clouds_yaml))
    for cloud in ("builder", "consumer", "outsider", "admin"):
        conn = connect(cloud)
        for image in conn.image.images(owner=conn.current_project_id):
            conn.image.delete_image(image)


def as_user(env: Services, directory: Path, monkeypatch: pytest.MonkeyPatch, user: str) -> None:
    """A clouds.yaml whose `builder` entry holds another user's credentials (same cloud name,
    someone else's clouds.yaml)."""
    data = yaml.safe_load(env.clouds_yaml.read_text())
    data["clouds"]["builder"] = data["clouds"][user]
    path = directory / f"clouds-{user}.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))


def connect(cloud: str) -> Any:
    """A connection for a clouds.yaml entry, reused while OS_CLIENT_CONFIG_FILE stays."""
    return _connect(cloud, os.environ["OS_CLIENT_CONFIG_FILE"])


@functools.cache
def _connect(cloud: str, clouds_yaml: str) -> Any:
    import openstack

    return openstack.connect(cloud=cloud)


def load_project(root: Path, cloud: str = "builder", visibility: str = "private") -> config.Project:
    if not (root / "provisioners").exists():
        shutil.copytree(ROOT / "provisioners", root / "provisioners")
    (root / "images.yml").write_text(
        "clouds:\n"
        "  openstack:\n"
        f"    cloud: {cloud}\n"
        f"    image_visibility: {visibility}\n"
        f"flavors:\n  {FLAVOR}: {{}}\n"
    )
    return config.load(root / "images.yml")


def local_build(
    root: Path, build_id: str, *, verified: bool = True, garbage: bool = False
) -> BuildRecord:
    """A local build directory: build.json and image/<flavor>.qcow2 (real, or not qcow2 at all)."""
    directory = state.artifacts_root(root) / FLAVOR / build_id
    (directory / "image").mkdir(parents=True)
    qcow2 = directory / "image" / f"{FLAVOR}.qcow2"
    if garbage:
        qcow2.write_bytes(b"this is no disk image\n" * 4096)
    else:
        runner.run(["qemu-img", "create", "-f", "qcow2", qcow2, "16M"], stream=False)
    record = state.started(
        directory, id=build_id, flavor=FLAVOR, cloud="local",
        git_commit="0123456789abcdef0123456789abcdef01234567", template_hash="fedcba9876543210",
    )  # fmt: skip
    record = state.built(record, [state.describe(qcow2, directory)], {}, {})
    failures = [] if verified else ["test_slurm_node.py::test_slurmd_runs"]
    passed = {"passed": 1, "failed": 0, "errors": 0, "failures": []}
    failed = {"passed": 0, "failed": 1, "errors": 0, "failures": failures}
    record = state.verification_done(record, passed if verified else failed)
    return record


def imported(project: config.Project, root: Path, build_id: str) -> tuple[BuildRecord, str]:
    record = local_build(root, build_id)
    return record, CLOUD.import_image(project, record)


def visible(cloud: str, image_id: str) -> bool:
    from openstack import exceptions

    try:
        connect(cloud).image.get_image(image_id)
    except exceptions.NotFoundException:
        return False
    return True


# --- import ------------------------------------------------------------------------------------


def test_import_uploads_a_real_qcow2_once(env: Services, tmp_path: Path) -> None:
    project = load_project(tmp_path)
    record = local_build(tmp_path, "20250101-000001-abcdef0")
    image_id = CLOUD.import_image(project, record)
    image = connect("builder").image.get_image(image_id)
    qcow2 = record.directory / "image" / f"{FLAVOR}.qcow2"
    assert image.name == "imageforge-slurm-node-20250101-000001-abcdef0"
    assert (image.status, image.visibility) == ("active", "private")
    assert (image.disk_format, image.container_format) == ("qcow2", "bare")
    assert image.owner == env.projects["builder"]
    assert image.size == qcow2.stat().st_size
    assert image.checksum == hashlib.md5(qcow2.read_bytes()).hexdigest()
    assert image.virtual_size == 16 * 1024 * 1024  # Glance inspected the qcow2 header
    props = {k: v for k, v in image.properties.items() if k.startswith("imageforge-")}
    assert props == {
        "imageforge-flavor": FLAVOR,
        "imageforge-build-id": "20250101-000001-abcdef0",
        "imageforge-git-commit": "0123456789abcdef0123456789abcdef01234567",
        "imageforge-template-hash": "fedcba9876543210",
        "imageforge-version": __import__("imageforge").__version__,
    }
    saved = state.load(record.directory)
    assert saved.imported == {"openstack:builder": image_id}

    assert CLOUD.import_image(project, saved) == image_id
    mine = [i for i in connect("builder").image.images() if i.name == image.name]
    assert [i.id for i in mine] == [image_id]


def test_glance_refuses_data_that_is_not_qcow2(env: Services, tmp_path: Path) -> None:
    project = load_project(tmp_path)
    record = local_build(tmp_path, "20250101-000002-abcdef0", garbage=True)
    with pytest.raises(ImageforgeError, match="415"):
        CLOUD.import_image(project, record)
    assert list(connect("builder").image.images()) == []  # the refused image is gone
    assert state.load(record.directory).imported == {}


def test_import_refuses_an_unverified_build(env: Services, tmp_path: Path) -> None:
    project = load_project(tmp_path)
    record = local_build(tmp_path, "20250101-000003-abcdef0", verified=False)
    with pytest.raises(
        ImageforgeError, match=r"these checks failed: test_slurm_node.py::test_slurmd"
    ):
        CLOUD.import_image(project, record)
    assert list(connect("builder").image.images()) == []


# --- visibility --------------------------------------------------------------------------------


def test_public_needs_admin_under_glance_policy_community_does_not(
    env: Services, tmp_path: Path
) -> None:
    project = load_project(tmp_path)
    record, image_id = imported(project, tmp_path, "20250101-000004-abcdef0")
    refused = CLOUD.publish(project, record, Sharing(public=True))
    assert [(o.where, o.changes) for o in refused] == [("builder", [])]
    error = refused[0].error or ""
    assert error.startswith("visibility public refused: 403")
    assert "image_visibility: community" in error
    assert connect("builder").image.get_image(image_id).visibility == "private"

    community = load_project(tmp_path, visibility="community")
    outcomes = CLOUD.publish(community, record, Sharing(public=True))
    assert outcomes[0].changes == ["visibility private → community"]
    assert connect("builder").image.get_image(image_id).visibility == "community"
    assert visible("outsider", image_id)
    assert all(not o.changes for o in CLOUD.publish(community, record, Sharing(public=True)))

    undone = CLOUD.unpublish(community, record, Sharing(public=True))
    assert undone[0].changes == ["visibility community → private"]
    assert not visible("outsider", image_id)


def test_admin_publishes_public_and_unpublishes_back_to_private(
    env: Services, tmp_path: Path
) -> None:
    project = load_project(tmp_path, cloud="admin")
    record, image_id = imported(project, tmp_path, "20250101-000005-abcdef0")
    assert not visible("outsider", image_id)
    outcomes = CLOUD.publish(project, record, Sharing(public=True))
    assert [(o.where, o.changes) for o in outcomes] == [("admin", ["visibility private → public"])]
    assert image_id in [i.id for i in connect("outsider").image.images()]
    again = CLOUD.publish(project, record, Sharing(public=True))
    assert [(o.changes, o.error) for o in again] == [([], None)]

    CLOUD.unpublish(project, record, Sharing(public=True))
    assert connect("admin").image.get_image(image_id).visibility == "private"
    assert not visible("outsider", image_id)


# --- sharing -----------------------------------------------------------------------------------


def test_share_with_a_project_which_accepts_then_unshare(env: Services, tmp_path: Path) -> None:
    project = load_project(tmp_path)
    record, image_id = imported(project, tmp_path, "20250101-000006-abcdef0")
    consumer_id = env.projects["consumer"]
    sharing = Sharing(public=False, accounts=(consumer_id,))
    outcomes = CLOUD.publish(project, record, sharing)
    assert outcomes[0].changes == ["visibility private → shared"]
    assert outcomes[1].subject.endswith(f"member {consumer_id}") and outcomes[1].changed
    builder = connect("builder")
    assert [(m.member_id, m.status) for m in builder.image.members(image_id)] == [
        (consumer_id, "pending")
    ]
    consumer = connect("consumer")
    assert image_id not in [i.id for i in consumer.image.images()]  # pending: not listed yet
    consumer.image.update_member(consumer_id, image_id, status="accepted")
    assert image_id in [i.id for i in consumer.image.images()]
    assert not visible("outsider", image_id)

    again = CLOUD.publish(project, record, sharing)
    assert [(o.changes, o.error) for o in again] == [([], None), ([], None)]

    undone = CLOUD.unpublish(project, record, sharing)
    assert [o.changes for o in undone] == [
        ["visibility shared → private"],
        ["removed image member"],
    ]
    assert builder.image.get_image(image_id).visibility == "private"
    assert not visible("consumer", image_id)


def test_unpublish_of_shared_then_community_image_removes_members(
    env: Services, tmp_path: Path
) -> None:
    project = load_project(tmp_path, visibility="community")
    record, image_id = imported(project, tmp_path, "20250101-000009-abcdef0")
    consumer_id = env.projects["consumer"]
    CLOUD.publish(project, record, Sharing(public=False, accounts=(consumer_id,)))
    CLOUD.publish(project, record, Sharing(public=True))
    builder = connect("builder")
    assert builder.image.get_image(image_id).visibility == "community"
    undone = CLOUD.unpublish(project, record, Sharing(public=True))
    assert [o.changes for o in undone] == [
        ["visibility community → shared", "visibility shared → private"],
        ["removed image member"],
    ]
    builder.image.update_image(image_id, visibility="shared")  # members would show up again
    assert list(builder.image.members(image_id)) == []


def test_member_quota_refusal_is_per_member_and_rerun_adds_nothing_twice(
    env: Services, tmp_path: Path
) -> None:
    project = load_project(tmp_path)
    record, image_id = imported(project, tmp_path, "20250101-000007-abcdef0")
    accounts = (env.projects["consumer"], *[f"{i:032x}" for i in range(1, MEMBER_QUOTA + 1)])
    sharing = Sharing(public=False, accounts=accounts)
    first = CLOUD.publish(project, record, sharing)[1:]
    assert [o.changed for o in first] == [True] * MEMBER_QUOTA + [False]
    assert [o.error is None for o in first] == [True] * MEMBER_QUOTA + [False]
    assert (first[-1].error or "").startswith("member refused: 413")
    members = {m.member_id for m in connect("builder").image.members(image_id)}
    assert members == set(accounts[:MEMBER_QUOTA])

    rerun = CLOUD.publish(project, record, sharing)
    assert [o.changes for o in rerun] == [[]] * (MEMBER_QUOTA + 2)
    assert (rerun[-1].error or "").startswith("member refused: 413")
    assert state.load(record.directory).added("openstack")["builder"]["members"] == list(
        accounts[:MEMBER_QUOTA]
    )

    undone = CLOUD.unpublish(project, record, sharing)
    assert [o.changes for o in undone[1:]] == [["removed image member"]] * MEMBER_QUOTA
    assert connect("builder").image.get_image(image_id).visibility == "private"


def test_non_owner_cannot_publish(
    env: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = load_project(tmp_path, visibility="community")
    record, image_id = imported(project, tmp_path, "20250101-000008-abcdef0")
    consumer_id = env.projects["consumer"]
    CLOUD.publish(project, record, Sharing(public=False, accounts=(consumer_id,)))
    connect("consumer").image.update_member(consumer_id, image_id, status="accepted")

    as_user(env, tmp_path, monkeypatch, "consumer")
    with pytest.raises(ImageforgeError) as caught:
        CLOUD.publish(project, record, Sharing(public=True))
    assert str(caught.value).startswith(
        f"Glance image {image_id} in cloud 'builder' belongs to project "
        f"{env.projects['builder']}, not to project {consumer_id}"
    )
    # Glance's own policy agrees when asked directly.
    from openstack import exceptions

    with pytest.raises(exceptions.ForbiddenException):
        connect("builder").image.update_image(image_id, visibility="community")

    as_user(env, tmp_path, monkeypatch, "outsider")
    with pytest.raises(ImageforgeError, match=f"{image_id} not found in cloud 'builder'"):
        CLOUD.publish(project, record, Sharing(public=True))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(env.clouds_yaml))
    assert connect("builder").image.get_image(image_id).visibility == "shared"


# --- prune -------------------------------------------------------------------------------------


def test_prune_against_real_glance(env: Services, tmp_path: Path) -> None:
    project = load_project(tmp_path, visibility="community")
    builds = [f"20250101-00001{i}-abcdef0" for i in range(5)]
    ids = {}
    for build in builds:
        record, ids[build] = imported(project, tmp_path, build)
    # builds[0]: published; builds[1]: the newest verified one once the newer ones are unverified
    CLOUD.publish(
        project,
        state.load(state.artifacts_root(tmp_path) / FLAVOR / builds[0]),
        Sharing(public=True),
    )
    for build in builds[2:]:
        record = state.load(state.artifacts_root(tmp_path) / FLAVOR / build)
        state.verification_done(record, {"passed": 0, "failed": 1, "errors": 0, "failures": ["x"]})
    builder = connect("builder")
    foreign = builder.image.create_image(
        "hand-made",
        filename=str(tmp_path / "artifacts" / FLAVOR / builds[0] / "image" / f"{FLAVOR}.qcow2"),
        disk_format="qcow2",
        container_format="bare",
        visibility="private",
        allow_duplicates=True,
    )

    dry = CLOUD.prune(project, FLAVOR, 1, apply=False)
    plan = {o.subject.split()[1]: (o.changes, o.subject.partition("kept: ")[2]) for o in dry}
    assert plan == {
        ids[builds[3]]: (["would delete"], ""),
        ids[builds[2]]: (["would delete"], ""),
        ids[builds[1]]: ([], "newest verified build"),
        ids[builds[0]]: ([], "community"),
    }
    assert len(list(builder.image.images(owner=env.projects["builder"]))) == 6

    done = CLOUD.prune(project, FLAVOR, 1, apply=True)
    assert sorted(o.changes for o in done if o.changes) == [["deleted"], ["deleted"]]
    left = {i.id for i in builder.image.images(owner=env.projects["builder"])}
    assert left == {ids[builds[4]], ids[builds[1]], ids[builds[0]], foreign.id}


# --- doctor ------------------------------------------------------------------------------------


def test_doctor_gets_a_real_token_and_names_what_is_missing(env: Services, tmp_path: Path) -> None:
    from imageforge.config.matrix import find

    project = load_project(tmp_path)
    cell = find(project, FLAVOR, "openstack")
    with pytest.raises(ImageforgeError) as caught:
        CLOUD.doctor(project, cell)
    # This cloud has Keystone and Glance only: Nova is missing, and so is the source image.
    assert str(caught.value) == (
        "openstack cloud 'builder': no compute service (Nova) in the service catalog; "
        "source image for debian-13 (name 'Debian 13') not found"
    )
    admin = connect("admin")
    qcow2 = local_build(tmp_path, "20250101-000020-abcdef0").directory / "image"
    admin.image.create_image(
        "Debian 13",
        filename=str(qcow2 / f"{FLAVOR}.qcow2"),
        disk_format="qcow2",
        container_format="bare",
        visibility="public",
        allow_duplicates=True,
    )
    with pytest.raises(ImageforgeError) as caught:
        CLOUD.doctor(project, cell)
    assert str(caught.value) == (
        "openstack cloud 'builder': no compute service (Nova) in the service catalog"
    )


def test_doctor_reports_refused_credentials_without_the_password(
    env: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imageforge.config.matrix import find

    data = yaml.safe_load(env.clouds_yaml.read_text())
    data["clouds"]["builder"]["auth"]["password"] = "not-the-password-123"
    wrong = tmp_path / "clouds-wrong.yaml"
    wrong.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(wrong))
    project = load_project(tmp_path)
    with pytest.raises(
        ImageforgeError,
        match=r"OpenStack cloud 'builder': doctor at http://127\.0\.0\.1:\d+/v3: authentication refused",
    ):
        CLOUD.doctor(project, find(project, FLAVOR, "openstack"))
    with pytest.raises(ImageforgeError) as caught:
        CLOUD.doctor(project, find(project, FLAVOR, "openstack"))
    assert "not-the-password-123" not in str(caught.value)
