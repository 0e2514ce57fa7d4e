"""What each cloud can do, how tasks ask for it, and the rules every cloud shares."""

from __future__ import annotations

import subprocess
import sys

import pytest
from invoke import Context, Exit

from imageforge import clouds
from imageforge.clouds import common, housekeeping
from imageforge.clouds.sdkerrors import CloudError, sdk_errors
from imageforge.errors import ConfigError, ImageforgeError
from imageforge.tasks import sharing as sharing_tasks

from ..conftest import ROOT, write

ABLE = {
    clouds.PackerSource: {"local", "aws", "gcp", "openstack"},
    clouds.Preflight: {"aws", "gcp", "openstack"},
    clouds.Sharer: {"aws", "gcp", "openstack"},
    clouds.Housekeeper: {"aws", "gcp", "openstack"},
    clouds.Importer: {"openstack"},
    clouds.Launcher: {"local", "aws", "gcp", "openstack"},  # local: a QEMU VM here
    clouds.Distributor: {"aws"},
}


@pytest.mark.parametrize("kind", list(ABLE))
def test_each_cloud_implements_exactly_its_capabilities(kind) -> None:
    assert {n for n in clouds.CLOUDS if isinstance(clouds.get(n), kind)} == ABLE[kind]


def test_asking_a_cloud_for_what_it_lacks_names_those_that_can() -> None:
    with pytest.raises(ConfigError) as caught:
        clouds.capability("local", clouds.Sharer)
    assert str(caught.value) == "local cannot publish; clouds that can: aws, gcp, openstack"
    with pytest.raises(ConfigError, match="aws cannot import; clouds that can: openstack"):
        clouds.capability("aws", clouds.Importer)
    with pytest.raises(ConfigError, match="unknown cloud 'azure'"):
        clouds.capability("azure", clouds.Sharer)


@pytest.mark.parametrize("keep", ["0", "-2", "many", "2.5", 0])
def test_the_prune_task_refuses_a_bad_keep_in_one_line(scratch, keep) -> None:
    write(scratch, "flavors:\n  slurm-node: {}\n")
    with pytest.raises(Exit) as caught:
        sharing_tasks.prune.body(Context(), "aws", keep=keep)
    assert caught.value.code == 2


def test_keep_and_min_age_take_strings_as_invoke_passes_them() -> None:
    assert housekeeping.keep_count(" 3 ") == 3
    assert housekeeping.min_age("0") == 0
    with pytest.raises(ConfigError, match=r"^--min-age: -5 is negative"):
        housekeeping.min_age("-5")


def test_sdk_errors_become_one_line_naming_cloud_operation_and_endpoint() -> None:
    class ConnectFailure(Exception):  # keystoneauth1's name, for an endpoint nobody answers
        pass

    ConnectFailure.__module__ = "keystoneauth1.exceptions.connection"
    with (
        pytest.raises(CloudError) as caught,
        sdk_errors("OpenStack cloud 'x'", "sweep", "http://h:5000"),
    ):
        raise ConnectFailure("Unable to establish connection to http://h:5000/v3\nretrying")
    assert str(caught.value) == (
        "OpenStack cloud 'x': sweep at http://h:5000: no answer from the endpoint "
        "(Unable to establish connection to http://h:5000/v3)"
    )
    assert caught.value.exit_code == 2
    with pytest.raises(ZeroDivisionError), sdk_errors("AWS", "x"):
        raise ZeroDivisionError  # a bug stays a bug


def test_added_bookkeeping_merges_and_removes_per_place() -> None:
    merged = common.merge_added({"a": [1]}, {"a": [1, 2], "b": [3], "c": []})
    assert merged == {"a": [1, 2], "b": [3]}
    assert common.remove_added(merged, {"a": [1, 2], "b": [9]}) == {"b": [3]}


def test_gcp_labels_and_reserved_prefixes() -> None:
    assert common.label("Team.Name/HPC") == "team_name_hpc"
    assert {"imageforge-", "aws:", "goog"} <= set(common.RESERVED_TAG_PREFIXES)


def test_no_cloud_sdk_is_imported_until_used() -> None:
    """`invoke --list` and rendering work with no cloud SDK configured."""
    code = (
        "import sys; from imageforge import clouds; "
        "[clouds.get(n).source for n in clouds.CLOUDS]; "
        "sdks = ('boto3', 'botocore', 'google', 'openstack', 'keystoneauth1'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in sdks))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_ssh_source_is_the_callers_address_towards_the_api_unless_given() -> None:
    assert str(common.ssh_source("", "http://127.0.0.1:5000")) == "127.0.0.1/32"
    assert str(common.ssh_source("198.51.100.7", "unused")) == "198.51.100.7/32"
    with pytest.raises(ImageforgeError, match="would admit SSH from everyone"):
        common.ssh_source("0.0.0.0/0", "unused")
    with pytest.raises(ImageforgeError, match="is not an IP address or CIDR"):
        common.ssh_source("laptop", "unused")


@pytest.mark.parametrize(
    ("wide", "addresses"),
    [
        ("0.0.0.0/1", "2,147,483,648"),
        ("128.0.0.0/1", "2,147,483,648"),
        ("10.0.0.0/8", "16,777,216"),
        ("203.0.0.0/15", "131,072"),
        ("::/1", "170,141,183,460,469,231,731,687,303,715,884,105,728"),
        ("2001:db8::/32", "79,228,162,514,264,337,593,543,950,336"),
    ],
)
def test_ssh_source_wider_than_a_site_is_refused(wide: str, addresses: str) -> None:
    with pytest.raises(ImageforgeError, match=f"from {addresses} addresses; the widest allowed"):
        common.ssh_source(wide, "unused")


@pytest.mark.parametrize("narrow", ["203.0.0.0/16", "198.51.100.0/24", "2001:db8:1::/48"])
def test_ssh_source_of_a_site_is_allowed(narrow: str) -> None:
    assert str(common.ssh_source(narrow, "unused")) == narrow


def test_packer_gets_longer_to_clean_up_in_a_cloud() -> None:
    local = clouds.get("local").packer_grace_seconds
    assert all(
        clouds.get(c).packer_grace_seconds >= 120 > local for c in ("aws", "gcp", "openstack")
    )


def test_each_cloud_names_its_images_cloud_init_datasource() -> None:
    named = {c: clouds.get(c).datasource for c in clouds.CLOUDS}
    assert named == {
        "local": "NoCloud",
        "aws": "Ec2",
        "gcp": "GCE",
        "openstack": "OpenStack, ConfigDrive",
    }
