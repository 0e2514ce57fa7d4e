"""The publish policy of images.yml and the plan of bare `invoke publish`: parsing and located
errors, the per-flavor override, which cells are planned or skipped and why, --dry-run, exit 2
for a cell without a verified build, and idempotence with the real AWS sharer against moto."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from invoke import Context, Exit

from imageforge import clouds
from imageforge.clouds import Outcome, Published, Sharing
from imageforge.clouds.gcp.sharing import _members
from imageforge.clouds.openstack.sharing import target_visibility
from imageforge.config import matrix, publishpolicy
from imageforge.errors import ConfigError, ImageforgeError
from imageforge.records import state
from imageforge.stages import publishplan
from imageforge.stages.publishplan import Unpublished
from imageforge.tasks import sharing as sharing_tasks
from tests.records import make_record

from ..conftest import ROOT, write

AMI = "ami-0123456789abcdef0"
POLICY = """\
publish:
  aws: {public: true}
  openstack: {visibility: community}
flavors:
  a: {}
  b:
    publish:
      aws: {accounts: ['123456789012']}
  c:
    publish:
      aws: {}
matrix:
  clouds: [local, aws, gcp, openstack]
"""
NO_OPENSTACK = POLICY.replace(", openstack]", "]")


class FakeSharer:
    """Says it shared, once per image; records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Sharing]] = []

    def publish(self, project: Any, record: state.BuildRecord, sharing: Sharing) -> Published:
        self.calls.append((record.flavor, sharing))
        seen = record.published.get(record.cloud)
        changes = [] if seen else [f"shared: {sharing.describe()}"]
        outcomes = [Outcome(r, ami, changes) for r, ami in record.artifact_ids.items()]
        return Published(outcomes, {r: [sharing.describe()] for r in record.artifact_ids})

    unpublish = publish


@pytest.fixture
def sharer(monkeypatch: pytest.MonkeyPatch) -> FakeSharer:
    fake = FakeSharer()
    monkeypatch.setattr(clouds, "capability", lambda name, kind: fake)
    return fake


def load(scratch: Path, text: str = POLICY) -> Any:
    write(scratch, text)
    return matrix.load(scratch / "images.yml")


def aws_record(root: Path, flavor: str, build: str = "20260101-000000-abcdef0-000000", **kw: Any):
    return make_record(
        root / "artifacts", flavor, "aws", build, artifact_ids={"eu-west-1": AMI}, **kw
    )


# --- images.yml --------------------------------------------------------------------------


def test_no_publish_section_shares_nothing(scratch: Path) -> None:
    project = load(scratch, "flavors:\n  a: {}\n")
    for cloud in ("aws", "gcp", "openstack"):
        assert publishpolicy.policy_for(project.images, "a", cloud) is None


def test_a_flavor_entry_replaces_the_top_level_one_for_that_cloud_only(scratch: Path) -> None:
    images = load(scratch).images
    policy = publishpolicy.sharing
    assert policy(publishpolicy.policy_for(images, "a", "aws")) == Sharing(public=True)
    assert policy(publishpolicy.policy_for(images, "b", "aws")) == Sharing(
        public=False, accounts=("123456789012",)
    )
    assert policy(publishpolicy.policy_for(images, "c", "aws")) is None  # explicitly: nobody
    assert policy(publishpolicy.policy_for(images, "b", "openstack")) == Sharing(
        public=True, visibility="community"
    )


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            "  gcp: {members: [users:ada@example.com]}\n",
            "images.yml:4:19: publish.gcp.members[0]: unknown IAM member type 'users'; allowed: "
            "allUsers, allAuthenticatedUsers, or user:..., group:..., serviceAccount:..., "
            "domain:...; did you mean 'user'? (got 'users:ada@example.com')",
        ),
        (
            "  gcp: {members: [allAuthenticatedUser]}\n",
            "did you mean 'allAuthenticatedUsers'?",
        ),
        (
            "  gcp: {members: ['user:ada']}\n",
            "images.yml:4:19: publish.gcp.members[0]: user: takes an email address",
        ),
        (
            "  aws: {accounts: ['1234']}\n",
            "images.yml:4:20: publish.aws.accounts[0]: an AWS account id is 12 digits, "
            "e.g. '123456789012' (got '1234')",
        ),
        (
            "  aws: {organizations: ['o-abc']}\n",
            "images.yml:4:25: publish.aws.organizations[0]: not an organization or OU ARN",
        ),
        (
            "  aws: {publc: true}\n",
            "images.yml:4:9: publish.aws: unknown key 'publc'; allowed: require_signed, public, "
            "accounts, organizations, snapshots; did you mean 'public'?",
        ),
        (
            "  aws: {public: true, accounts: ['123456789012']}\n",
            "images.yml:4:3: publish.aws: public: true already shares with every account",
        ),
        (
            "  openstack: {visibility: comunity}\n",
            "images.yml:4:15: publish.openstack.visibility: 'comunity' is not allowed; allowed: "
            "private, shared, community, public; did you mean 'community'?",
        ),
        (
            "  openstack: {visibility: public, members: [p1]}\n",
            "publish.openstack: Glance adds members to shared images only, not public ones",
        ),
        (
            "  azure: {}\n",
            "images.yml:4:3: publish: unknown key 'azure'; allowed: require_signed, aws, gcp",
        ),
    ],
)
def test_bad_policies_are_located_errors(scratch: Path, section: str, expected: str) -> None:
    write(scratch, "flavors:\n  a: {}\npublish:\n" + section)
    with pytest.raises(ConfigError) as caught:
        matrix.load(scratch / "images.yml")
    assert expected in str(caught.value)


def test_a_flavor_policy_error_is_located_in_the_flavor(scratch: Path) -> None:
    write(scratch, "flavors:\n  a:\n    publish:\n      aws: {accounts: ['12']}\n")
    with pytest.raises(ConfigError, match=r"^images.yml:4:24: flavors.a.publish.aws.accounts\[0\]"):
        matrix.load(scratch / "images.yml")


def test_defaults_may_not_hold_the_policy(scratch: Path) -> None:
    write(scratch, "defaults:\n  publish: {aws: {public: true}}\nflavors:\n  a: {}\n")
    with pytest.raises(ConfigError, match=r"defaults\.publish: the publish policy goes at the top"):
        matrix.load(scratch / "images.yml")


@pytest.mark.parametrize(
    ("policy", "sharing"),
    [
        (publishpolicy.OpenstackPublish(visibility="public"), Sharing(True, visibility="public")),
        (publishpolicy.OpenstackPublish(members=("p1",)), Sharing(False, ("p1",), (), "shared")),
        (publishpolicy.OpenstackPublish(visibility="private"), None),
        (publishpolicy.GcpPublish(members=("allAuthenticatedUsers",)), Sharing(False, ("allAuthenticatedUsers",))),
        (publishpolicy.GcpPublish(), None),
        (publishpolicy.AwsPublish(organizations=("arn:aws:organizations::123456789012:organization/o-exampleorgid",)),
         Sharing(False, (), ("arn:aws:organizations::123456789012:organization/o-exampleorgid",))),
    ],
)  # fmt: skip
def test_each_cloud_policy_maps_onto_what_its_sharer_takes(policy: Any, sharing: Any) -> None:
    assert publishpolicy.sharing(policy) == sharing


def test_the_sharers_take_what_the_policy_maps_to(scratch: Path) -> None:
    project = load(scratch, "flavors:\n  a: {}\n")
    assert _members(Sharing(False, ("allAuthenticatedUsers", "user:a@b.org"))) == [
        "allAuthenticatedUsers",
        "user:a@b.org",
    ]
    assert target_visibility(project, Sharing(True, visibility="community")) == "community"
    assert target_visibility(project, Sharing(False, ("p1",), visibility="shared")) == "shared"


def test_the_description_names_who_it_is_shared_with() -> None:
    assert Sharing(public=True).describe() == "public"
    assert Sharing(True, visibility="community").describe() == "visibility community"
    assert Sharing(False, ("p1", "p2"), visibility="shared").describe() == (
        "visibility shared; shared with p1, p2"
    )
    assert Sharing(False, ("123456789012",), ("arn:x",)).describe() == (
        "shared with 123456789012, arn:x"
    )


# --- the plan ------------------------------------------------------------------------------


def test_the_plan_covers_cloud_cells_and_says_why_one_is_skipped_or_refused(
    scratch: Path,
) -> None:
    project = load(scratch)
    root = project.root
    aws_record(root, "a", "20260101-000000-abcdef0-000000")
    aws_record(root, "a", "20260102-000000-abcdef0-000000", status="failed")  # newer, failed
    aws_record(root, "b", status="built")
    entries = publishplan.plan(project, matrix.cells(project))
    by_name = {e.cell.name: e for e in entries}
    assert not any(name.endswith("-local") for name in by_name)
    assert by_name["a-aws"].record.id == "20260101-000000-abcdef0-000000"  # newest verified
    assert by_name["a-aws"].problem == ""
    assert by_name["b-aws"].problem == (
        "no verified build (newest 20260101-000000-abcdef0-000000: it was never verified)"
    )
    assert by_name["c-aws"].skipped == "the publish policy shares with nobody"
    assert by_name["a-gcp"].skipped == "images.yml has no publish policy for gcp"
    assert by_name["a-openstack"].problem.startswith("no build yet;")


def test_a_verified_build_whose_files_changed_is_refused_with_the_reason(scratch: Path) -> None:
    project = load(scratch)
    record = make_record(project.root / "artifacts", "a", "local")
    state.imported(record, "openstack:openstack", "glance-1")
    (record.directory / "image" / "a.qcow2").write_bytes(b"changed")
    (entry,) = publishplan.plan(project, matrix.selected(project, "a", "openstack"))
    assert entry.problem == f"build {record.id}: image/a.qcow2 changed since it was built " + (
        "(sha256 differs)"
    )


def test_dry_run_prints_the_plan_and_changes_nothing(
    scratch: Path, sharer: FakeSharer, capsys: pytest.CaptureFixture[str]
) -> None:
    project = load(scratch, NO_OPENSTACK)
    record = aws_record(project.root, "a")
    publishplan.run(project, "a", None, dry_run=True)
    assert sharer.calls == []
    assert state.load(record.directory).published == {}
    err = capsys.readouterr().err
    assert f"a-aws: build {record.id}" in err
    assert f"images: eu-west-1 {AMI}" in err
    assert "policy: public; record: not shared yet" in err
    assert "will change: share (public) in eu-west-1" in err
    assert "a-gcp: skipped: images.yml has no publish policy for gcp" in err
    assert "dry run: nothing was changed" in err


def test_a_second_run_plans_nothing_and_records_who_it_was_shared_with(
    scratch: Path, sharer: FakeSharer, capsys: pytest.CaptureFixture[str]
) -> None:
    project = load(scratch)
    record = aws_record(project.root, "b")
    publishplan.run(project, "b", "aws")
    published = state.load(record.directory).published["aws"]
    assert published.sharing == "shared with 123456789012"
    capsys.readouterr()
    publishplan.run(load(scratch, NO_OPENSTACK), "b", None)
    assert "will change: nothing (already so)" in capsys.readouterr().err
    assert [s for _, s in sharer.calls] == [Sharing(False, ("123456789012",))] * 2


def test_a_cell_without_a_verified_build_fails_the_task_with_2_after_the_others(
    scratch: Path, sharer: FakeSharer, capsys: pytest.CaptureFixture[str]
) -> None:
    project = load(scratch)
    aws_record(project.root, "a")
    with pytest.raises(Exit) as caught:
        sharing_tasks.publish(Context(), cloud="aws", config=str(scratch / "images.yml"))
    assert caught.value.code == 2
    assert [flavor for flavor, _ in sharer.calls] == ["a"]  # a published; b reported
    err = capsys.readouterr().err
    assert "b-aws: cannot publish: no build yet" in err
    assert "error: not published: b-aws (the reasons are above)" in err


def test_a_cloud_error_in_one_cell_leaves_the_others_published_and_fails_with_2(
    scratch: Path, sharer: FakeSharer, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = load(scratch, NO_OPENSTACK)
    aws_record(project.root, "a")
    aws_record(project.root, "b")
    ok = sharer.publish

    def failing_for_a(project: Any, record: state.BuildRecord, sharing: Sharing) -> Published:
        result = ok(project, record, sharing)
        if record.flavor == "a":
            result.outcomes[0].error = "AccessDenied"
        return result

    monkeypatch.setattr(sharer, "publish", failing_for_a)
    with pytest.raises(Unpublished, match=r"not published: a-aws \(") as caught:
        publishplan.run(project, None, "aws")
    assert caught.value.exit_code == 2
    assert [flavor for flavor, _ in sharer.calls] == ["a", "b"]
    record_b = state.load(project.root / "artifacts" / "b" / "20260101-000000-abcdef0-000000")
    assert record_b.published["aws"].status == "published"
    with pytest.raises(ImageforgeError, match="publish incomplete in eu-west-1") as one:
        publishplan.run(project, "a", "aws")  # one cell: the error as publish always gave it
    assert not isinstance(one.value, Unpublished)


def test_dry_run_still_fails_for_a_cell_without_a_verified_build(
    scratch: Path, sharer: FakeSharer
) -> None:
    project = load(scratch)
    with pytest.raises(Unpublished, match="not published: a-aws, a-openstack "):
        publishplan.run(project, "a", None, dry_run=True)
    assert sharer.calls == []


# --- --image and --cloud: the command line, else the cell's policy, else nothing ------------


@pytest.mark.parametrize(
    ("cloud", "named"),
    [
        ("aws", "--account ID, --organization ARN or --public"),
        ("gcp", "--account MEMBER (user:, group:, serviceAccount:, domain:) or --public"),
        ("openstack", "--account PROJECT_ID (shared), --visibility or --public"),
    ],
)
def test_one_cell_without_a_policy_or_named_members_is_refused(
    scratch: Path, sharer: FakeSharer, cloud: str, named: str
) -> None:
    project = load(scratch, "flavors:\n  a: {}\nmatrix:\n  clouds: [aws, gcp, openstack]\n")
    make_record(project.root / "artifacts", "a", cloud, artifact_ids={"eu-west-1": AMI})
    with pytest.raises(ConfigError) as refused:
        publishplan.run(project, "a", cloud)
    assert refused.value.exit_code == 2
    message = str(refused.value)
    assert "\n" not in message and f"no publish policy for a-{cloud}" in message
    assert message.endswith(named)
    assert sharer.calls == []


def test_the_publish_task_refuses_with_one_line_and_exit_2(
    scratch: Path, sharer: FakeSharer, capsys: pytest.CaptureFixture[str]
) -> None:
    project = load(scratch, "flavors:\n  a: {}\n")
    aws_record(project.root, "a")
    with pytest.raises(Exit) as done:
        sharing_tasks.publish(Context(), image="a", cloud="aws", config=str(scratch / "images.yml"))
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "names nobody" in err[0]
    assert sharer.calls == []


@pytest.mark.parametrize(
    ("cloud", "options", "expected"),
    [
        ("aws", {"public": True}, Sharing(public=True)),
        ("aws", {"accounts": ("210987654321",)}, Sharing(accounts=("210987654321",))),
        ("gcp", {"public": True}, Sharing(accounts=("allAuthenticatedUsers",))),
        (
            "gcp",
            {"accounts": ("user:ada@example.com",)},
            Sharing(accounts=("user:ada@example.com",)),
        ),
        ("openstack", {"visibility": "community"}, Sharing(public=True, visibility="community")),
        ("openstack", {"public": True}, Sharing(public=True, visibility="public")),
        (
            "openstack",
            {"accounts": ("0123abcd",)},
            Sharing(accounts=("0123abcd",), visibility="shared"),
        ),
    ],
)
def test_one_cell_without_a_policy_is_shared_as_the_command_line_says(
    scratch: Path, sharer: FakeSharer, cloud: str, options: dict[str, Any], expected: Sharing
) -> None:
    project = load(scratch, "flavors:\n  a: {}\nmatrix:\n  clouds: [aws, gcp, openstack]\n")
    make_record(project.root / "artifacts", "a", cloud, artifact_ids={"eu-west-1": AMI})
    publishplan.run(project, "a", cloud, **options)
    assert sharer.calls == [("a", expected)]


@pytest.mark.parametrize(
    ("cloud", "options", "message"),
    [
        ("aws", {"accounts": ("1234",)}, "--account: an AWS account id is 12 digits"),
        ("aws", {"public": True, "accounts": ("210987654321",)}, "public: true already shares"),
        ("aws", {"visibility": "public"}, "--visibility is for openstack only"),
        ("gcp", {"accounts": ("ada@example.com",)}, "--account: not an IAM member; allowed: "),
        ("gcp", {"organizations": ("arn:x",)}, "--organization is for aws only"),
        ("openstack", {"visibility": "everyone"}, "--visibility: allowed: private, shared, "),
        ("openstack", {"visibility": "shared"}, "visibility shared needs members"),
        ("openstack", {"public": True, "visibility": "private"}, "--public contradicts"),
    ],
)
def test_publish_options_follow_the_rules_of_images_yml(
    scratch: Path, sharer: FakeSharer, cloud: str, options: dict[str, Any], message: str
) -> None:
    project = load(scratch, "flavors:\n  a: {}\nmatrix:\n  clouds: [aws, gcp, openstack]\n")
    make_record(project.root / "artifacts", "a", cloud, artifact_ids={"eu-west-1": AMI})
    with pytest.raises(ConfigError) as refused:
        publishplan.run(project, "a", cloud, **options)
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert sharer.calls == []


def test_the_matrix_marks_only_the_cells_a_policy_shares(scratch: Path) -> None:
    project = load(scratch)
    include = json.loads(matrix.github(matrix.cells(project), {"a-aws"}))["include"]
    assert {c["name"]: c["publish"] for c in include}["a-aws"] is True
    cells = matrix.cells(project)
    shared = {c.name for c in cells if publishpolicy.shares(project.images, c.flavor_name, c.cloud)}
    assert shared == {"a-aws", "a-openstack", "b-aws", "b-openstack", "c-openstack"}


def test_one_cell_uses_its_policy_unless_accounts_are_named(
    scratch: Path, sharer: FakeSharer
) -> None:
    project = load(scratch)
    aws_record(project.root, "b")
    publishplan.run(project, "b", "aws")
    publishplan.run(project, "b", "aws", accounts=("210987654321",))
    assert [s for _, s in sharer.calls] == [
        Sharing(False, ("123456789012",)),
        Sharing(False, ("210987654321",)),
    ]


def test_one_cell_whose_policy_shares_with_nobody_is_skipped(
    scratch: Path, sharer: FakeSharer
) -> None:
    project = load(scratch)
    aws_record(project.root, "c")
    (entry,) = publishplan.run(project, "c", "aws")
    assert entry.skipped and sharer.calls == []


def test_one_unverified_cell_is_still_refused_with_the_reason(
    scratch: Path, sharer: FakeSharer
) -> None:
    project = load(scratch)
    aws_record(project.root, "a", status="failed")
    with pytest.raises(ImageforgeError, match="is not verified: these checks failed: test_x"):
        publishplan.run(project, "a", "aws")
    assert sharer.calls == []


def test_revoke_and_accounts_need_one_cell(scratch: Path) -> None:
    project = load(scratch)
    with pytest.raises(ConfigError, match="give --image and --cloud too"):
        publishplan.run(project, "a", None, revoke=True)


# --- the real AWS sharer ------------------------------------------------------------------


def test_bare_publish_is_idempotent_against_moto(
    scratch: Path, aws: str, capsys: pytest.CaptureFixture[str]
) -> None:
    project = load(scratch, "publish:\n  aws: {public: true}\nflavors:\n  a: {}\n")
    client = boto3.client("ec2", region_name="eu-west-1")
    ami = client.register_image(Name="imageforge-a-1", RootDeviceName="/dev/sda1")["ImageId"]
    record = make_record(project.root / "artifacts", "a", "aws", artifact_ids={"eu-west-1": ami})
    publishplan.run(project, None, "aws")
    launch = client.describe_image_attribute(ImageId=ami, Attribute="launchPermission")
    assert launch["LaunchPermissions"] == [{"Group": "all"}]
    first = state.load(record.directory).published["aws"]
    assert first.sharing == "public" and first.outcomes[0]["changes"]
    capsys.readouterr()
    publishplan.run(project, None, "aws")
    assert "will change: nothing (already so)" in capsys.readouterr().err
    again = state.load(record.directory).published["aws"]
    assert [o["changes"] for o in again.outcomes] == [[]]
    assert again.added == first.added == {"eu-west-1": [{"Group": "all"}]}


def test_the_commented_example_in_the_shipped_images_yml_is_valid(scratch: Path) -> None:
    shipped = (ROOT / "images.yml").read_text().splitlines()
    start = shipped.index("# publish:")
    example = []
    for line in shipped[start:]:
        if not line.startswith("#"):
            break
        example.append(line.removeprefix("# "))
    project = load(scratch, "\n".join(example) + "\nflavors:\n  a: {}\n")
    assert project.images.publish.aws == publishpolicy.AwsPublish(public=True)
    assert project.images.publish.openstack.visibility == "community"
    assert matrix.load(ROOT / "images.yml").images.publish == publishpolicy.PublishPolicy()
