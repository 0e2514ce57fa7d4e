"""invoke cluster: what each node is told, and refusing a second cluster."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
import yaml

from imageforge import cluster, config
from imageforge.errors import ImageforgeError

from .conftest import write


def nodes() -> cluster.Cluster:
    members = [
        cluster.Node("ctl", "controller", "10.77.0.10", 2222),
        cluster.Node("worker1", "worker", "10.77.0.11", 2223),
    ]
    return cluster.Cluster("demo", "/nonexistent", "b1", "debian", members)


def test_user_data_carries_role_controller_and_key() -> None:
    demo = nodes()
    key = base64.b64encode(b"k" * 1024).decode()
    text = cluster._user_data("ssh-ed25519 AAAA test", demo.nodes[1], demo, key, {"ctl": "x"})
    assert text.startswith("#cloud-config\n")
    block = yaml.safe_load(text)["imageforge_slurm"]
    assert block == {
        "role": "worker",
        "cluster_name": "demo",
        "controller": "10.77.0.10",
        "munge_key": key,
        "hosts": {"ctl": "x"},
    }


def test_network_config_puts_the_node_on_the_cluster_network() -> None:
    document = yaml.safe_load(cluster._network_config(1, nodes().nodes[1]))
    assert document["version"] == 2
    ethernets = document["ethernets"]
    assert ethernets["cluster"]["addresses"] == ["10.77.0.11/24"]
    assert ethernets["cluster"]["match"]["macaddress"] == "52:54:00:77:00:01"
    assert ethernets["nat"]["dhcp4"] is True


def test_a_running_cluster_is_not_started_twice(scratch: Path) -> None:
    write(scratch, "flavors:\n  slurm-node: {}\n")
    project = config.load(scratch / "images.yml")
    demo = nodes()
    demo.directory = str(cluster.state_dir(project))
    demo.nodes[0].pid = os.getpid()  # alive
    Path(demo.directory).mkdir(parents=True)
    cluster._save(demo)
    with pytest.raises(ImageforgeError) as caught:
        cluster.up(project, 2)
    assert "invoke cluster down" in str(caught.value)


def test_worker_count_is_checked(scratch: Path) -> None:
    write(scratch, "flavors:\n  slurm-node: {}\n")
    with pytest.raises(ImageforgeError, match="--workers must be 1 to 8"):
        cluster.up(config.load(scratch / "images.yml"), 0)
