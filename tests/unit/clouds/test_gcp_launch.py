"""The GCP verification instance's life cycle through the real google-cloud-compute client,
against the schema-checked Compute Engine fake (tests/fakes/gce.py): what it creates, and that
leaving the context however (success, error, Ctrl-C) leaves nothing of ours behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from imageforge import config
from imageforge.clouds import gcp
from imageforge.clouds.capabilities import Launcher
from imageforge.clouds.common import LaunchRequest
from imageforge.clouds.gcp import launch
from imageforge.config import matrix
from imageforge.errors import ImageforgeError, Interrupted
from imageforge.records.state import BuildRecord
from tests.fakes.gce import ApiError, FakeGce, Request

from .records import build_id, make_record
from .test_gcp import FLAVOR, PROJECT, ZONE, client, gce, gce_server, make_image, project

__all__ = ["gce", "gce_server", "project"]  # fixtures, used by name

BUILD = build_id(7)
IMAGE = f"imageforge-{FLAVOR}-{BUILD}"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyOfThisVerification imageforge-verify"
USER_DATA = "#cloud-config\nssh_authorized_keys: []\n"
SSH_FROM = "198.51.100.7/32"
RULE = f"imageforge-verify-{BUILD}"
INSTANCE = f"imageforge-verify-{FLAVOR}-{BUILD}"


def record(root: Path, status: str = "built") -> BuildRecord:
    return make_record(root, FLAVOR, "gcp", BUILD, artifact_ids={PROJECT: IMAGE}, status=status)


def cell(project: config.Project) -> matrix.Cell:
    return matrix.find(project, FLAVOR, "gcp")


def launched(project: config.Project, build: BuildRecord, ssh_from: str = SSH_FROM):
    return gcp.CLOUD.launch(LaunchRequest(project, cell(project), build, KEY, USER_DATA, ssh_from))


def leftovers(fake: FakeGce) -> tuple[set[str], set[str], set[str]]:
    """Names of every instance, disk and firewall rule in the fake."""
    return (
        {name for _, _, name in fake.instances},
        {name for _, _, name in fake.disks},
        {name for _, name in fake.firewalls},
    )


@pytest.fixture
def build(project: config.Project, scratch: Path, gce: FakeGce) -> BuildRecord:
    make_image(gce, IMAGE, labels={"imageforge-flavor": FLAVOR, "imageforge-build-id": BUILD})
    return record(scratch)


def test_gcp_is_a_launcher() -> None:
    assert isinstance(gcp.CLOUD, Launcher)


def test_launch_makes_one_instance_and_one_ssh_rule_then_removes_both(project, build, gce) -> None:
    with launched(project, build) as instance:
        ((where, zone, name),) = gce.instances
        ((_, rule_name),) = gce.firewalls
        made = gce.instances[(where, zone, name)]
        rule = gce.firewalls[(where, rule_name)]
        nic = made["networkInterfaces"][0]
        assert (where, zone, name, rule_name) == (PROJECT, ZONE, INSTANCE, RULE)
        assert instance.id == INSTANCE and instance.where == ZONE
        assert instance.address == nic["accessConfigs"][0]["natIP"]
        # SSH from the caller's address only, to this instance only.
        assert rule["allowed"] == [{"IPProtocol": "tcp", "ports": ["22"]}]
        assert rule["sourceRanges"] == [SSH_FROM] and rule["direction"] == "INGRESS"
        assert rule["targetTags"] == made["tags"]["items"] == [RULE]
        assert rule["network"] == nic["network"]
        assert BUILD in rule["description"]
        # The build's image, cloud-init's user-data (the GCE datasource of the cloud-init the
        # build installed reads it), the key for the login user of Debian's GCE images.
        disk = made["disks"][0]
        assert disk["boot"] and disk["autoDelete"]
        assert gce.disks[(PROJECT, ZONE, INSTANCE)]["sourceImage"] == (
            f"projects/{PROJECT}/global/images/{IMAGE}"
        )
        assert {i["key"]: i["value"] for i in made["metadata"]["items"]} == {
            "user-data": USER_DATA,
            "ssh-keys": f"debian:{KEY}",
        }
        assert made["labels"]["imageforge-build-id"] == BUILD
        assert made["labels"]["imageforge-flavor"] == FLAVOR
        assert made["labels"]["imageforge-git-commit"] == "c0ffee"
    assert leftovers(gce) == (set(), set(), set())
    assert len(gce.calls("compute.instances.delete", 200)) == 1
    assert len(gce.calls("compute.firewalls.delete", 200)) == 1


def test_instance_goes_in_the_configured_network_and_the_rule_with_it(scratch, gce) -> None:
    from tests.unit.conftest import write

    write(scratch, "clouds:\n  gcp:\n    network: build-net\nflavors:\n  slurm-node: {}\n")
    project = config.load("images.yml")
    make_image(gce, IMAGE)
    with launched(project, record(scratch)):
        ((_, rule),) = gce.firewalls.items()
        net = f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/global/networks/build-net"
        assert rule["network"] == net
        (instance,) = gce.instances.values()
        assert instance["networkInterfaces"][0]["network"] == net


@pytest.mark.parametrize(("os_", "user"), [("debian-12", "debian"), ("ubuntu-24.04", "ubuntu")])
def test_the_key_is_for_the_login_user_of_the_cells_os(scratch, gce, os_, user) -> None:
    from tests.unit.conftest import write

    write(scratch, f"flavors:\n  slurm-node:\n    os: {{gcp: {os_}}}\n")
    project = config.load("images.yml")
    make_image(gce, IMAGE)
    with launched(project, record(scratch)):
        (instance,) = gce.instances.values()
        items = {i["key"]: i["value"] for i in instance["metadata"]["items"]}
        assert items == {"user-data": USER_DATA, "ssh-keys": f"{user}:{KEY}"}


class Boom(Exception):
    pass


@pytest.mark.parametrize(
    "stop", [Boom("tests failed"), KeyboardInterrupt(), Interrupted("interrupted (SIGTERM)")]
)
def test_leaving_on_error_or_interrupt_removes_everything(project, build, gce, stop) -> None:
    with pytest.raises(type(stop)) as caught, launched(project, build):
        assert leftovers(gce) == ({INSTANCE}, {INSTANCE}, {RULE})
        raise stop
    assert caught.value is stop
    assert leftovers(gce) == (set(), set(), set())


def test_an_interrupt_while_creating_still_removes_what_was_made(project, build, gce) -> None:
    """Ctrl-C while the instance insert is waited on: the rule was never asked for, the
    instance (found by its name) goes."""
    original_wait = launch.Gce.wait

    def wait(self: launch.Gce, operation: object) -> None:
        original_wait(self, operation)
        if getattr(operation, "operation_type", "") == "insert" and "/instances/" in getattr(
            operation, "target_link", ""
        ):
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(launch.Gce, "wait", wait)
        with pytest.raises(KeyboardInterrupt), launched(project, build):
            pytest.fail("never yields")
    assert leftovers(gce) == (set(), set(), set())
    assert gce.calls("compute.firewalls.insert") == []
    assert len(gce.calls("compute.instances.delete", 200)) == 1


def test_a_failed_deletion_warns_does_not_mask_the_error_and_the_rule_still_goes(
    project, build, gce, capsys
) -> None:
    def refuse(fake: FakeGce, request: Request) -> None:
        raise ApiError(503, "backendError", "Internal error. Please try again.")

    gce.before("compute.instances.delete", refuse)
    with pytest.raises(Boom), launched(project, build):
        raise Boom("tests failed")
    assert leftovers(gce) == ({INSTANCE}, {INSTANCE}, set())
    err = capsys.readouterr().err
    assert f"could not delete the verification instance {INSTANCE}" in err
    assert "invoke sweep --cloud gcp" in err


def test_a_failed_deletion_after_success_warns_and_returns(project, build, gce, capsys) -> None:
    def refuse(fake: FakeGce, request: Request) -> None:
        raise ApiError(503, "backendError", "Internal error. Please try again.")

    gce.before("compute.firewalls.delete", refuse)
    with launched(project, build):
        pass
    assert leftovers(gce) == (set(), set(), {RULE})
    assert f"could not delete the firewall rule {RULE}" in capsys.readouterr().err


def test_what_a_killed_verification_left_is_removed_before_launching(project, build, gce) -> None:
    with launched(project, build):
        pass
    launch.Verification(project, cell(project), build).start(KEY, USER_DATA, SSH_FROM)
    assert leftovers(gce) == ({INSTANCE}, {INSTANCE}, {RULE})
    with launched(project, build):
        assert len(gce.calls("compute.instances.insert", 200)) == 3
    assert leftovers(gce) == (set(), set(), set())


def test_a_rule_of_the_same_name_not_ours_is_left_alone(project, build, gce, capsys) -> None:
    from google.cloud import compute_v1

    rule = compute_v1.Firewall(
        name=RULE,
        allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=["443"])],
        source_ranges=["10.0.0.0/8"],
    )
    client(gce, "FirewallsClient").insert_unary(project=PROJECT, firewall_resource=rule)
    with pytest.raises(ImageforgeError), launched(project, build):
        pass
    assert gce.firewalls[(PROJECT, RULE)]["allowed"] == [{"IPProtocol": "tcp", "ports": ["443"]}]
    assert f"firewall rule {RULE} does not name build {BUILD}" in capsys.readouterr().err
    assert leftovers(gce)[0] == set()


@pytest.mark.parametrize("bad", ["0.0.0.0/0", "::/0", "my laptop"])
def test_ssh_from_everyone_or_garbage_is_refused_before_anything_is_made(
    project, build, gce, bad
) -> None:
    with pytest.raises(ImageforgeError, match="ssh_from"), launched(project, build, bad):
        pass
    assert gce.calls("compute.instances.insert") == []
    assert gce.calls("compute.firewalls.insert") == []


def test_gce_names_stay_valid_when_long() -> None:
    name = launch.gce_name("A-Very_Long.Prefix-verify-" + "x" * 80)
    assert len(name) == 63 and name == name.lower() and name[-1] != "-"
    assert name != launch.gce_name("A-Very_Long.Prefix-verify-" + "x" * 81)


# --- sweep finds what a killed verification left ---------------------------------------------


def test_sweep_removes_verification_leftovers_under_the_usual_rules(project, build, gce) -> None:
    from google.cloud import compute_v1

    launch.Verification(project, cell(project), build).start(KEY, USER_DATA, SSH_FROM)
    others = compute_v1.Allowed(I_p_protocol="tcp", ports=["22"])
    for name, description in [
        ("imageforge-verify-unlabelled", "someone's rule"),  # our name, no build: not ours
        ("allow-ssh", f"imageforge-build-id={BUILD}"),  # a build, not our name: not ours
    ]:
        client(gce, "FirewallsClient").insert_unary(
            project=PROJECT,
            firewall_resource=compute_v1.Firewall(
                name=name, description=description, allowed=[others], source_ranges=["1.2.3.4"]
            ),
        )

    dry = gcp.CLOUD.sweep(project, apply=False, min_age_minutes=0)
    assert {(o.subject, tuple(o.changes)) for o in dry} == {
        (f"instance {INSTANCE} (build {BUILD})", ("would remove",)),
        (f"firewall rule {RULE} (build {BUILD})", ("would remove",)),
    }
    done = gcp.CLOUD.sweep(project, apply=True, min_age_minutes=0)
    assert [o.error for o in done] == [None, None]
    assert leftovers(gce) == (set(), set(), {"imageforge-verify-unlabelled", "allow-ssh"})


def test_sweep_keeps_the_verification_of_a_running_build(project, scratch, gce, tmp_path) -> None:
    make_image(gce, IMAGE)
    record(scratch, status="building")  # here, the build is still running
    elsewhere = record(tmp_path / "elsewhere")
    launch.Verification(project, cell(project), elsewhere).start(KEY, USER_DATA, SSH_FROM)
    done = gcp.CLOUD.sweep(project, apply=True, min_age_minutes=0)
    assert {o.subject for o in done} == {
        f"instance {INSTANCE} (build {BUILD}), kept: build {BUILD} is still building here",
        f"firewall rule {RULE} (build {BUILD}), kept: build {BUILD} is still building here",
    }
    assert leftovers(gce) == ({INSTANCE}, {INSTANCE}, {RULE})


# --- the fake's firewalls, schema-checked like the rest -------------------------------------


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (
            {"name": "r", "allowed": [{"IPProtocol": "tcp"}], "colour": "red"},
            'Unknown name "colour"',
        ),
        ({"allowed": [{"IPProtocol": "tcp"}]}, "Required field 'resource.name'"),
        ({"name": "r", "allowed": [{"IPProtocol": "tcp", "ports": [22]}]}, "(string)"),
        ({"name": "r", "direction": "SIDEWAYS", "allowed": [{"IPProtocol": "tcp"}]}, "(enum)"),
        ({"name": "r"}, "Exactly one of 'allowed' or 'denied'"),
    ],
)
def test_fake_checks_firewall_bodies(gce, body, says) -> None:
    from .test_gcp import api

    answer = api(gce, "POST", f"projects/{PROJECT}/global/firewalls", body)
    assert answer.status_code == 400, answer.text
    assert says in answer.json()["error"]["message"]
    assert gce.firewalls == {}


def test_other_rules_admitting_ssh_from_wide_ranges_are_named(
    project, build, gce, capsys: pytest.CaptureFixture[str]
) -> None:
    """The verification's own rule admits one address, but the network's other rules still
    apply to the instance (a default network has default-allow-ssh from 0.0.0.0/0)."""
    from google.cloud import compute_v1

    firewalls = client(gce, "FirewallsClient")

    def rule(name: str, ranges: list[str], protocol: str = "tcp", ports=("22",), **more) -> None:
        allowed = compute_v1.Allowed(I_p_protocol=protocol, ports=list(ports))
        firewalls.insert(
            project=PROJECT,
            firewall_resource=compute_v1.Firewall(
                name=name,
                network="global/networks/default",
                direction="INGRESS",
                allowed=[allowed],
                source_ranges=ranges,
                **more,
            ),
        ).result()

    rule("default-allow-ssh", ["0.0.0.0/0"])
    rule("allow-all-internal", ["10.0.0.0/8"], protocol="all", ports=())
    rule("site-ssh", ["203.0.113.0/24"])  # a site: narrow enough
    rule("web", ["0.0.0.0/0"], ports=("80", "443"))
    rule("bastion-only", ["0.0.0.0/0"], target_tags=["bastion"])
    rule("switched-off", ["0.0.0.0/0"], disabled=True)
    with launched(project, build):
        pass
    err = capsys.readouterr().err
    assert (
        "also admits SSH from allow-all-internal (10.0.0.0/8), default-allow-ssh (0.0.0.0/0): "
        "the verification instance is reachable from there, not only from 198.51.100.7/32"
    ) in " ".join(err.split())
    for narrow in ("site-ssh", "web", "bastion-only", "switched-off", RULE):
        assert narrow not in err


def test_a_network_with_no_other_ssh_rule_gets_no_warning(
    project, build, gce, capsys: pytest.CaptureFixture[str]
) -> None:
    with launched(project, build):
        pass
    assert "also admits SSH" not in capsys.readouterr().err
