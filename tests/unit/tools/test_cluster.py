"""invoke cluster: what each node is told, what the node's first-boot program makes of it (run
on a scratch tree, with Debian 12's and Debian 13's Slurm), and refusing a second cluster."""

from __future__ import annotations

import base64
import os
import pwd
import subprocess
import threading
import types
from pathlib import Path

import pytest
import yaml

from imageforge import config
from imageforge.errors import ImageforgeError
from imageforge.process import reap, runner
from imageforge.tools import cluster

from .. import guestprograms
from ..conftest import write

PROVISIONER = "provisioners/slurm-node/20-slurm.py"
SLURM_VERSIONS = {"debian-12": "slurm-wlm 22.05.8\n", "debian-13": "slurm-wlm 24.11.5\n"}


def nodes() -> cluster.Cluster:
    members = [
        cluster.Node("ctl", "controller", "10.77.0.10", 2222),
        cluster.Node("worker1", "worker", "10.77.0.11", 2223),
    ]
    return cluster.Cluster("demo", "/nonexistent", "b1", "debian", members)


def test_user_data_carries_role_controller_and_key() -> None:
    demo = nodes()
    key = base64.b64encode(b"k" * 1024).decode()
    hosts = {"ctl": "10.77.0.10"}
    text = cluster._user_data("ssh-ed25519 AAAA test", demo.nodes[1], demo, key, hosts)
    assert text.startswith("#cloud-config\n")
    block = yaml.safe_load(text)["imageforge_slurm"]
    assert block == {
        "role": "worker",
        "cluster_name": "demo",
        "controller": "10.77.0.10",
        "munge_key": key,
        "hosts": hosts,
    }
    with pytest.raises(ImageforgeError, match=r"would be refused: imageforge_slurm.hosts.ctl"):
        cluster._user_data("ssh-ed25519 AAAA test", demo.nodes[1], demo, key, {"ctl": "x"})


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
    demo.nodes[0].pid_token = reap.process_token(os.getpid()) or ""
    Path(demo.directory).mkdir(parents=True)
    cluster._save(demo)
    with pytest.raises(ImageforgeError) as caught:
        cluster.up(project, 2)
    assert "invoke cluster down" in str(caught.value)


def test_down_signals_only_the_processes_up_started(scratch: Path) -> None:
    """After a reboot the pids in cluster.json name other processes: down leaves them be."""
    write(scratch, "flavors:\n  slurm-node: {}\n")
    project = config.load(scratch / "images.yml")
    ours = subprocess.Popen(["sleep", "60"])
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        demo = nodes()
        demo.directory = str(cluster.state_dir(project))
        demo.nodes[0].pid, demo.nodes[0].pid_token = ours.pid, reap.process_token(ours.pid) or ""
        # the pid now belongs to another process, started later than the one recorded
        start = int((reap.process_token(stranger.pid) or "0 0").split()[1])
        demo.nodes[1].pid, demo.nodes[1].pid_token = stranger.pid, f"{stranger.pid} {start - 1}"
        demo.switch_pid = stranger.pid  # a cluster.json from before tokens: no token
        Path(demo.directory).mkdir(parents=True)
        cluster._save(demo)
        assert cluster.alive(ours.pid, demo.nodes[0].pid_token)
        assert not cluster.alive(stranger.pid, demo.nodes[1].pid_token)
        cluster.down(project)
        assert ours.wait(timeout=10) == -15  # SIGTERM
        assert stranger.poll() is None
        assert not Path(demo.directory).exists()
    finally:
        for proc in (ours, stranger):
            proc.kill()
            proc.wait()


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


def test_wait_names_what_did_not_come_up(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cluster, "BOOT_TIMEOUT", 0.2)
    demo = nodes()
    demo.directory = str(tmp_path)
    (tmp_path / "ctl-console.log").write_bytes(
        b"[  OK  ] Started ssh.service\r\n"
        b"\x1b[0mimageforge-slurm: controller of cluster demo, controller 10.77.0.10\r\n"
    )
    (tmp_path / "worker1-console.log").write_bytes(b"Debian GNU/Linux 13 worker1 ttyS0\n")
    monkeypatch.setattr(cluster.qemu, "wait_for_ssh", lambda port, timeout: "SSH-2.0-x")
    outputs = {"true": 0, "sinfo -h -N -o '%N %t'": 0}

    def ssh(self: cluster.Cluster, node: cluster.Node, command: str) -> runner.CommandResult:
        outputs[command] += 1
        return runner.CommandResult(["ssh"], 0, "worker1 idle\nworker2 down")

    monkeypatch.setattr(cluster.Cluster, "ssh", ssh)
    with pytest.raises(ImageforgeError) as caught:
        cluster._wait(demo, 2)
    assert str(caught.value).startswith(
        "the cluster did not come up in 0s: only 1 of 2 workers are idle: worker1 idle"
    )
    # What each node's first-boot program said, read before `down` removes the console logs.
    assert str(caught.value).endswith(
        "\n  ctl: imageforge-slurm: controller of cluster demo, controller 10.77.0.10"
        "\n  worker1: no imageforge-slurm: line"
    )
    assert outputs["true"] == 2  # both nodes log in at the first attempt
    assert outputs["sinfo -h -N -o '%N %t'"] >= 1


# The node's first-boot program (provisioners/slurm-node/20-slurm.py), on a scratch tree.


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The program with its files in tmp_path, and systemctl and `slurmctld -V` recorded."""
    module = guestprograms.program(PROVISIONER, tmp_path, monkeypatch)
    for name in ("MUNGE_KEY", "SLURM_CONF", "SLURMD_DEFAULTS", "HOSTS", "CLUSTER_NAME"):
        monkeypatch.setattr(module, name, tmp_path / name.lower())
    state = (tmp_path / "slurmctld", tmp_path / "slurmd")
    monkeypatch.setattr(module, "STATE_SAVE", state[0])
    monkeypatch.setattr(module, "STATE_DIRS", state)
    (tmp_path / "hosts").write_text(HOSTS)
    me = pwd.getpwuid(os.getuid())
    monkeypatch.setattr(module.pwd, "getpwnam", lambda name: me)
    calls: list[list[str]] = []
    module.version = SLURM_VERSIONS["debian-13"]  # type: ignore[attr-defined]

    def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(list(argv))
        out = module.version if argv[-1] == "-V" else ""  # type: ignore[attr-defined]
        return subprocess.CompletedProcess(argv, 0, out, "")

    monkeypatch.setattr(module.subprocess, "run", run)
    module.calls = calls  # type: ignore[attr-defined]
    module.motd = tmp_path / "motd.d" / "50-imageforge-slurm"  # type: ignore[attr-defined]
    return module


HOSTS = (
    "127.0.0.1\tlocalhost\n127.0.1.1\tworker1.example worker1\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n192.0.2.5\tfileserver\n"
)


def given(node: cluster.Node, key: str) -> bytes:
    demo = nodes()
    hosts = {n.name: n.address for n in demo.nodes}
    return cluster._user_data("ssh-ed25519 AAAA t", node, demo, key, hosts).encode()


def slurm_settings(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")
    return dict(pairs)


@pytest.mark.parametrize("os_name", sorted(SLURM_VERSIONS))
def test_a_controller_serves_configless_slurm_for_dynamic_nodes(setup, os_name: str) -> None:
    setup.version = SLURM_VERSIONS[os_name]
    key = base64.b64encode(b"m" * 1024).decode()
    assert setup.boot(given(nodes().controller, key)) == 0
    conf = slurm_settings(setup.SLURM_CONF.read_text())
    assert conf["ClusterName"] == "demo"
    assert conf["SlurmctldHost"] == f"{os.uname().nodename}(10.77.0.10)"
    assert conf["SlurmctldParameters"] == "enable_configless"
    assert conf["StateSaveLocation"] == str(setup.STATE_SAVE)
    assert conf["SelectType"] == "select/cons_tres" and int(conf["MaxNodeCount"]) >= 8
    # 22.05 cannot fan out through dynamic nodes; 24.11 can, and needs no TreeWidth.
    assert conf.get("TreeWidth") == ("65533" if os_name == "debian-12" else None)
    assert setup.SLURM_CONF.stat().st_mode & 0o777 == 0o644  # slurmctld reads it as slurm
    assert all(d.is_dir() for d in setup.STATE_DIRS)
    assert setup.MUNGE_KEY.read_bytes() == b"m" * 1024
    assert setup.MUNGE_KEY.stat().st_mode & 0o777 == 0o400
    assert ["systemctl", "enable", "--quiet", "munge", "slurmctld"] in setup.calls
    said = setup.motd.read_text()  # and the console: what `cluster up` reports on a failure
    assert said == f"{cluster.SETUP_TAG} controller of cluster demo, controller 10.77.0.10\n"


def test_a_worker_fetches_its_configuration_from_the_controller(setup) -> None:
    key = base64.b64encode(b"w" * 1024).decode()
    setup.SLURM_CONF.write_text("stale\n")
    assert setup.boot(given(nodes().nodes[1], key)) == 0
    assert not setup.SLURM_CONF.exists()
    options = setup.SLURMD_DEFAULTS.read_text()
    assert options == 'SLURMD_OPTIONS="-Z --conf-server 10.77.0.10:6817"\n'
    hosts = setup.HOSTS.read_text()
    assert "10.77.0.10\tctl\n" in hosts and "10.77.0.11\tworker1\n" in hosts
    # other nodes cannot reach this node at 127.0.1.1: that name goes from the loopback line;
    # the system's own lines and everybody else's stay as they were
    assert "127.0.1.1\tworker1.example\n" in hosts
    assert hosts.startswith("127.0.0.1\tlocalhost\n")
    assert "::1\tlocalhost ip6-localhost ip6-loopback\n192.0.2.5\tfileserver\n" in hosts
    assert setup.MUNGE_KEY.read_bytes() == b"w" * 1024
    assert ["systemctl", "enable", "--quiet", "munge", "slurmd"] in setup.calls
    assert setup.boot(given(nodes().nodes[1], key)) == 0  # every boot: one block of ours
    assert setup.HOSTS.read_text() == hosts


def test_a_relaunched_controller_keeps_its_state_and_refuses_another_clusters(setup) -> None:
    key = base64.b64encode(b"s" * 64).decode()
    setup.STATE_SAVE.mkdir()
    (setup.STATE_SAVE / "clustername").write_text("demo\n")
    (setup.STATE_SAVE / "job_state").write_text("jobs")
    assert setup.boot(given(nodes().controller, key)) == 0
    assert (setup.STATE_SAVE / "job_state").read_text() == "jobs"
    setup.calls.clear()
    setup.MUNGE_KEY.unlink()
    other = guestprograms.cloud_config(
        {"imageforge_slurm": {"role": "controller", "munge_key": key, "cluster_name": "other"}}
    )
    with pytest.raises(SystemExit) as exited:
        setup.boot(other)
    assert exited.value.code == 1
    assert "belongs to cluster 'demo', not 'other'" in setup.motd.read_text()
    assert (setup.STATE_SAVE / "job_state").read_text() == "jobs"
    assert not setup.MUNGE_KEY.exists() and not setup.calls


def test_the_images_cluster_name_is_the_default(setup, monkeypatch) -> None:
    monkeypatch.setenv("SLURM_CLUSTER_NAME", "physics")
    monkeypatch.setattr(setup, "SETUP", setup.CLUSTER_NAME.with_name("setup"))
    monkeypatch.setattr(setup, "UNIT", setup.CLUSTER_NAME.with_name("unit"))
    monkeypatch.setattr(setup, "SLURMD_DROP_IN", setup.CLUSTER_NAME.with_name("d") / "drop-in")
    assert setup.build() == 0
    assert setup.CLUSTER_NAME.read_text() == "ClusterName=physics\n"
    assert f"ExecStart={setup.SETUP} boot\n" in setup.UNIT.read_text()
    assert setup.SETUP.read_bytes() == Path(setup.__file__).read_bytes()
    key = base64.b64encode(b"c" * 32).decode()
    block = {"imageforge_slurm": {"role": "controller", "munge_key": key}}
    assert setup.boot(guestprograms.cloud_config(block)) == 0
    assert slurm_settings(setup.SLURM_CONF.read_text())["ClusterName"] == "physics"
    monkeypatch.setenv("SLURM_CLUSTER_NAME", "a b")
    assert setup.build() == 2


KEY = base64.b64encode(b"k" * 64).decode()


def test_without_our_block_nothing_starts(setup) -> None:
    assert setup.boot(b"#cloud-config\nruncmd: [true]\n") == 0
    assert "this node is not configured" in setup.motd.read_text()
    assert not [c for c in setup.calls if c[0] == "systemctl"]
    assert not setup.MUNGE_KEY.exists() and not setup.SLURM_CONF.exists()


@pytest.mark.parametrize(
    ("block", "said"),
    [
        ({"role": "worker", "controller": "10.77.0.10"}, "'munge_key' is a required property"),
        ({"role": "worker", "controller": "10.77.0.10", "munge_key": "c2hvcnQ="}, "at least 44"),
        ({"role": "worker", "munge_key": KEY}, "'controller' is a required property"),
        ({"role": "controller", "munge_key": KEY, "cluster_name": "a b"}, "cluster_name: must"),
        ({"role": "controller", "munge_key": "A" * 42 + "=="}, "munge_key: must decode to 32"),
        ({"role": "controller", "munge_key": "A" * 45}, "munge_key: must be base64"),
        ({"role": "worker", "munge_key": KEY, "controller": None}, "controller: must be of type"),
        (
            {"role": "worker", "munge_key": KEY, "controller": "ctl", "hosts": {"ctl": "x\ny"}},
            "control characters",
        ),
    ],
)
def test_a_wrong_block_fails_the_unit_and_changes_nothing(setup, block: dict, said: str) -> None:
    before = setup.HOSTS.read_text()
    with pytest.raises(SystemExit) as exited:
        setup.boot(guestprograms.cloud_config({"imageforge_slurm": block}))
    assert exited.value.code == 1
    motd = setup.motd.read_text()
    assert motd.startswith("imageforge-slurm: refusing the user-data, nothing changed: ")
    assert said in motd and motd.count("\n") == 1
    assert not [c for c in setup.calls if c[0] == "systemctl"]
    assert not setup.MUNGE_KEY.exists() and not setup.SLURM_CONF.exists()
    assert setup.HOSTS.read_text() == before


@pytest.mark.parametrize(
    ("output", "version"),
    [("slurm-wlm 24.11.5\n", (24, 11)), ("slurm 22.05.8\n", (22, 5)), ("", (23, 11))],
)
def test_slurm_version_from_the_daemon(setup, output: str, version: tuple[int, int]) -> None:
    assert setup.version_of(output) == version


def test_print_conf_shows_what_a_controller_would_serve(setup, capsys) -> None:
    setup.version = SLURM_VERSIONS["debian-12"]
    assert setup.main(["--print-conf"]) == 0
    assert slurm_settings(capsys.readouterr().out)["TreeWidth"] == "65533"
    assert not setup.SLURM_CONF.exists() and not setup.motd.exists()


def test_the_first_boot_unit_follows_cloud_init_on_debian_12_and_13(setup) -> None:
    unit = setup.firstboot.unit(setup.DESCRIPTION, setup.SETUP)
    assert "ExecStart=/usr/local/sbin/imageforge-slurm-setup boot" in unit
    after = [u for line in unit.splitlines() if line.startswith("After=") for u in line[6:].split()]
    # cloud-init's network stage writes the user-data, host name and /etc/hosts: its unit is
    # cloud-init.service in Debian 12, cloud-init-network.service in Debian 13.
    assert {"cloud-init.service", "cloud-init-network.service"} <= set(after)
    assert "network-online.target" in after
