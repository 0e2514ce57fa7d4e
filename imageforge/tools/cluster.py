"""A Slurm cluster on this machine from the newest verified local slurm-node build.

One controller and N workers boot from copy-on-write overlays of the build's qcow2. They share
a private layer-2 network, a VDE switch on a unix socket (no interface on the host, no
multicast), with addresses from CLUSTER_NET; each one also has QEMU user networking with
restrict=on, used only for SSH forwarded on 127.0.0.1. Every node gets its own NoCloud seed:
its role, the cluster name, the controller's address and the cluster's MUNGE key, made anew for
every cluster. The cluster's state lives in build/cluster/, so that `status` and `down` find it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_fixed,
)
from tenacity.stop import StopBaseT

from imageforge import log
from imageforge.config import Project
from imageforge.errors import ImageforgeError
from imageforge.process import buildsecrets, console, qcow2, qemu, reap, runner
from imageforge.records import state
from imageforge.records.record import BuildRecord
from imageforge.tools import clusterseeds

FLAVOR = "slurm-node"
CLUSTER_NET = "10.77.0"
CONTROLLER_HOST = 10
BOOT_TIMEOUT = 600.0
MEMORY_MB = 1024
MAX_WORKERS = 8
# How the nodes' first-boot program (provisioners/slurm-node) starts its console lines.
SETUP_TAG = "imageforge-slurm:"


@dataclass
class Node:
    name: str
    role: str
    address: str
    ssh_port: int
    pid: int = 0
    pid_token: str = ""  # "pid starttime": the same process, not one that reused the pid


@dataclass
class Cluster:
    """What `up` started: enough for `status` and `down` to find every piece."""

    name: str
    directory: str
    build_id: str
    user: str
    nodes: list[Node]
    switch_pid: int = 0
    switch_token: str = ""

    @property
    def key(self) -> Path:
        return Path(self.directory) / "ssh" / "id_ed25519"

    def ssh_argv(self, node: Node, command: str | None = None) -> list[str]:
        argv = ["ssh", "-i", str(self.key), "-p", str(node.ssh_port)]
        argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        argv += ["-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", "-o", "BatchMode=yes"]
        return [*argv, f"{self.user}@127.0.0.1", *([command] if command else [])]

    def ssh(self, node: Node, command: str) -> runner.CommandResult:
        return runner.run(self.ssh_argv(node, command), stream=False, check=False)

    @property
    def controller(self) -> Node:
        return self.nodes[0]


def state_dir(project: Project) -> Path:
    return project.root / "build" / "cluster"


def load(project: Project) -> Cluster | None:
    path = state_dir(project) / "cluster.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    data["nodes"] = [Node(**n) for n in data["nodes"]]
    return Cluster(**data)


def _save(cluster: Cluster) -> None:
    path = Path(cluster.directory) / "cluster.json"
    path.write_text(json.dumps(asdict(cluster), indent=2) + "\n")


def alive(pid: int, token: str) -> bool:
    """Whether the process `up` started still runs: the pid, with the start time recorded
    then. After a reboot (or once it exited) the pid may name another process: not ours."""
    return pid > 0 and token.split()[:1] == [str(pid)] and reap.owner_alive(token)


def _token(pid: int) -> str:
    token = reap.process_token(pid)
    if token is None:
        raise ImageforgeError(f"process {pid} exited as soon as it started")
    return token


def up(project: Project, workers: int, name: str = "imageforge") -> Cluster:
    """Boot the controller and `workers` workers, wait until every worker is idle in sinfo."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ImageforgeError(f"--workers must be 1 to {MAX_WORKERS}, not {workers}")
    running = load(project)
    if running is not None and any(alive(*p) for p in _pids(running)):
        raise ImageforgeError(
            f"cluster {running.name} is already running",
            hint="stop it first with `invoke cluster down`",
        )
    if running is not None:
        down(project)
    record = _newest_verified(project)
    directory = state_dir(project)
    directory.mkdir(parents=True)
    directory.chmod(0o700)
    nodes = [Node("ctl", "controller", f"{CLUSTER_NET}.{CONTROLLER_HOST}", qemu.free_port())]
    nodes += [
        Node(f"worker{i}", "worker", f"{CLUSTER_NET}.{CONTROLLER_HOST + i}", qemu.free_port())
        for i in range(1, workers + 1)
    ]
    cluster = Cluster(name, str(directory), record.id, "debian", nodes)
    _save(cluster)
    try:
        _start(project, cluster, record)
        _wait(cluster, workers)
    except BaseException:
        log.warn("stopping the cluster's VMs after the failure")
        down(project)
        raise
    return cluster


def _newest_verified(project: Project) -> BuildRecord:
    found = [r for r in state.records(project.root, FLAVOR, "local") if r.verified]
    if not found:
        raise ImageforgeError(
            "there is no verified local slurm-node build",
            hint="run `invoke build --image slurm-node` first",
        )
    return found[-1]


def _start(project: Project, cluster: Cluster, record: BuildRecord) -> None:
    directory = Path(cluster.directory)
    key = buildsecrets.ssh_keypair(directory / "ssh", f"imageforge-cluster-{cluster.name}")
    munge_key = base64.b64encode(secrets.token_bytes(1024)).decode()
    hosts = {n.name: n.address for n in cluster.nodes}
    switch = directory / "switch"
    with log.step("VDE switch for the cluster network"):
        runner.run(
            [
                *("vde_switch", "--sock", switch, "--mode", "0700"),
                *("--daemon", "--pidfile", directory / "switch.pid"),
            ],
            stream=False,
            what="vde_switch",
            die_with_parent=False,  # the cluster outlives `invoke cluster up`
        )
        cluster.switch_pid = _read_pid(directory / "switch.pid")
        cluster.switch_token = _token(cluster.switch_pid)
        _save(cluster)
    image = record.directory / "image" / f"{FLAVOR}.qcow2"
    for index, node in enumerate(cluster.nodes):
        with log.step(f"start {node.name} ({node.role}, {node.address})"):
            overlay = qcow2.overlay(image, directory / f"{node.name}.qcow2")
            seed = qemu.make_seed(
                directory / f"{node.name}-seed.iso",
                user_data=_user_data(key.public, node, cluster, munge_key, hosts),
                meta_data=f"instance-id: {cluster.name}-{node.name}-{secrets.token_hex(4)}\n"
                f"local-hostname: {node.name}\n",
                network_config=_network_config(index, node),
            )
            vm = qemu.VirtualMachine(
                disk=overlay,
                serial_log=directory / f"{node.name}-console.log",
                seed=seed,
                cpus=1,
                memory_mb=MEMORY_MB,
                accelerator=project.images.clouds.local.accelerator,
                restrict_network=True,
                mac=f"52:54:00:12:34:{index:02x}",
                ssh_port=node.ssh_port,
                extra_args=(
                    "-netdev",
                    f"vde,id=cluster,sock={switch}",
                    "-device",
                    f"virtio-net-pci,netdev=cluster,mac=52:54:00:77:00:{index:02x}",
                ),
            )
            pidfile = directory / f"{node.name}.pid"
            console.private_file(vm.serial_log)
            runner.run(
                [*vm.argv(), "-daemonize", "-pidfile", pidfile],
                stream=False,
                what=f"starting {node.name}",
                die_with_parent=False,  # the cluster outlives `invoke cluster up`
            )
            node.pid = _read_pid(pidfile)
            node.pid_token = _token(node.pid)
            _save(cluster)


def _user_data(
    public_key: str, node: Node, cluster: Cluster, munge: str, hosts: dict[str, str]
) -> str:
    return clusterseeds.slurm_user_data(
        node.role, cluster.name, cluster.controller.address, munge, hosts, public_key
    )


def _network_config(index: int, node: Node) -> str:
    return clusterseeds.network_config(
        f"52:54:00:12:34:{index:02x}", f"52:54:00:77:00:{index:02x}", node.address
    )


def _read_pid(path: Path, timeout: float = 10.0) -> int:
    def pid() -> int:
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            raise _NotYet from None

    try:
        return int(_until(stop_after_delay(timeout), wait=0.1)(pid))
    except _NotYet:
        raise ImageforgeError(f"no pid in {path}") from None


class _NotYet(Exception):
    """What an attempt of a wait loop raises while what it waits for is not there yet."""


def _until(stop: StopBaseT, *, wait: float) -> Retrying:
    """Retry an attempt every `wait` seconds while it raises _NotYet; then re-raise the last."""
    return Retrying(
        stop=stop, wait=wait_fixed(wait), retry=retry_if_exception_type(_NotYet), reraise=True
    )


def _wait(cluster: Cluster, workers: int) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT

    def past_deadline(retry_state: RetryCallState) -> bool:
        return time.monotonic() > deadline

    def logs_in(node: Node) -> None:
        if cluster.ssh(node, "true").returncode != 0:
            raise _NotYet(f"{node.name} does not accept the cluster's key")

    def enough_idle() -> None:
        out = cluster.ssh(cluster.controller, "sinfo -h -N -o '%N %t'").output
        idle = [line.split()[0] for line in out.splitlines() if line.endswith(" idle")]
        if len(idle) < workers:
            raise _NotYet(f"only {len(idle)} of {workers} workers are idle: {out}")

    try:
        for node in cluster.nodes:
            with log.step(f"wait for {node.name}: SSH"):
                qemu.wait_for_ssh(node.ssh_port, max(deadline - time.monotonic(), 1))
                _until(past_deadline, wait=2)(logs_in, node)
        with log.step(f"wait for {workers} idle workers in sinfo"):
            _until(past_deadline, wait=3)(enough_idle)
    except _NotYet as exc:
        message = f"the cluster did not come up in {BOOT_TIMEOUT:.0f}s: {exc}"
        raise ImageforgeError(f"{message}\n{_first_boot_reports(cluster)}") from None


def _first_boot_reports(cluster: Cluster) -> str:
    """What each node's first-boot program last said on its console (`down` removes the logs)."""
    lines = []
    for node in cluster.nodes:
        path = Path(cluster.directory) / f"{node.name}-console.log"
        text = path.read_text(errors="replace") if path.is_file() else ""
        said = [line for line in text.splitlines() if SETUP_TAG in line]
        last = said[-1][said[-1].index(SETUP_TAG) :].strip() if said else f"no {SETUP_TAG} line"
        lines.append(f"  {node.name}: {last}")
    return "\n".join(lines)


def _pids(cluster: Cluster) -> list[tuple[int, str]]:
    """(pid, token) of every process `up` started: the VMs and the switch."""
    return [(n.pid, n.pid_token) for n in cluster.nodes] + [
        (cluster.switch_pid, cluster.switch_token)
    ]


def down(project: Project) -> Cluster | None:
    """Stop every VM and the switch, and remove the overlays, seeds, keys and sockets."""
    cluster = load(project)
    directory = state_dir(project)
    if cluster is not None:
        for pid, token in _pids(cluster):
            if alive(pid, token):
                os.kill(pid, signal.SIGTERM)

        def stopped() -> None:
            if any(alive(*p) for p in _pids(cluster)):
                raise _NotYet

        with contextlib.suppress(_NotYet):
            _until(stop_after_delay(15), wait=0.2)(stopped)
        for pid, token in _pids(cluster):
            if alive(pid, token):
                os.kill(pid, signal.SIGKILL)
    shutil.rmtree(directory, ignore_errors=True)
    return cluster


def status(project: Project) -> tuple[Cluster, str] | None:
    """The cluster, and sinfo on its controller (or why it cannot be asked)."""
    cluster = load(project)
    if cluster is None:
        return None
    if not alive(cluster.controller.pid, cluster.controller.pid_token):
        return cluster, "the controller is not running"
    result = cluster.ssh(cluster.controller, "sinfo")
    return cluster, result.output
