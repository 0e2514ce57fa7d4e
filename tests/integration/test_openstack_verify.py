"""An OpenStack verification server against REAL Keystone and Glance, with Nova and Neutron from
the fake whose request bodies are checked against nova's published schemas (tests/fakes/nova.py),
registered in Keystone's catalog like real services: the image comes from Glance, the token and
the endpoints from Keystone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from imageforge import clouds
from imageforge.clouds import Launcher
from imageforge.clouds.common import LaunchRequest
from imageforge.config import matrix
from imageforge.records import state
from tests.fakes.nova import FakeCompute, serve

from .openstack_services import REGION, Services
from .test_openstack_glance import (  # noqa: F401 (fixtures)
    FLAVOR,
    _connect,
    connect,
    env,
    imported,
    load_project,
    services,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
]

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeVerificationKeyForTheTestOnly0000000 verify"
NOTHING = {"servers": [], "keypairs": [], "security_groups": [], "floating_ips": []}


@pytest.fixture
def nova(env: Services) -> Iterator[FakeCompute]:  # noqa: F811
    """The compute and network fake, in Keystone's catalog for as long as the test runs."""
    from openstack import exceptions

    admin, builder = connect("admin"), connect("builder")

    def in_glance(image_id: str) -> bool:
        try:
            builder.image.get_image(image_id)
        except exceptions.NotFoundException:
            return False
        return True

    with serve(builder.current_project_id, in_glance) as fake:
        made = []
        for name, kind, url in (
            ("nova", "compute", fake.compute_url),
            ("neutron", "network", fake.network_url),
        ):
            service = admin.identity.create_service(name=name, type=kind)
            made.append(service)
            for interface in ("public", "internal"):
                admin.identity.create_endpoint(
                    service_id=service.id, interface=interface, url=url, region_id=REGION
                )
        _connect.cache_clear()  # new tokens carry the new catalog
        try:
            yield fake
        finally:
            for service in made:
                for endpoint in admin.identity.endpoints(service_id=service.id):
                    admin.identity.delete_endpoint(endpoint)
                admin.identity.delete_service(service)
            _connect.cache_clear()


def test_a_verification_server_of_a_glance_image_comes_and_goes(
    env: Services,  # noqa: F811
    nova: FakeCompute,
    tmp_path: Path,
) -> None:
    project = load_project(tmp_path)
    record, image_id = imported(project, tmp_path, "20260101-000000-abcdef0-0000aa")
    record = state.load(record.directory)
    cell = matrix.find(project, FLAVOR, "openstack")
    launcher = clouds.capability("openstack", Launcher)
    request = LaunchRequest(project, cell, record, KEY, "#cloud-config\n", "127.0.0.1")
    with launcher.launch(request) as instance:
        (server,) = nova.servers.values()
        assert server["image"]["id"] == image_id  # the image Glance holds for this build
        assert instance.id == server["id"] and instance.address
        assert server["metadata"]["imageforge-build-id"] == record.id
        assert nova.keypairs and nova.groups
    assert nova.leftovers() == NOTHING
    (body,) = nova.requests("POST", r"/servers$")
    assert body["server"]["imageRef"] == image_id
