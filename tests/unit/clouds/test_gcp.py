"""GCP sharing and housekeeping through the real google-cloud-compute REST client, against
the schema-checked Compute Engine fake in tests/fakes/gce.py (see its docstring for its gaps).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from imageforge import config
from imageforge.clouds import gcp
from imageforge.clouds.common import Sharing
from imageforge.clouds.gcp import sharing as gcp_sharing
from imageforge.config import matrix
from imageforge.errors import ImageforgeError
from imageforge.records import provenance, state
from imageforge.records.state import BuildRecord
from imageforge.stages import publish
from tests.fakes.gce import FakeGce, Request, serve

from ..conftest import write
from .records import build_id
from .records import make_record as record_of

PROJECT = "imageforge-test"
FLAVOR = "slurm-node"
FAMILY = "imageforge-slurm-node"
IMAGE_USER = "roles/compute.imageUser"
SET = "compute.images.setIamPolicy"
SOURCE = "projects/debian-cloud/global/images/debian-13-trixie-amd64-v20250815"


@pytest.fixture(scope="session")
def gce_server() -> Iterator[FakeGce]:
    with serve() as fake:
        yield fake


@pytest.fixture
def gce(gce_server: FakeGce, monkeypatch: pytest.MonkeyPatch) -> FakeGce:
    """A fresh fake with the build project and the public image projects, and imageforge
    pointed at it through the environment."""
    gce_server.reset()
    gce_server.add_project(PROJECT, "ubuntu-os-cloud", "debian-cloud")
    monkeypatch.setenv("IMAGEFORGE_GCP_ENDPOINT", gce_server.url)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    monkeypatch.setattr(gcp_sharing, "RETRY_SECONDS", 0.0)
    return gce_server


@pytest.fixture
def project(scratch: Path, gce: FakeGce) -> config.Project:
    write(scratch, "flavors:\n  slurm-node: {}\n  training-desktop: {}\n")
    return config.load("images.yml")


def client(fake: FakeGce, kind: str = "ImagesClient") -> Any:
    """A compute_v1 client of the tests' own, for setting up and inspecting the fake."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import compute_v1

    return getattr(compute_v1, kind)(
        transport="rest",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": fake.url},
    )


def make_image(
    fake: FakeGce,
    name: str,
    *,
    flavor: str = FLAVOR,
    family: str = FAMILY,
    labels: dict[str, str] | None = None,
    project: str = PROJECT,
) -> None:
    """An image as Packer's googlecompute builder makes it (labels from the rendered template)."""
    from google.cloud import compute_v1

    if labels is None:
        labels = {"imageforge-flavor": flavor, "imageforge-build-id": build_id(name)}
    image = compute_v1.Image(name=name, family=family, labels=labels, source_image=SOURCE)
    op = client(fake).insert_unary(project=project, image_resource=image)
    assert op.status == compute_v1.Operation.Status.DONE


def make_record(root: Path, image: str, *, verified: bool = True) -> BuildRecord:
    """A build record with the image googlecompute made, as recorded at build time."""
    return record_of(
        root, FLAVOR, "gcp", build_id(image), artifact_ids={PROJECT: image}, verified=verified
    )


def manifest(directory: Path, *names_and_runs: tuple[str, str]) -> None:
    """A Packer manifest shaped like googlecompute's, one entry per (image, run)."""
    builds = [
        {"name": FLAVOR, "builder_type": "googlecompute", "build_time": 1719830000,
         "files": None, "artifact_id": image, "packer_run_uuid": run}
        for image, run in names_and_runs
    ]  # fmt: skip
    data = {"builds": builds, "last_run_uuid": names_and_runs[-1][1]}
    (directory / "manifest.json").write_text(json.dumps(data))


def set_bindings(fake: FakeGce, image: str, bindings: list[dict[str, Any]]) -> None:
    """Bindings someone else made, through the API (read-modify-write with the etag)."""
    from google.cloud import compute_v1

    images = client(fake)
    policy = images.get_iam_policy(project=PROJECT, resource=image)
    policy.bindings = [compute_v1.Binding(**b) for b in bindings]
    images.set_iam_policy(
        project=PROJECT,
        resource=image,
        global_set_policy_request_resource=compute_v1.GlobalSetPolicyRequest(policy=policy),
    )


def bindings(fake: FakeGce, image: str) -> list[dict[str, Any]]:
    return fake.policy(PROJECT, image)["bindings"]


def deprecation(fake: FakeGce, image: str) -> dict[str, Any]:
    return fake.images[(PROJECT, image)].get("deprecated", {})


# --- publish and unpublish ---------------------------------------------------------------


def test_publish_public_adds_exactly_the_gcloud_binding(project, scratch, gce) -> None:
    make_image(gce, "imageforge-img-1")
    record = make_record(scratch, "imageforge-img-1")
    outcomes = publish.publish(project, record, Sharing(public=True))
    assert [(o.where, o.subject, o.error) for o in outcomes] == [
        (PROJECT, "imageforge-img-1", None)
    ]
    assert outcomes[0].changes == [f"granted {IMAGE_USER} to allAuthenticatedUsers"]
    assert bindings(gce, "imageforge-img-1") == [
        {"role": IMAGE_USER, "members": ["allAuthenticatedUsers"]}
    ]
    (call,) = gce.calls(SET)
    assert call.body["policy"]["etag"] == "ACAB"  # the etag getIamPolicy returned
    saved = state.load(record.directory)
    assert saved.added("gcp") == {PROJECT: ["allAuthenticatedUsers"]}


def test_publish_twice_changes_nothing_the_second_time(project, scratch, gce) -> None:
    make_image(gce, "imageforge-img-1")
    record = make_record(scratch, "imageforge-img-1")
    publish.publish(project, record, Sharing(public=True))
    etag = gce.policy(PROJECT, "imageforge-img-1")["etag"]
    again = publish.publish(project, state.load(record.directory), Sharing(public=True))
    assert [o.changes for o in again] == [[]]
    assert len(gce.calls(SET)) == 1
    assert gce.policy(PROJECT, "imageforge-img-1")["etag"] == etag


def test_publish_to_named_members_keeps_other_bindings(project, scratch, gce) -> None:
    make_image(gce, "imageforge-img-1")
    other = {"role": "roles/compute.imageUser", "members": ["user:cond@example.com"]}
    conditional = {**other, "condition": {"title": "until", "expression": "true"}}
    viewer = {"role": "roles/compute.viewer", "members": ["group:ops@example.com"]}
    gce.write_policy(PROJECT, "imageforge-img-1", [viewer])
    record = make_record(scratch, "imageforge-img-1")
    members = ("user:ada@example.com", "serviceAccount:ci@p.iam.gserviceaccount.com")
    publish.publish(project, record, Sharing(public=False, accounts=members))
    assert bindings(gce, "imageforge-img-1") == [
        viewer,
        {"role": IMAGE_USER, "members": list(members)},
    ]
    # A conditional imageUser binding is someone else's: publish adds its own plain one.
    gce.write_policy(PROJECT, "imageforge-img-1", [conditional], version=3)
    publish.publish(project, record, Sharing(public=False, accounts=members[:1]))
    assert bindings(gce, "imageforge-img-1") == [
        conditional,
        {"role": IMAGE_USER, "members": [members[0]]},
    ]


def test_publish_refuses_members_without_a_type(project, scratch, gce) -> None:
    make_image(gce, "imageforge-img-1")
    record = make_record(scratch, "imageforge-img-1")
    with pytest.raises(ImageforgeError, match=r"not an IAM member: ada@example\.com"):
        publish.publish(project, record, Sharing(public=False, accounts=("ada@example.com",)))
    assert gce.calls(SET) == []


def test_unpublish_removes_exactly_what_publish_added(project, scratch, gce) -> None:
    make_image(gce, "imageforge-img-1")
    before = [
        {"role": IMAGE_USER, "members": ["user:keep@example.com"]},
        {"role": "roles/compute.viewer", "members": ["group:ops@example.com"]},
    ]
    set_bindings(gce, "imageforge-img-1", before)
    record = make_record(scratch, "imageforge-img-1")
    publish.publish(project, record, Sharing(public=True))
    assert bindings(gce, "imageforge-img-1")[0]["members"] == [
        "user:keep@example.com",
        "allAuthenticatedUsers",
    ]
    outcomes = publish.publish(
        project, state.load(record.directory), Sharing(public=True), revoke=True
    )
    assert outcomes[0].changes == [f"revoked {IMAGE_USER} from allAuthenticatedUsers"]
    assert state.load(record.directory).added("gcp") == {}
    assert bindings(gce, "imageforge-img-1") == before
    sets = len(gce.calls(SET))
    again = publish.publish(
        project, state.load(record.directory), Sharing(public=True), revoke=True
    )
    assert [o.changes for o in again] == [[]]
    assert len(gce.calls(SET)) == sets


def test_unpublish_leaves_a_binding_publish_found_in_place(project, scratch, gce) -> None:
    make_image(gce, "imageforge-img-1")
    set_bindings(
        gce, "imageforge-img-1", [{"role": IMAGE_USER, "members": ["allAuthenticatedUsers"]}]
    )
    record = make_record(scratch, "imageforge-img-1")
    assert publish.publish(project, record, Sharing(public=True))[0].changes == []
    publish.publish(project, state.load(record.directory), Sharing(public=True), revoke=True)
    assert bindings(gce, "imageforge-img-1") == [
        {"role": IMAGE_USER, "members": ["allAuthenticatedUsers"]}
    ]


def test_etag_conflict_is_retried_without_losing_the_other_write(project, scratch, gce) -> None:
    make_image(gce, "imageforge-img-1")
    record = make_record(scratch, "imageforge-img-1")
    theirs = {"role": "roles/compute.viewer", "members": ["user:other@example.com"]}

    def another_writer(fake: FakeGce, request: Request) -> None:
        fake.write_policy(PROJECT, "imageforge-img-1", [theirs])

    gce.before(SET, another_writer)
    outcomes = publish.publish(project, record, Sharing(public=True))
    assert outcomes[0].error is None
    assert [c.status for c in gce.calls(SET)] == [412, 200]
    assert len(gce.calls("compute.images.getIamPolicy")) == 2
    assert bindings(gce, "imageforge-img-1") == [
        theirs,
        {"role": IMAGE_USER, "members": ["allAuthenticatedUsers"]},
    ]


def test_endless_etag_conflicts_end_as_a_reported_error(project, scratch, gce) -> None:
    make_image(gce, "imageforge-img-1")
    record = make_record(scratch, "imageforge-img-1")
    for n in range(gcp_sharing.ETAG_ATTEMPTS):
        gce.before(
            SET, lambda fake, request, n=n: fake.write_policy(PROJECT, "imageforge-img-1", [])
        )
    with pytest.raises(ImageforgeError, match=f"publish incomplete in {PROJECT}"):
        publish.publish(project, record, Sharing(public=True))
    saved = state.load(record.directory).published["gcp"].outcomes[0]
    assert "kept changing" in saved["error"]
    assert [c.status for c in gce.calls(SET)] == [412] * gcp_sharing.ETAG_ATTEMPTS


def test_unverified_build_is_not_published(project, scratch, gce) -> None:
    make_image(gce, "imageforge-img-1")
    record = make_record(scratch, "imageforge-img-1", verified=False)
    with pytest.raises(ImageforgeError, match="is not verified"):
        publish.publish(project, record, Sharing(public=True))
    assert gce.calls("compute.images.getIamPolicy") == []


# --- the image family -------------------------------------------------------------------------


def family_image(fake: FakeGce) -> str:
    return client(fake).get_from_family(project=PROJECT, family=FAMILY).name


def test_publish_steers_the_family_to_the_newest_verified_image(project, scratch, gce) -> None:
    make_image(gce, "imageforge-img-1")
    make_image(gce, "imageforge-img-2")  # newer, built but not verified
    record = make_record(scratch, "imageforge-img-1")
    make_record(scratch, "imageforge-img-2", verified=False)
    assert family_image(gce) == "imageforge-img-2"
    outcomes = publish.publish(project, record, Sharing(public=True))
    assert outcomes[0].changes[-1].startswith("deprecated newer unverified imageforge-img-2")
    assert deprecation(gce, "imageforge-img-2") == {
        "state": "DEPRECATED",
        "replacement": gce.images[(PROJECT, "imageforge-img-1")]["selfLink"],
    }
    assert family_image(gce) == "imageforge-img-1"
    assert publish.publish(project, record, Sharing(public=True))[0].changes == []
    # img-2 passes verification later: publishing it makes it active and the family's again.
    later = state.load(scratch / "artifacts" / FLAVOR / build_id("imageforge-img-2"))
    later = state.verification_done(later, {"passed": 1, "failed": 0, "errors": 0})
    changes = publish.publish(project, later, Sharing(public=True))[0].changes
    assert "made active again (was deprecated)" in changes
    assert deprecation(gce, "imageforge-img-2") == {}
    assert family_image(gce) == "imageforge-img-2"


def test_newer_verified_and_foreign_images_are_left_alone(project, scratch, gce) -> None:
    make_image(gce, "imageforge-img-1")
    make_image(gce, "imageforge-img-2")
    make_image(gce, "not-ours", labels={"team": "x"})
    record = make_record(scratch, "imageforge-img-1")
    make_record(scratch, "imageforge-img-2")  # verified: the family should resolve to it
    outcomes = publish.publish(project, record, Sharing(public=True))
    assert outcomes[0].changes == [f"granted {IMAGE_USER} to allAuthenticatedUsers"]
    assert deprecation(gce, "imageforge-img-2") == {} and deprecation(gce, "not-ours") == {}
    assert gce.calls("compute.images.deprecate") == []


# --- prune -------------------------------------------------------------------------------------


def test_prune_keeps_newest_published_verified_and_unlabelled(project, scratch, gce) -> None:
    names = [f"imageforge-img-{i}" for i in range(6)]  # created in this order: img-5 is the newest
    for name in names:
        make_image(gce, name)
    make_image(gce, "half-labelled", labels={"imageforge-flavor": FLAVOR})
    make_image(gce, "unlabelled", labels={})
    make_image(gce, "other-flavor", flavor="training-desktop", family="x")
    set_bindings(
        gce, "imageforge-img-1", [{"role": IMAGE_USER, "members": ["group:hpc@example.com"]}]
    )
    make_record(scratch, "imageforge-img-0")  # verified, but not the newest verified
    make_record(scratch, "imageforge-img-2")  # the newest verified
    make_record(scratch, "imageforge-img-4", verified=False)
    everything = set(gce.images)

    dry = gcp.CLOUD.prune(project, FLAVOR, 2, apply=False)
    assert [(o.subject.split()[1], o.changes) for o in dry] == [
        ("imageforge-img-3", ["would delete"]),
        ("imageforge-img-2", []),
        ("imageforge-img-1", []),
        ("imageforge-img-0", ["would delete"]),
    ]
    assert dry[1].subject.endswith("kept: newest verified build")
    assert dry[2].subject.endswith("kept: shared with group:hpc@example.com")
    assert set(gce.images) == everything
    assert gce.calls("compute.images.delete") == []

    done = gcp.CLOUD.prune(project, FLAVOR, 2, apply=True)
    assert [(o.subject.split()[1], o.changes, o.error) for o in done if o.changes] == [
        ("imageforge-img-3", ["deleted"], None),
        ("imageforge-img-0", ["deleted"], None),
    ]
    assert set(gce.images) == everything - {
        (PROJECT, "imageforge-img-3"),
        (PROJECT, "imageforge-img-0"),
    }
    assert [o for o in gcp.CLOUD.prune(project, FLAVOR, 2, apply=True) if o.changes] == []


def test_prune_never_touches_another_pipelines_image_nor_trusts_a_verified_label(
    project, scratch, gce
) -> None:
    ours = {"imageforge-flavor": FLAVOR, "imageforge-build-id": "x"}
    make_image(gce, "other-pipeline-1", labels=ours)  # our labels, not our name prefix
    make_image(gce, "imageforge-img-0", labels={**ours, "imageforge-verified": "true"})
    make_image(gce, "imageforge-img-1")
    done = gcp.CLOUD.prune(project, FLAVOR, 1, apply=True)
    assert [(o.subject.split()[1], o.changes) for o in done] == [("imageforge-img-0", ["deleted"])]
    assert {name for _, name in gce.images} >= {"other-pipeline-1", "imageforge-img-1"}
    assert (PROJECT, "imageforge-img-0") not in gce.images


def test_prune_waits_for_operations_through_the_endpoint(project, scratch, gce) -> None:
    for name in ("imageforge-img-0", "imageforge-img-1"):
        make_image(gce, name)
    gce.operation_polls = 3  # deletions answer RUNNING until waited on
    done = gcp.CLOUD.prune(project, FLAVOR, 1, apply=True)
    assert [(o.subject.split()[1], o.error) for o in done] == [("imageforge-img-0", None)]
    assert len(gce.calls("compute.globalOperations.wait")) == 1
    assert (PROJECT, "imageforge-img-0") not in gce.images


def test_prune_reports_a_failed_deletion(project, scratch, gce) -> None:
    for name in ("imageforge-img-0", "imageforge-img-1"):
        make_image(gce, name)

    def gone(fake: FakeGce, request: Request) -> None:
        fake.images.pop((PROJECT, "imageforge-img-0"))

    gce.before("compute.images.delete", gone)
    (outcome,) = gcp.CLOUD.prune(project, FLAVOR, 1, apply=True)
    assert outcome.changes == [] and outcome.error is not None
    assert outcome.error.startswith("404")


# --- sweep --------------------------------------------------------------------------------------

ZONE = "europe-west1-b"


def make_instance(fake: FakeGce, name: str, labels: dict[str, str], extra_disk: str = "") -> None:
    """A build VM the way Packer's googlecompute driver creates it (boot disk autoDelete off)."""
    from google.cloud import compute_v1

    disks = [
        compute_v1.AttachedDisk(
            boot=True,
            auto_delete=False,
            type_="PERSISTENT",
            mode="READ_WRITE",
            initialize_params=compute_v1.AttachedDiskInitializeParams(
                disk_name=name, source_image=SOURCE, disk_size_gb=20
            ),
        )
    ]
    if extra_disk:
        disks.append(
            compute_v1.AttachedDisk(source=f"projects/{PROJECT}/zones/{ZONE}/disks/{extra_disk}")
        )
    instance = compute_v1.Instance(
        name=name,
        labels=labels,
        machine_type=f"zones/{ZONE}/machineTypes/e2-standard-2",
        disks=disks,
    )
    client(fake, "InstancesClient").insert_unary(
        project=PROJECT, zone=ZONE, instance_resource=instance
    )


def make_disk(fake: FakeGce, name: str, labels: dict[str, str]) -> None:
    from google.cloud import compute_v1

    disk = compute_v1.Disk(name=name, labels=labels, size_gb=10)
    client(fake, "DisksClient").insert_unary(project=PROJECT, zone=ZONE, disk_resource=disk)


def test_sweep_removes_build_leftovers_only(project, gce) -> None:
    ours = {"imageforge-build-id": "b7", "imageforge-flavor": FLAVOR}
    make_disk(gce, "data", {})  # someone's data disk, attached to our VM
    make_instance(gce, "packer-abc", ours, extra_disk="data")
    make_instance(gce, "web", {})
    make_disk(gce, "packer-orphan", ours)
    make_disk(gce, "labelled-in-use", ours)
    make_instance(gce, "db", {}, extra_disk="labelled-in-use")
    before = (set(gce.instances), set(gce.disks))

    dry = gcp.CLOUD.sweep(project, apply=False, min_age_minutes=0)
    assert {(o.where, o.subject.split(" (")[0], tuple(o.changes)) for o in dry} == {
        (f"{PROJECT}/{ZONE}", "instance packer-abc", ("would remove",)),
        (f"{PROJECT}/{ZONE}", "disk packer-abc", ("would remove",)),
        (f"{PROJECT}/{ZONE}", "disk packer-orphan", ("would remove",)),
    }
    assert (set(gce.instances), set(gce.disks)) == before

    done = gcp.CLOUD.sweep(project, apply=True, min_age_minutes=0)
    assert [o.error for o in done] == [None, None, None]
    assert {name for _, _, name in gce.instances} == {"web", "db"}
    assert {name for _, _, name in gce.disks} == {"data", "web", "db", "labelled-in-use"}
    assert gcp.CLOUD.sweep(project, apply=True, min_age_minutes=0) == []


# --- doctor ---------------------------------------------------------------------------------------


def cell(project: config.Project) -> matrix.Cell:
    return matrix.find(project, FLAVOR, "gcp")


def test_doctor_finds_credentials_project_and_source_image(project, gce) -> None:
    make_image(gce, "debian-13-trixie-v1", family="debian-13", labels={}, project="debian-cloud")
    found = gcp.CLOUD.doctor(project, cell(project))
    assert found == [
        f"credentials: anonymous, for the endpoint {gce.url}",
        f"project {PROJECT}: Compute Engine answers",
        "source image debian-13-trixie-v1 (family debian-13 in debian-cloud)",
    ]


def test_doctor_finds_the_source_family_of_the_cells_os(scratch, gce) -> None:
    write(scratch, "flavors:\n  slurm-node:\n    os: {gcp: ubuntu-24.04}\n")
    make_image(gce, "debian-13-trixie-v1", family="debian-13", labels={}, project="debian-cloud")
    make_image(gce, "ubuntu-2404-noble-amd64-v1", family="ubuntu-2404-lts-amd64", labels={},
               project="ubuntu-os-cloud")  # fmt: skip
    ubuntu = config.load("images.yml")
    found = gcp.CLOUD.doctor(ubuntu, cell(ubuntu))
    assert found[-1] == (
        "source image ubuntu-2404-noble-amd64-v1 (family ubuntu-2404-lts-amd64 in ubuntu-os-cloud)"
    )


def test_doctor_names_a_missing_source_family(project, gce) -> None:
    make_image(gce, "old", family="debian-13", labels={}, project="debian-cloud")
    client(gce).deprecate_unary(
        project="debian-cloud",
        image="old",
        deprecation_status_resource={"state": "DEPRECATED"},
    )
    with pytest.raises(ImageforgeError) as caught:
        gcp.CLOUD.doctor(project, cell(project))
    message = "source image family 'debian-13' not found in project 'debian-cloud'"
    assert caught.value.message == message
    assert "clouds.gcp.source_image.debian-13" in (caught.value.hint or "")


def test_doctor_names_a_missing_project(project, gce, monkeypatch) -> None:
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "no-such-project")
    with pytest.raises(ImageforgeError, match="GCP project 'no-such-project' not found"):
        gcp.CLOUD.doctor(project, cell(project))
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT")
    with pytest.raises(ImageforgeError, match=r"no GCP project: set clouds\.gcp\.project"):
        gcp.CLOUD.doctor(project, cell(project))


def test_doctor_names_missing_application_default_credentials(
    project, gce, monkeypatch, tmp_path
) -> None:
    monkeypatch.delenv("IMAGEFORGE_GCP_ENDPOINT")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    with pytest.raises(ImageforgeError) as caught:
        gcp.CLOUD.doctor(project, cell(project))
    assert caught.value.message.startswith(
        "no application default credentials: run `gcloud auth application-default login` "
        "or set GOOGLE_APPLICATION_CREDENTIALS"
    )
    assert gce.log == []


def test_doctor_names_an_unreachable_endpoint(project, gce, monkeypatch) -> None:
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("IMAGEFORGE_GCP_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(ImageforgeError) as caught:
        gcp.CLOUD.doctor(project, cell(project))
    assert str(caught.value).startswith(
        f"GCP project {PROJECT}: list images at http://127.0.0.1:{port}: no answer from the endpoint"
    )
    assert "\n" not in str(caught.value) and caught.value.exit_code == 2


def test_configured_project_wins_over_the_environment(scratch, gce, monkeypatch) -> None:
    gce.add_project("from-config")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "from-env")
    write(scratch, "clouds:\n  gcp:\n    project: from-config\nflavors:\n  slurm-node: {}\n")
    proj = config.load("images.yml")
    make_image(gce, "imageforge-img-1", project="from-config")
    record = make_record(scratch, "imageforge-img-1")
    outcomes = publish.publish(proj, record, Sharing(public=True))
    assert outcomes[0].where == "from-config"
    assert gce.policy("from-config", "imageforge-img-1")["bindings"][0]["members"] == [
        "allAuthenticatedUsers"
    ]


# --- manifest and import hygiene -----------------------------------------------------------------


def test_artifact_ids_come_from_the_last_packer_run(tmp_path, gce) -> None:
    manifest(tmp_path, ("imageforge-img-old", "run-0"), ("imageforge-img-new", "run-1"))
    assert gcp.CLOUD.artifact_ids(tmp_path) == {PROJECT: "imageforge-img-new"}


# --- the fake's own schema check ----------------------------------------------------------------


def api(fake: FakeGce, verb: str, path: str, body: Any = None) -> requests.Response:
    return requests.request(verb, f"{fake.url}/compute/v1/{path}", json=body, timeout=10)


def test_fake_accepts_a_valid_request_and_rejects_unknown_fields(gce) -> None:
    valid = {"name": "imageforge-img-1", "sourceImage": SOURCE, "labels": {"a": "b"}}
    assert api(gce, "POST", f"projects/{PROJECT}/global/images", valid).status_code == 200
    answer = api(gce, "POST", f"projects/{PROJECT}/global/images", {**valid, "colour": "blue"})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == 400 and error["status"] == "INVALID_ARGUMENT"
    assert 'Unknown name "colour"' in error["message"]
    assert error["errors"][0]["reason"] == "invalid"


def test_fake_checks_nested_fields_through_refs(gce) -> None:
    make_image(gce, "imageforge-img-1")
    path = f"projects/{PROJECT}/global/images/imageforge-img-1/setIamPolicy"
    good = {"policy": {"bindings": [{"role": IMAGE_USER, "members": ["allAuthenticatedUsers"]}]}}
    assert api(gce, "POST", path, good).status_code == 200
    bad = {"policy": {"bindings": [{"role": IMAGE_USER, "member": ["allAuthenticatedUsers"]}]}}
    answer = api(gce, "POST", path, bad)
    assert answer.status_code == 400
    assert "'resource.policy.bindings[0]'" in answer.json()["error"]["message"]


IMAGES = f"projects/{PROJECT}/global/images"


@pytest.mark.parametrize(
    ("verb", "path", "body", "status", "says"),
    [
        ("GET", f"projects/{PROJECT}/global/imagez", None, 404, "was not found"),
        ("PUT", f"{IMAGES}/img-1", {}, 404, "was not found"),  # no PUT in the document
        ("GET", f"{IMAGES}?colour=blue", None, 400, 'Unknown name "colour"'),
        ("GET", f"{IMAGES}?maxResults=many", None, 400, "TYPE_INT32"),
        ("POST", IMAGES, {"name": "x", "sourceImage": SOURCE, "labels": {"a": 1}}, 400, "(string)"),
        ("POST", IMAGES, {"sourceImage": SOURCE}, 400, "Required field 'resource.name'"),
        ("POST", IMAGES, {"name": "Bad_Name", "sourceImage": SOURCE}, 400, "Must be a match"),
        ("POST", f"{IMAGES}/img-1/deprecate", {"state": "GONE"}, 400, "(enum)"),
        ("GET", "projects/Not_A_Project/global/images", None, 400, "Must be a match"),
        ("GET", f"{IMAGES}/img-1", None, 404, "images/img-1' was not found"),
        ("GET", "projects/nobody/global/images", None, 404, "'projects/nobody' was not found"),
        ("POST", f"{IMAGES}/img-1/testIamPermissions", {}, 501, "compute.images.testIam"),
    ],
)
def test_fake_rejects_what_the_document_does_not_allow(gce, verb, path, body, status, says) -> None:
    answer = api(gce, verb, path, body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == status
    assert says in answer.json()["error"]["message"]


def test_fake_refuses_a_stale_etag(gce) -> None:
    make_image(gce, "imageforge-img-1")
    path = f"projects/{PROJECT}/global/images/imageforge-img-1/setIamPolicy"
    policy = {"bindings": [{"role": IMAGE_USER, "members": ["allAuthenticatedUsers"]}]}
    first = api(gce, "POST", path, {"policy": {**policy, "etag": "ACAB"}})
    assert first.status_code == 200 and first.json()["etag"] != "ACAB"
    stale = api(gce, "POST", path, {"policy": {**policy, "etag": "ACAB"}})
    assert stale.status_code == 412


def test_fake_filters_like_the_list_api(gce) -> None:
    make_image(gce, "imageforge-img-1")
    make_image(gce, "imageforge-img-2", flavor="training-desktop")
    found = client(gce).list(
        request={"project": PROJECT, "filter": 'labels.imageforge-flavor = "training-desktop"'}
    )
    assert [i.name for i in found] == ["imageforge-img-2"]
    answer = api(gce, "GET", f"projects/{PROJECT}/global/images?filter=name%20eq%20img.*")
    assert answer.status_code == 400


def test_publish_labels_the_image_with_the_provenance_digest(project, scratch, gce) -> None:
    make_image(gce, "imageforge-img-1")
    record = make_record(scratch, "imageforge-img-1")
    (record.directory / provenance.FILE).write_text('{"payloadType": "stand-in"}\n')
    value = provenance.label_value(state.sha256(record.directory / provenance.FILE))
    assert len(value) <= 63 and value == value.lower()
    publish.publish(project, record, Sharing(public=True))
    labels = gce.images[(PROJECT, "imageforge-img-1")]["labels"]
    assert labels[provenance.TAG] == value
    assert labels["imageforge-flavor"] == FLAVOR  # the build's own labels stay
    (call,) = gce.calls("compute.images.setLabels")
    assert call.body["labelFingerprint"]  # the one images.get returned
    publish.publish(project, state.load(record.directory), Sharing(public=True))
    assert len(gce.calls("compute.images.setLabels")) == 1
