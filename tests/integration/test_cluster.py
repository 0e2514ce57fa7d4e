"""A real Slurm cluster from the built slurm-node image: 1 controller and 2 workers.

Everything runs inside a network namespace this test creates (`ip netns add`): `invoke cluster
up`, its VMs and VDE switch, and every SSH connection to the nodes. The nodes' own network is
the VDE switch; nothing reaches the machine's namespace.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from .conftest import processes_mentioning

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    name = f"imageforge-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def in_ns(netns: str, *argv: str | Path, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *map(str, argv)], capture_output=True, text=True, **kwargs
    )


def cluster_invoke(project: Path, netns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return in_ns(netns, sys.executable, "-m", "invoke", "cluster", *args, cwd=project)


class Nodes:
    """SSH into the cluster's nodes (inside the namespace) with the cluster's own key."""

    def __init__(self, project: Path, netns: str) -> None:
        state = json.loads((project / "build/cluster/cluster.json").read_text())
        self.key = Path(state["directory"]) / "ssh" / "id_ed25519"
        self.ports = {n["name"]: n["ssh_port"] for n in state["nodes"]}
        self.netns = netns

    def run(self, node: str, command: str) -> subprocess.CompletedProcess[str]:
        return in_ns(
            self.netns,
            *("ssh", "-i", self.key, "-p", str(self.ports[node]), "-o", "BatchMode=yes"),
            *("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"),
            *("-o", "LogLevel=ERROR", "debian@127.0.0.1", command),
            timeout=300,
        )

    def output(self, node: str, command: str) -> str:
        result = self.run(node, command)
        assert result.returncode == 0, f"{node}: {command}: {result.stdout}{result.stderr}"
        return result.stdout.strip()


@pytest.fixture(scope="module")
def cluster(slurm_build, netns: str) -> Iterator[tuple[Path, Nodes]]:
    project, built = slurm_build
    assert built.returncode == 0, built.stderr[-3000:]
    result = cluster_invoke(project, netns, "up", "--image", "slurm-node", "--workers", "2")
    try:
        assert result.returncode == 0, result.stderr[-4000:]
        yield project, Nodes(project, netns)
    finally:
        cluster_invoke(project, netns, "down")


def test_workers_are_idle_in_sinfo(cluster) -> None:
    _, nodes = cluster
    rows = nodes.output("ctl", "sinfo -h -N -o '%N %t'").splitlines()
    assert sorted(rows) == ["worker1 idle", "worker2 idle"], rows


def test_srun_answers_from_both_workers(cluster) -> None:
    _, nodes = cluster
    names = nodes.output("ctl", "srun -N2 hostname").split()
    assert sorted(names) == ["worker1", "worker2"]


def test_batch_job_completes_and_its_output_is_read_back(cluster) -> None:
    _, nodes = cluster
    job = nodes.output(
        "ctl",
        "sbatch --parsable --wait -N1 -w worker2 -o /tmp/job-%j.out "
        "--wrap 'echo imageforge-batch-$(hostname)'",
    )
    assert re.fullmatch(r"\d+", job), job
    assert nodes.output("worker2", f"cat /tmp/job-{job}.out") == "imageforge-batch-worker2"


def test_second_up_is_refused_while_it_runs(cluster, netns: str) -> None:
    project, _ = cluster
    again = cluster_invoke(project, netns, "up", "--workers", "1")
    assert again.returncode == 1
    assert "invoke cluster down" in again.stderr


def test_status_shows_the_nodes_and_sinfo(cluster, netns: str) -> None:
    project, _ = cluster
    result = cluster_invoke(project, netns, "status")
    assert result.returncode == 0, result.stderr
    for name in ("ctl", "worker1", "worker2", "PARTITION"):
        assert name in result.stdout + result.stderr


def munge_key_digest(nodes: Nodes, node: str) -> str:
    return nodes.output(node, "sudo sha256sum /etc/munge/munge.key").split()[0]


def test_the_nodes_share_one_key(cluster) -> None:
    _, nodes = cluster
    digests = {munge_key_digest(nodes, n) for n in ("ctl", "worker1", "worker2")}
    assert len(digests) == 1
    FIRST_KEY.update(digests)


FIRST_KEY: set[str] = set()


def seeded_key_digest(seed: Path) -> str:
    """The sha256 of the MUNGE key a node's NoCloud seed gives it (as the node writes it)."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.open(str(seed))
    try:
        data = io.BytesIO()
        iso.get_file_from_iso_fp(data, rr_path="/user-data")
    finally:
        iso.close()
    document = yaml.safe_load(data.getvalue().decode())
    key = base64.b64decode(document["imageforge_slurm"]["munge_key"], validate=True)
    return hashlib.sha256(key).hexdigest()


def test_ctrl_c_during_up_leaves_nothing_running(cluster, netns: str) -> None:
    """A second `up` is interrupted once its VMs started; its nodes were given a new key."""
    project, _ = cluster
    cluster_invoke(project, netns, "down")
    assert processes_mentioning(str(project / "build" / "cluster")) == []
    assert not (project / "build" / "cluster").exists()
    state = project / "build" / "cluster" / "cluster.json"
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "invoke", "cluster", "up"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until the last node's VM has been started
        if state.is_file() and all(n["pid"] for n in json.loads(state.read_text())["nodes"]):
            break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.5)
    else:
        pytest.fail("the cluster's VMs never started")
    seeds = sorted((project / "build" / "cluster").glob("*-seed.iso"))
    second = {seeded_key_digest(seed) for seed in seeds}
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output[-2000:]
    assert len(seeds) == 3 and len(second) == 1  # one new key, for every node
    assert FIRST_KEY and not second & FIRST_KEY
    assert processes_mentioning(str(project / "build" / "cluster")) == []
    assert not (project / "build" / "cluster").exists()
