"""The OpenStack verification server's life cycle through openstacksdk.

Keystone is openstacksdk's fixture catalog and Glance the stateful fake of tests/fakes/glance.py
(both on requests-mock, as in test_openstack.py); Nova and Neutron are the fake of
tests/fakes/nova.py, served over HTTP on 127.0.0.1 and put in that Keystone catalog. Nova
request bodies are checked against nova's own published schemas. Real Nova cannot run here
(no hypervisor).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests_mock

from imageforge import config
from imageforge.clouds import common
from imageforge.clouds import openstack as os_cloud
from imageforge.clouds.capabilities import Launcher
from imageforge.clouds.common import LaunchRequest
from imageforge.clouds.openstack import launch
from imageforge.config import matrix
from imageforge.errors import ImageforgeError, Interrupted
from imageforge.records.state import BuildRecord
from tests.fakes.glance import IDENTITY, FakeCloud
from tests.fakes.nova import PRIVATE_NET, FakeCompute, check_nova, serve

from ..conftest import write
from .records import build_id, make_record

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
FLAVOR = "slurm-node"
BUILD = build_id(9)
NAME = f"imageforge-verify-{BUILD}"
SERVER = f"imageforge-verify-{FLAVOR}-{BUILD}"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyOfThisVerification imageforge-verify"
USER_DATA = "#cloud-config\nusers: [default]\n"
SSH_FROM = "198.51.100.7/32"
NOTHING = {"servers": [], "keypairs": [], "security_groups": [], "floating_ips": []}


@pytest.fixture(scope="module")
def compute_server() -> Iterator[FakeCompute]:
    images: set[str] = set()
    with serve("0123456789abcdef0123456789abcdef", images.__contains__) as fake:
        fake.images = images  # type: ignore[attr-defined]
        yield fake


@pytest.fixture
def cloud(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compute_server: FakeCompute
) -> Iterator[FakeCloud]:
    """Keystone and Glance on requests-mock; Nova and Neutron (the HTTP fake) in the catalog."""
    from openstack.fixture.connection import ConnectionFixture

    for var in [v for v in __import__("os").environ if v.startswith("OS_")]:
        monkeypatch.delenv(var)
    fake = FakeCloud(project_id=compute_server.project_id)
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(fake.clouds_yaml(tmp_path / "clouds.yaml")))
    monkeypatch.setattr(launch, "POLL_SECONDS", 0.01)
    compute_server.reset()
    compute_server.images.clear()  # type: ignore[attr-defined]
    base = compute_server.compute_url.split("/compute")[0]
    token = ConnectionFixture(project_id=fake.project_id).v3_token
    urls = {"compute": f"{base}/compute/v2.1/", "network": f"{base}/network"}
    for service in token["token"]["catalog"]:
        if service["type"] in urls:
            for endpoint in service["endpoints"]:
                endpoint["url"] = urls[service["type"]]
    with requests_mock.Mocker() as mocker:
        fake.install(mocker)
        mocker.post(
            f"{IDENTITY}/v3/auth/tokens",
            json=token,
            status_code=201,
            headers={"X-Subject-Token": "fake-token"},
        )
        mocker.register_uri(requests_mock.ANY, re.compile(re.escape(base)), real_http=True)
        yield fake


@pytest.fixture
def nova(cloud: FakeCloud, compute_server: FakeCompute) -> FakeCompute:
    return compute_server


def load(scratch: Path, openstack: str = "") -> config.Project:
    write(scratch, f"clouds:\n  openstack:\n{openstack or '    cloud: openstack'}\n"
          f"flavors:\n  {FLAVOR}: {{}}\n")  # fmt: skip
    return config.load("images.yml")


@pytest.fixture
def project(scratch: Path, cloud: FakeCloud) -> config.Project:
    return load(scratch)


def built(root: Path, cloud: FakeCloud, nova: FakeCompute, status: str = "built") -> BuildRecord:
    image = cloud.glance.add_image(name=f"imageforge-{FLAVOR}-{BUILD}")
    nova.images.add(image["id"])  # type: ignore[attr-defined]
    return make_record(
        root, FLAVOR, "openstack", BUILD, artifact_ids={"openstack": image["id"]}, status=status
    )


@pytest.fixture
def build(scratch: Path, cloud: FakeCloud, nova: FakeCompute) -> BuildRecord:
    return built(scratch, cloud, nova)


def launched(project: config.Project, build: BuildRecord, ssh_from: str = SSH_FROM) -> Any:
    cell = matrix.find(project, FLAVOR, "openstack")
    return os_cloud.CLOUD.launch(LaunchRequest(project, cell, build, KEY, USER_DATA, ssh_from))


def test_openstack_is_a_launcher() -> None:
    assert isinstance(os_cloud.CLOUD, Launcher)


def test_launch_makes_key_group_and_server_then_removes_them(project, build, nova) -> None:
    with launched(project, build) as instance:
        assert nova.leftovers() == {
            "servers": [SERVER],
            "keypairs": [NAME],
            "security_groups": [NAME],
            "floating_ips": [],
        }
        (server,) = nova.servers.values()
        assert instance.id == server["id"] and instance.where == "openstack"
        assert server["status"] == "ACTIVE"
        assert instance.address == server["addresses"]["private"][0]["addr"]
        assert server["image"]["id"] == build.artifact_ids["openstack"]
        assert server["key_name"] == NAME and nova.keypairs[NAME]["public_key"] == KEY
        assert server["security_groups"] == [{"name": NAME}]
        assert base64.b64decode(server["user_data"]).decode() == USER_DATA
        assert server["metadata"]["imageforge-build-id"] == BUILD
        assert server["metadata"]["imageforge-flavor"] == FLAVOR
        (group,) = nova.groups.values()
        ingress = [r for r in group["security_group_rules"] if r["direction"] == "ingress"]
        assert [
            (r["protocol"], r["port_range_min"], r["port_range_max"], r["remote_ip_prefix"])
            for r in ingress
        ] == [("tcp", 22, 22, SSH_FROM)]
        assert BUILD in group["description"]
    assert nova.leftovers() == NOTHING
    (body,) = nova.requests("POST", r"/servers$")
    assert body["server"]["networks"] == "auto"


def test_a_floating_ip_from_the_pool_is_the_address_and_is_released(scratch, cloud, nova) -> None:
    project = load(scratch, "    cloud: openstack\n    floating_ip_pool: public\n"
                   f"    networks: [{PRIVATE_NET}]\n")  # fmt: skip
    build = built(scratch, cloud, nova)
    with launched(project, build) as instance:
        (ip,) = nova.floating_ips.values()
        assert instance.address == ip["floating_ip_address"]
        assert ip["port_id"] and BUILD in ip["description"]
    assert nova.leftovers() == NOTHING
    (body,) = nova.requests("POST", r"/servers$")
    assert body["server"]["networks"] == [{"uuid": PRIVATE_NET}]


class Boom(Exception):
    pass


@pytest.mark.parametrize(
    "stop", [Boom("tests failed"), KeyboardInterrupt(), Interrupted("interrupted (SIGTERM)")]
)
def test_leaving_on_error_or_interrupt_removes_everything(scratch, cloud, nova, stop) -> None:
    project = load(scratch, "    cloud: openstack\n    floating_ip_pool: public\n")
    build = built(scratch, cloud, nova)
    nova.delete_polls = 3  # the server takes a while to go; its group is in use until then
    with pytest.raises(type(stop)) as caught, launched(project, build):
        raise stop
    assert caught.value is stop
    assert nova.leftovers() == NOTHING


def test_an_interrupt_while_waiting_for_active_removes_the_half_made_server(
    project, build, nova, monkeypatch
) -> None:
    def interrupt(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(launch.Verification, "floating_ip", interrupt)
    monkeypatch.setattr(launch, "fixed_address", interrupt)
    with pytest.raises(KeyboardInterrupt), launched(project, build):
        pytest.fail("never yields")
    assert nova.leftovers() == NOTHING


def test_a_failed_deletion_warns_does_not_mask_the_error_and_the_rest_goes(
    project, build, nova, capsys
) -> None:
    with pytest.raises(Boom), launched(project, build):
        nova.refuse("DELETE", r"/os-keypairs/", 500)
        raise Boom("tests failed")
    assert nova.leftovers() == {**NOTHING, "keypairs": [NAME]}
    err = capsys.readouterr().err
    assert f"could not delete the key pair {NAME}" in err
    assert "invoke sweep --cloud openstack" in err


def test_what_a_killed_verification_left_is_removed_before_launching(project, build, nova) -> None:
    cell = matrix.find(project, FLAVOR, "openstack")
    launch.Verification(project, cell, build).start(KEY, USER_DATA, common.ssh_source(SSH_FROM, ""))
    with launched(project, build):
        assert len(nova.servers) == 1 and len(nova.keypairs) == 1 and len(nova.groups) == 1
    assert nova.leftovers() == NOTHING


@pytest.mark.parametrize("bad", ["0.0.0.0/0", "::/0", "my laptop"])
def test_ssh_from_everyone_or_garbage_is_refused(project, build, nova, bad) -> None:
    with pytest.raises(ImageforgeError, match="ssh_from"), launched(project, build, bad):
        pass
    assert nova.requests("POST", "") == []


def test_an_image_nova_does_not_know_is_one_clear_error(project, build, nova) -> None:
    nova.images.clear()  # type: ignore[attr-defined]
    with pytest.raises(ImageforgeError) as caught, launched(project, build):
        pass
    assert str(caught.value).startswith("OpenStack cloud 'openstack': launch a server of image")
    assert "could not be found" in str(caught.value)
    assert nova.leftovers() == NOTHING


# --- the fake checks bodies against nova's schemas -------------------------------------------


@pytest.mark.parametrize(
    ("kind", "version", "body", "says"),
    [
        (
            "servers",
            "2.96",
            {"server": {"name": "x", "flavorRef": "3", "networks": "auto", "colour": 1}},
            "colour",
        ),
        ("servers", "2.96", {"server": {"name": "x", "flavorRef": "3"}}, "networks"),
        (
            "servers",
            "2.96",
            {
                "server": {
                    "name": "x",
                    "flavorRef": "3",
                    "networks": "auto",
                    "user_data": "not base64!",
                }
            },
            "base64",
        ),
        ("keypairs", "2.10", {"keypair": {"name": "bad/name", "public_key": KEY}}, "name"),
        ("keypairs", "2.10", {"keypair": {"public_key": KEY}}, "'name' is a required"),
    ],
)
def test_nova_schemas_refuse_bad_bodies(kind, version, body, says) -> None:
    from tests.fakes.nova import FakeError

    with pytest.raises(FakeError) as caught:
        check_nova(kind, version, body)
    assert caught.value.status == 400 and says in caught.value.message


def test_nova_schemas_take_a_good_body() -> None:
    body = {"server": {"name": "x", "flavorRef": "3", "networks": "auto", "imageRef": PRIVATE_NET,
                       "user_data": base64.b64encode(b"#cloud-config").decode()}}  # fmt: skip
    check_nova("servers", "2.96", body)


# --- sweep finds what a killed verification left ---------------------------------------------


def leave_behind(project: config.Project, build: BuildRecord) -> None:
    """Everything a verification makes, as a killed one leaves it."""
    cell = matrix.find(project, FLAVOR, "openstack")
    source = common.ssh_source(SSH_FROM, "")
    launch.Verification(project, cell, build).start(KEY, USER_DATA, source)


def test_sweep_removes_verification_leftovers_and_nothing_else(scratch, cloud, nova) -> None:
    import openstack

    project = load(scratch, "    cloud: openstack\n    floating_ip_pool: public\n")
    leave_behind(project, built(scratch, cloud, nova))
    conn = openstack.connect(cloud="openstack")
    conn.compute.create_keypair(name="someones-key", public_key=KEY)
    conn.network.create_security_group(name="web", description=f"imageforge-build-id={BUILD}")
    conn.network.create_security_group(name=f"imageforge-verify-{BUILD}-x", description="mine")
    (ip,) = nova.floating_ips.values()

    dry = os_cloud.CLOUD.sweep(project, apply=False, min_age_minutes=0)
    assert {(o.subject.split(" (")[0], tuple(o.changes)) for o in dry} == {
        (f"server {next(iter(nova.servers))} {SERVER}", ("would remove",)),
        (f"floating IP {ip['floating_ip_address']}", ("would remove",)),
        (f"security group {NAME}", ("would remove",)),
        (f"key pair {NAME}", ("would remove",)),
    }
    done = os_cloud.CLOUD.sweep(project, apply=True, min_age_minutes=0)
    assert [o.error for o in done] == [None] * 4
    assert nova.leftovers() == {
        **NOTHING,
        "keypairs": ["someones-key"],
        "security_groups": [f"imageforge-verify-{BUILD}-x", "web"],
    }


def test_sweep_keeps_the_verification_of_a_running_build(scratch, cloud, nova, tmp_path) -> None:
    project = load(scratch)
    leave_behind(project, built(tmp_path / "elsewhere", cloud, nova))
    make_record(scratch, FLAVOR, "openstack", BUILD, status="building")
    done = os_cloud.CLOUD.sweep(project, apply=True, min_age_minutes=0)
    assert len(done) == 3
    assert all(o.subject.endswith(f"kept: build {BUILD} is still building here") for o in done)
    assert nova.leftovers()["servers"] == [SERVER] and nova.leftovers()["keypairs"] == [NAME]


def test_sweep_keeps_young_verification_leftovers(scratch, cloud, nova) -> None:
    project = load(scratch)
    leave_behind(project, built(scratch, cloud, nova))
    done = os_cloud.CLOUD.sweep(project, apply=True, min_age_minutes=10**8)
    assert len(done) == 3 and not any(o.changes for o in done)
    assert nova.leftovers()["security_groups"] == [NAME]
