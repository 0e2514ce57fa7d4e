"""The publish stage with a fake sharer: it refuses what is not bound, and records per place
exactly what the cloud says it added, also when a place failed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from imageforge import clouds, config
from imageforge.clouds import Outcome, Published, Sharing
from imageforge.config import matrix, publishpolicy
from imageforge.errors import ImageforgeError
from imageforge.records import provenance, signingkeys, state
from imageforge.records.provenance import ProvenanceError
from imageforge.stages import attest, publish
from tests.records import make_record

from ..conftest import write

IDS = {"eu-west-1": "ami-0123456789abcdef0"}


class FakeSharer:
    def __init__(self, outcomes: list[Outcome], added: dict[str, Any]) -> None:
        self.result = Published(outcomes, added)
        self.seen: list[dict[str, Any]] = []

    def publish(self, project: Any, record: state.BuildRecord, sharing: Sharing) -> Published:
        self.seen.append(record.added("aws"))
        return self.result

    unpublish = publish


@pytest.fixture
def project(scratch: Path) -> config.Project:
    write(scratch, "flavors:\n  a: {}\n")
    return config.load(scratch / "images.yml")


def use(monkeypatch: pytest.MonkeyPatch, sharer: FakeSharer) -> None:
    monkeypatch.setattr(clouds, "capability", lambda name, kind: sharer)


def test_publish_records_what_the_cloud_added(
    project: config.Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = make_record(project.root / "artifacts", "a", "aws", artifact_ids=IDS)
    sharer = FakeSharer([Outcome("eu-west-1", "ami", ["launch: all"])], {"eu-west-1": ["all"]})
    use(monkeypatch, sharer)
    publish.publish(project, record, Sharing(public=True))
    saved = state.load(record.directory)
    assert saved.published["aws"].status == "published"
    assert saved.published["aws"].sharing == "public"
    assert saved.added("aws") == {"eu-west-1": ["all"]}
    sharer.result = Published([Outcome("eu-west-1", "ami", ["launch: -all"])], {})
    publish.publish(project, saved, Sharing(public=True), revoke=True)
    assert sharer.seen == [{}, {"eu-west-1": ["all"]}]  # revoke saw what publish added
    revoked = state.load(record.directory).published["aws"]
    assert revoked.status == "revoked" and revoked.added == {}


def test_publish_refuses_a_build_whose_image_ids_are_not_the_verified_ones(
    project: config.Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = make_record(project.root / "artifacts", "a", "aws", artifact_ids=IDS)
    path = record.directory / state.RECORD
    path.write_text(path.read_text().replace("ami-0123456789abcdef0", "ami-0fffffffffffffff0", 1))
    use(monkeypatch, FakeSharer([], {}))
    with pytest.raises(ImageforgeError, match="image ids differ from the ones that were verified"):
        publish.publish(project, state.load(record.directory), Sharing(public=True))


def test_a_failed_place_is_reported_and_what_was_added_is_still_recorded(
    project: config.Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = make_record(project.root / "artifacts", "a", "aws", artifact_ids=IDS)
    outcomes = [
        Outcome("eu-west-1", "ami", ["launch: all"]),
        Outcome("us-east-1", "ami", [], "denied"),
    ]
    use(monkeypatch, FakeSharer(outcomes, {"eu-west-1": ["all"]}))
    with pytest.raises(ImageforgeError, match="publish incomplete in us-east-1"):
        publish.publish(project, record, Sharing(public=True))
    assert state.load(record.directory).added("aws") == {"eu-west-1": ["all"]}


def test_publish_records_who_it_was_shared_with(
    project: config.Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = make_record(project.root / "artifacts", "a", "local")
    record = state.imported(record, "openstack:openstack", "glance-1")
    use(monkeypatch, FakeSharer([Outcome("openstack", "image glance-1", ["shared"])], {}))
    sharing = Sharing(public=False, accounts=("p1", "p2"), visibility="shared")
    publish.publish(project, record, sharing, cloud_name="openstack")
    saved = state.load(record.directory).published["openstack"]
    assert saved.sharing == "visibility shared; shared with p1, p2"


@pytest.mark.parametrize(
    "images_yml",
    [
        "publish:\n  require_signed: true\nflavors:\n  a: {}\n",
        "flavors:\n  a:\n    publish:\n      aws: {public: true, require_signed: true}\n",
    ],
)
def test_require_signed_refuses_an_unsigned_build_whoever_it_is_shared_with(
    scratch: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
    images_yml: str,
) -> None:
    write(scratch, images_yml)
    project = config.load(scratch / "images.yml")
    assert publishpolicy.requires_signature(project.images, "a", "aws")
    everywhere = images_yml.startswith("publish:")
    assert publishpolicy.requires_signature(project.images, "a", "gcp") == everywhere
    monkeypatch.setenv("IMAGEFORGE_SIGNING_KEY", str(tmp_path_factory.mktemp("k") / "key"))
    signingkeys.generate(signingkeys.private_path())
    record = make_record(project.root / "artifacts", "a", "aws", artifact_ids=IDS)
    sharer = FakeSharer([Outcome("eu-west-1", "ami", ["launch: all"])], {"eu-west-1": ["all"]})
    use(monkeypatch, sharer)
    with pytest.raises(ProvenanceError, match=f"build {record.id} has no provenance"):
        publish.publish(project, record, Sharing(public=True))
    assert sharer.seen == []
    attest.attest(project, matrix.find(project, "a", "aws"), record)
    publish.publish(project, state.load(record.directory), Sharing(public=True))
    assert sharer.seen == [{}]
    # re-signed by another key: refused against the user's own public key
    mine = signingkeys.private_path()
    monkeypatch.setenv("IMAGEFORGE_SIGNING_KEY", str(tmp_path_factory.mktemp("k") / "other"))
    signingkeys.generate(signingkeys.private_path())
    attest.attest(project, matrix.find(project, "a", "aws"), record)
    monkeypatch.setenv("IMAGEFORGE_SIGNING_KEY", str(mine))
    with pytest.raises(ProvenanceError, match="the signature is not by key"):
        publish.publish(project, state.load(record.directory), Sharing(public=True))
    monkeypatch.setenv("IMAGEFORGE_SIGNING_KEY", str(record.directory.parent / "missing"))
    with pytest.raises(ProvenanceError, match="require_signed needs the public key"):
        publish.publish(project, state.load(record.directory), Sharing(public=True))
    assert sharer.seen == [{}]


def test_a_failed_provenance_tag_is_an_outcome_and_the_sharing_is_recorded(
    project: config.Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = make_record(project.root / "artifacts", "a", "aws", artifact_ids=IDS)
    (record.directory / provenance.FILE).write_text('{"payloadType": "stand-in"}\n')

    class TaggingFails(FakeSharer):
        def tag(self, *args: Any) -> list[Outcome]:
            raise ImageforgeError("the tag API is down")

    sharer = TaggingFails([Outcome("eu-west-1", "ami", ["launch: all"])], {"eu-west-1": ["all"]})
    use(monkeypatch, sharer)
    with pytest.raises(ImageforgeError, match="publish incomplete in aws"):
        publish.publish(project, record, Sharing(public=True))
    saved = state.load(record.directory)
    assert saved.added("aws") == {"eu-west-1": ["all"]}  # revoke can take it back
    assert saved.published["aws"].outcomes[-1]["error"] == "the tag API is down"
