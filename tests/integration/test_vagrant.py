"""The Vagrant box of a verified slurm-node build, with the real Vagrant and vagrant-libvirt.

libvirtd, its networks, vagrant and the checks run inside a network namespace that this module
creates (`ip netns add`): libvirt's bridges carry private-range addresses, and no traffic to
them ever leaves that namespace. The module starts `virtlogd -d` and `libvirtd -d` itself
(there is no systemd), uses a dir storage pool of its own, and leaves no domain, volume,
network, pool or process behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imageforge.process import qemu
from imageforge.records import state
from tests.integration.conftest import ROOT, Offline, invoke, processes_mentioning

pytestmark = pytest.mark.integration

NETNS = f"imageforge-vagrant-{os.getpid()}"
POOL = f"imageforge-test-{os.getpid()}"
WORKERS = 1
DAEMONS = ("libvirtd", "virtlogd")
NEEDED = ("vagrant", "libvirtd", "virtlogd", "virsh", "ip", "dnsmasq")


@dataclass(frozen=True)
class Libvirt:
    """libvirtd in its own network namespace, and a dir storage pool for the test."""

    netns: str
    pool: str
    pool_dir: Path
    home: Path  # VAGRANT_HOME: the box store, this test's only

    def env(self, **more: str) -> dict[str, str]:
        accelerator = qemu.probe_accelerator("auto")
        return {
            **os.environ,
            "VAGRANT_HOME": str(self.home),
            "VAGRANT_CHECKPOINT_DISABLE": "1",
            "VAGRANT_DEFAULT_PROVIDER": "libvirt",
            "LIBVIRT_DEFAULT_URI": "qemu:///system",
            "IMAGEFORGE_VAGRANT_DRIVER": "kvm" if accelerator == "kvm" else "qemu",
            "IMAGEFORGE_VAGRANT_POOL": self.pool,
            **more,
        }

    def run(self, argv: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
        """argv inside the namespace."""
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )


def virsh(*args: str) -> list[str]:
    done = subprocess.run(
        ["virsh", "-q", "-c", "qemu:///system", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def daemon_pids() -> dict[str, int]:
    found = {}
    for name in DAEMONS:
        pidfile = Path(f"/run/{name}.pid")
        if pidfile.is_file() and pidfile.read_text().strip().isdigit():
            pid = int(pidfile.read_text().strip())
            if Path(f"/proc/{pid}").exists():
                found[name] = pid
    return found


@pytest.fixture(scope="module")
def libvirt() -> Iterator[Libvirt]:
    missing = [tool for tool in NEEDED if shutil.which(tool) is None]
    assert not missing, f"scripts/setup.sh installs {missing}"
    assert not daemon_pids(), "a libvirtd or virtlogd is already running; stop it first"
    # Traversable (not listable) by libvirt's QEMU user, which opens the pool's images.
    scratch = Path(tempfile.mkdtemp(prefix="imageforge-vagrant-"))
    scratch.chmod(0o711)
    pool_dir = scratch / "pool"
    pool_dir.mkdir(mode=0o711)
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    lv = Libvirt(NETNS, POOL, pool_dir, scratch / "vagrant.d")
    try:
        lv.run(["ip", "link", "set", "lo", "up"], timeout=30, check=True)
        lv.run(["virtlogd", "-d"], timeout=60, check=True)
        lv.run(libvirtd_command(scratch), timeout=60, check=True)
        deadline = time.monotonic() + 60
        while subprocess.run(
            ["virsh", "-c", "qemu:///system", "version"], capture_output=True
        ).returncode:
            assert time.monotonic() < deadline, "libvirtd did not answer within 60 s"
            time.sleep(0.5)
        virsh("pool-define-as", POOL, "dir", "--target", str(pool_dir))
        virsh("pool-start", POOL)
        yield lv
    finally:
        _tear_down(lv)
        shutil.rmtree(scratch, ignore_errors=True)


def libvirtd_command(scratch: Path) -> list[str]:
    """`libvirtd -d`; where KVM is refused, in a mount namespace that hides /dev/kvm.

    libvirt probes QEMU's capabilities as root but checks that KVM is usable as its QEMU
    user. Where /dev/kvm is root's alone (0600, as on this kind of host), the two never
    agree, and libvirt probes QEMU again (about 30 s under TCG) at every domain definition.
    The domains run under TCG (driver "qemu") anyway, so libvirtd is shown an empty file,
    and (as libvirt cannot carry that mount into a domain's own /dev) this daemon's qemu.conf
    gives domains no private /dev.
    """
    if qemu.probe_accelerator("auto") == "kvm" or not Path("/dev/kvm").exists():
        return ["libvirtd", "-d"]
    hidden = scratch / "no-kvm"
    hidden.touch(mode=0o600)
    shipped = Path("/etc/libvirt/qemu.conf")
    conf = scratch / "qemu.conf"
    conf.write_text(shipped.read_text() + "\nnamespaces = []\n")
    conf.chmod(0o600)
    mount = f"mount --bind {hidden} /dev/kvm && mount --bind {conf} {shipped} && exec libvirtd -d"
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount]


def _tear_down(lv: Libvirt) -> None:
    """Whatever a failed test left: domains and networks of this test, the pool, the daemons."""
    if daemon_pids().get("libvirtd"):
        for name in virsh("list", "--all", "--name"):
            if name.startswith("slurm-node_"):
                subprocess.run(["virsh", "destroy", name], capture_output=True)
                subprocess.run(
                    ["virsh", "undefine", name, "--remove-all-storage"], capture_output=True
                )
        for network in ("vagrant-libvirt", "imageforge-slurm"):
            subprocess.run(["virsh", "net-destroy", network], capture_output=True)
            subprocess.run(["virsh", "net-undefine", network], capture_output=True)
        for volume in subprocess.run(
            ["virsh", "-q", "vol-list", POOL], capture_output=True, text=True
        ).stdout.splitlines():
            if volume.split():
                subprocess.run(
                    ["virsh", "vol-delete", volume.split()[0], POOL], capture_output=True
                )
        subprocess.run(["virsh", "pool-destroy", POOL], capture_output=True)
        subprocess.run(["virsh", "pool-undefine", POOL], capture_output=True)
    for name, pid in daemon_pids().items():
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        Path(f"/run/{name}.pid").unlink(missing_ok=True)
    subprocess.run(["ip", "netns", "delete", NETNS], capture_output=True)


@pytest.fixture(scope="module")
def built(slurm_build) -> tuple[Path, state.BuildRecord]:
    project, done = slurm_build
    assert done.returncode == 0, done.stderr[-3000:]
    record = state.find(project, "slurm-node", "local", None)
    assert record.verified
    return project, record


@pytest.fixture(scope="module")
def box(built) -> Path:
    _, record = built
    boxes = [record.directory / a.path for a in record.derived if a.path.endswith(".box")]
    assert len(boxes) == 1, record.derived
    return boxes[0]


def test_the_box_follows_vagrants_format_and_is_standalone(box: Path, tmp_path: Path) -> None:
    with tarfile.open(box) as tar:
        assert sorted(tar.getnames()) == ["Vagrantfile", "box.img", "metadata.json"]
        tar.extractall(tmp_path, filter="data")
    metadata = json.loads((tmp_path / "metadata.json").read_text())
    assert metadata["provider"] == "libvirt" and metadata["format"] == "qcow2"
    info = json.loads(
        subprocess.check_output(["qemu-img", "info", "--output=json", tmp_path / "box.img"])
    )
    assert info["format"] == "qcow2" and "backing-filename" not in info
    assert metadata["virtual_size"] * 2**30 >= info["virtual-size"]
    vagrantfile = (tmp_path / "Vagrantfile").read_text()
    assert 'config.ssh.username = "vagrant"' in vagrantfile
    # KVM for those who have it: the driver is chosen, never forced to QEMU's emulation.
    assert 'libvirt.driver = "qemu"' not in vagrantfile and "/dev/kvm" in vagrantfile


def test_only_the_box_has_the_vagrant_user_and_the_insecure_key(built, box, tmp_path) -> None:
    _, record = built
    insecure = (ROOT / "vagrant/keys/vagrant.pub").read_text().split()[1]
    cloud = Offline(record.directory / "image" / "slurm-node.qcow2", tmp_path)
    assert "vagrant:" not in cloud.debugfs("cat /etc/passwd")
    assert "vagrant" not in cloud.names("/home")
    assert "vagrant" not in cloud.debugfs("ls /etc/sudoers.d")
    assert insecure not in cloud.debugfs("cat /home/debian/.ssh/authorized_keys")
    with tarfile.open(box) as tar:
        tar.extract("box.img", tmp_path / "box", filter="data")
    boxed = Offline(tmp_path / "box" / "box.img", tmp_path / "box")
    assert "vagrant:x:" in boxed.debugfs("cat /etc/passwd")
    assert insecure in boxed.debugfs("cat /home/vagrant/.ssh/authorized_keys")
    # The box is the verified image plus the account: no per-instance secret came with it.
    assert "munge.key" not in boxed.debugfs("ls /etc/munge")
    assert not [n for n in boxed.names("/etc/ssh") if n.startswith("ssh_host_")]


@pytest.fixture(scope="module")
def catalog(built) -> Path:
    project, _ = built
    done = invoke(project, "vagrant", "catalog", "--image", "slurm-node")
    assert done.returncode == 0, done.stderr
    return project / "artifacts" / "vagrant" / "slurm-node" / "metadata.json"


def test_the_catalog_lists_the_build_once_with_its_checksum(built, box, catalog) -> None:
    project, record = built
    data = json.loads(catalog.read_text())
    assert data["name"] == "imageforge/slurm-node"
    [version] = data["versions"]
    assert record.id in version["description"]
    [provider] = version["providers"]
    assert provider["name"] == "libvirt" and provider["checksum_type"] == "sha256"
    assert provider["checksum"] == state.sha256(box)
    assert provider["url"].startswith("file://")
    before = catalog.read_text()
    done = invoke(project, "vagrant", "catalog", "--image", "slurm-node")
    assert done.returncode == 0 and "nothing new" in done.stderr
    assert catalog.read_text() == before


def test_vagrant_box_add_refuses_a_wrong_checksum(libvirt: Libvirt, catalog, tmp_path) -> None:
    data = json.loads(catalog.read_text())
    data["versions"][0]["providers"][0]["checksum"] = "0" * 64
    forged = tmp_path / "metadata.json"
    forged.write_text(json.dumps(data))
    env = libvirt.env(VAGRANT_HOME=str(tmp_path / "vagrant.d"))
    done = subprocess.run(
        ["vagrant", "box", "add", "--provider", "libvirt", forged.as_uri()],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode != 0
    assert "checksum" in (done.stdout + done.stderr).lower()


def test_vagrant_box_add_from_the_catalog(libvirt: Libvirt, catalog) -> None:
    done = subprocess.run(
        ["vagrant", "box", "add", "--provider", "libvirt", catalog.as_uri()],
        capture_output=True,
        text=True,
        env=libvirt.env(),
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    listed = subprocess.run(
        ["vagrant", "box", "list"], capture_output=True, text=True, env=libvirt.env()
    ).stdout
    version = json.loads(catalog.read_text())["versions"][0]["version"]
    assert f"imageforge/slurm-node (libvirt, {version})" in listed


@pytest.fixture(scope="module")
def cluster(libvirt: Libvirt, built, catalog) -> Iterator[Path]:
    """`vagrant up` of vagrant/slurm-node: a controller and a worker from the box."""
    project, _ = built
    seeds = invoke(project, "vagrant", "seeds", "--workers", str(WORKERS))
    assert seeds.returncode == 0, seeds.stderr
    where = project / "vagrant" / "slurm-node"
    # libvirt's QEMU user must reach the seeds (files 600, handed over by libvirt at start).
    for parent in [where / "seeds", *list((where / "seeds").parents)]:
        if parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o111)
    env = libvirt.env(IMAGEFORGE_WORKERS=str(WORKERS), IMAGEFORGE_BOX_URL=catalog.as_uri())
    started = time.monotonic()
    up = libvirt.run(["vagrant", "up"], timeout=1500, cwd=where, env=env)
    print(f"vagrant up: {time.monotonic() - started:.1f}s")
    # Vagrant's message heads its stderr; the Ruby backtrace follows it
    assert up.returncode == 0, up.stdout[-2000:] + up.stderr[:3000]
    yield where
    destroy = libvirt.run(["vagrant", "destroy", "-f"], timeout=300, cwd=where, env=env)
    assert destroy.returncode == 0, destroy.stdout + destroy.stderr


def test_vagrant_up_of_the_slurm_node_cluster(libvirt: Libvirt, cluster: Path) -> None:
    running = virsh("list", "--name")
    assert sorted(running) == [
        "slurm-node_ctl",
        *(f"slurm-node_worker{i}" for i in range(1, WORKERS + 1)),
    ]


@pytest.mark.parametrize("machine, role", [("ctl", "controller"), ("worker1", "worker")])
def test_testinfra_through_vagrant_ssh_config(
    libvirt: Libvirt, cluster: Path, tmp_path: Path, machine: str, role: str
) -> None:
    env = libvirt.env(IMAGEFORGE_WORKERS=str(WORKERS))
    config = libvirt.run(["vagrant", "ssh-config", machine], timeout=120, cwd=cluster, env=env)
    assert config.returncode == 0, config.stderr
    ssh_config = tmp_path / "ssh-config"
    ssh_config.write_text(config.stdout)
    checks = libvirt.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            f"--hosts=ssh://{machine}",
            f"--ssh-config={ssh_config}",
            str(ROOT / "tests" / "infra" / "test_vagrant_box.py"),
        ],
        timeout=600,
        cwd=ROOT / "tests" / "infra",
        env={
            **env,
            "IMAGEFORGE_VAGRANT_ROLE": role,
            "IMAGEFORGE_VAGRANT_WORKERS": str(WORKERS),
        },
    )
    assert checks.returncode == 0, checks.stdout[-4000:] + checks.stderr[-2000:]
    assert " passed" in checks.stdout and "failed" not in checks.stdout


def test_vagrant_ssh_runs_a_job_on_the_cluster(libvirt: Libvirt, cluster: Path) -> None:
    env = libvirt.env(IMAGEFORGE_WORKERS=str(WORKERS))
    ran = libvirt.run(
        ["vagrant", "ssh", "ctl", "-c", f"srun -N{WORKERS} hostname"],
        timeout=300,
        cwd=cluster,
        env=env,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert sorted(ran.stdout.split()) == [f"worker{i}" for i in range(1, WORKERS + 1)]


def test_vagrant_destroy_leaves_no_domain_volume_or_process(
    libvirt: Libvirt, cluster: Path, request
) -> None:
    env = libvirt.env(IMAGEFORGE_WORKERS=str(WORKERS))
    destroy = libvirt.run(["vagrant", "destroy", "-f"], timeout=300, cwd=cluster, env=env)
    assert destroy.returncode == 0, destroy.stdout + destroy.stderr
    assert [d for d in virsh("list", "--all", "--name") if d.startswith("slurm-node_")] == []
    volumes = [line.split()[0] for line in virsh("vol-list", libvirt.pool)]
    # Only the box's base image is left: vagrant-libvirt keeps it for the next `up`.
    assert all("_vagrant_box_image_" in v for v in volumes), volumes
    assert processes_mentioning("guest=slurm-node_") == []
    networks = virsh("net-list", "--name")
    assert "imageforge-slurm" not in networks and "vagrant-libvirt" not in networks
