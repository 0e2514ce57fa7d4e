"""invoke cluster: what each node is told, and refusing a second cluster."""

from __future__ import annotations

import base64
import os
import threading
from pathlib import Path

import pytest
import yaml

from imageforge import cluster, config, runner
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


def test_read_pid_waits_for_the_pidfile(tmp_path: Path) -> None:
    pidfile = tmp_path / "ctl.pid"
    threading.Timer(0.3, lambda: pidfile.write_text("4242\n")).start()
    assert cluster._read_pid(pidfile, timeout=5) == 4242


def test_read_pid_gives_up(tmp_path: Path) -> None:
    with pytest.raises(ImageforgeError, match=r"^no pid in "):
        cluster._read_pid(tmp_path / "missing.pid", timeout=0.3)


def test_wait_names_what_did_not_come_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster, "BOOT_TIMEOUT", 0.2)
    monkeypatch.setattr(cluster.qemu, "wait_for_ssh", lambda port, timeout: "SSH-2.0-x")
    outputs = {"true": 0, "sinfo -h -N -o '%N %t'": 0}

    def ssh(self: cluster.Cluster, node: cluster.Node, command: str) -> runner.CommandResult:
        outputs[command] += 1
        return runner.CommandResult(["ssh"], 0, "worker1 idle\nworker2 down")

    monkeypatch.setattr(cluster.Cluster, "ssh", ssh)
    with pytest.raises(ImageforgeError) as caught:
        cluster._wait(nodes(), 2)
    assert str(caught.value).startswith(
        "the cluster did not come up in 0s: only 1 of 2 workers are idle: worker1 idle"
    )
    assert outputs["true"] == 2  # both nodes log in at the first attempt
    assert outputs["sinfo -h -N -o '%N %t'"] >= 1
