"""The offline Debian 12 base image: built (or reused) once, booted from an overlay, checked over SSH.

The cache is $IMAGEFORGE_CACHE_DIR when set (CI points it at a persistent directory), else the
user's default cache, so a second run reuses the image built by the first.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from imageforge.clouds.local import aptsources, base, guestfiles, seed_user_data
from imageforge.errors import ImageforgeError
from imageforge.process import qcow2, qemu, runner
from imageforge.process.runner import CommandResult

SSH_TIMEOUT = 600.0
RESIZED_GIB = 6


@dataclass(frozen=True)
class Guest:
    """A booted overlay of the base image, reachable with key over SSH on port."""

    vm: qemu.VirtualMachine
    key: Path
    port: int
    user: str
    instance_id: str
    seconds_to_ssh: float

    def ssh(self, command: str, *, check: bool = True) -> CommandResult:
        argv = ["ssh", "-i", self.key, "-p", str(self.port), "-o", "BatchMode=yes"]
        argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        argv += ["-o", "ConnectTimeout=15", "-o", "LogLevel=ERROR"]
        return runner.run([*argv, f"{self.user}@127.0.0.1", command], stream=False, check=check)

    def output(self, command: str) -> str:
        return self.ssh(command).output.strip()


@pytest.fixture(scope="session")
def base_image() -> base.BaseImage:
    started = time.monotonic()
    image = base.ensure_base()
    print(f"\nensure_base: {time.monotonic() - started:.1f}s, built={image.built}, {image.path}")
    return image


@pytest.fixture(scope="module")
def guest(base_image: base.BaseImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    tmp = tmp_path_factory.mktemp("guest")
    key = tmp / "id_ed25519"
    runner.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "imageforge-test", "-f", key])
    disk = qcow2.overlay(base_image.path, tmp / "disk.qcow2")
    # The way packer's disk_size grows the disk: cloud-init must grow the root filesystem.
    runner.run(["qemu-img", "resize", "-q", disk, f"{RESIZED_GIB}G"], stream=False)
    instance_id = f"imageforge-test-{int(time.time())}"
    seed = qemu.make_seed(
        tmp / "seed.iso",
        user_data=seed_user_data((tmp / "id_ed25519.pub").read_text().strip()),
        meta_data=f"instance-id: {instance_id}\nlocal-hostname: imageforge-test\n",
    )
    # No network beyond the SSH forward, as in verification (apt timers must not reach out).
    vm = qemu.VirtualMachine(
        disk=disk, seed=seed, serial_log=tmp / "console.log", restrict_network=True
    )
    with vm:
        started = time.monotonic()
        vm.wait_for_ssh(SSH_TIMEOUT)
        user = base.BaseRecipe().user
        guest = Guest(vm, key, vm.ssh_port, user, instance_id, time.monotonic() - started)
        _wait_for_login(guest)
        print(f"\nSSH banner after {guest.seconds_to_ssh:.1f}s (console: {vm.serial_log})")
        yield guest


def _wait_for_login(guest: Guest, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while guest.ssh("true", check=False).returncode != 0:
        if time.monotonic() > deadline:
            guest.ssh("true")  # raises, with ssh's own message
        time.sleep(2)


@pytest.mark.integration
def test_cached_call_reuses_the_image(base_image: base.BaseImage) -> None:
    started = time.monotonic()
    again = base.ensure_base()
    assert time.monotonic() - started < 5
    assert not again.built
    assert again.path == base_image.path
    assert again.sha256 == base_image.sha256
    assert (base_image.path.parent / "base.json").is_file()
    assert not base.cache_dir().resolve().is_relative_to(Path(__file__).resolve().parents[2])


@pytest.mark.integration
def test_boots_without_kernel_argument_so_grub_is_installed(guest: Guest) -> None:
    # GRUB was put on the disk without booting it (boot.img in the MBR, core.img behind it).
    assert "-kernel" not in guest.vm.argv()
    assert "BOOT_IMAGE=" in guest.output("cat /proc/cmdline")  # set by GRUB only
    assert "console=ttyS0,115200" in guest.output("cat /proc/cmdline")
    guest.ssh("test -s /boot/grub/grub.cfg && test -e /boot/grub/i386-pc/core.img")


@pytest.mark.integration
def test_system_is_running(guest: Guest) -> None:
    state = guest.ssh("systemctl is-system-running --wait", check=False).output.strip()
    failed = guest.output("systemctl --failed --no-legend --plain")
    assert state == "running", f"system {state}; failed units: {failed}"


@pytest.mark.integration
def test_cloud_init_ran_once_and_is_done(guest: Guest) -> None:
    assert guest.output("cloud-init status --wait").endswith("done")
    instances = guest.output("sudo -n ls /var/lib/cloud/instances 2>/dev/null").split()
    assert instances == [guest.instance_id]  # cloud-init did not run while the image was built
    assert guest.output("hostname") == "imageforge-test"


@pytest.mark.integration
def test_first_boot_identity_is_fresh(guest: Guest) -> None:
    assert len(guest.output("cat /etc/machine-id")) == 32
    boot_time = int(guest.output("awk '/^btime/ {print $2}' /proc/stat"))
    mtimes = guest.output("stat -c %Y /etc/ssh/ssh_host_*_key").split()
    assert mtimes
    assert all(int(m) >= boot_time for m in mtimes)


@pytest.mark.integration
def test_image_contents(guest: Guest) -> None:
    guest.ssh("command -v python3 && sudo -n true && test ! -e /imageforge-firstboot")
    assert guest.output("id -un") == guest.user
    sshd = guest.output("sudo sshd -T")
    assert "permitrootlogin no" in sshd
    assert "passwordauthentication no" in sshd
    assert guest.output("ls /var/lib/apt/lists | grep -v -e lock -e partial || true") == ""
    size_kib = int(guest.output("df --output=size -k / | tail -1"))
    assert size_kib > (RESIZED_GIB - 1) * 1024 * 1024  # cloud-init grew the root partition
    # A small initramfs: the virtual disk's driver, no udev hardware database.
    initramfs = guest.output("sudo lsinitramfs /boot/initrd.img-$(uname -r)")
    assert "virtio_blk.ko" in initramfs and "hwdb.bin" not in initramfs
    # Generators a VM image has no use for are masked, the rest still run.
    masked = guest.output("readlink /etc/systemd/system-generators/*").split()
    assert masked == ["/dev/null"] * len(guestfiles.MASKED_GENERATORS), masked
    assert guest.output("systemctl is-active serial-getty@ttyS0.service").strip() == "active"


@pytest.mark.integration
def test_no_sshd_restart_after_the_first_login(guest: Guest) -> None:
    """With the local seed's user-data, cloud-init leaves sshd alone: one start, so whoever
    logged in first is never cut off by a restart in cloud-init's final stage."""
    guest.output("cloud-init status --wait")
    log = "sudo journalctl -b -u ssh.service -o cat"
    starts = guest.output(f"{log} | grep -c '^Server listening on 0.0.0.0'")
    assert starts.strip() == "1", starts


@pytest.mark.integration
def test_recipe_hash_follows_the_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    sources = ("deb http://mirror.invalid/debian trixie main",)
    recipe = base.BaseRecipe(sources=sources)
    assert base.recipe_hash(recipe) == base.recipe_hash(base.BaseRecipe(sources=sources))
    more = replace(recipe, packages=(*recipe.packages, "vim-tiny"))
    assert base.recipe_hash(more) != base.recipe_hash(recipe)
    reordered = replace(recipe, packages=tuple(reversed(recipe.packages)))
    assert base.recipe_hash(reordered) == base.recipe_hash(recipe)
    assert base.recipe_hash(replace(recipe, disk_size_mib=8192)) != base.recipe_hash(recipe)
    layer = replace(recipe, extra_packages=("munge",))
    assert layer.kind == "layers" and recipe.kind == "base"
    assert base.recipe_hash(layer) != base.recipe_hash(recipe)
    before = base.recipe_hash(recipe)
    monkeypatch.setattr(guestfiles, "fingerprint", lambda user, host, suite: "changed")
    assert base.recipe_hash(recipe) != before  # what the build writes into the tree changed


@pytest.mark.integration
def test_host_sources_are_read_from_apt(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [arch=amd64] http://a.invalid/debian bookworm main contrib\n"
        "deb http://a.invalid/debian bullseye main\n"
    )
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb deb-src\nURIs: http://b.invalid/debian-security\n"
        "Suites: bookworm-security\nComponents: main\nSigned-By: /k.gpg\n\n"
        "Types: deb\nURIs: http://c.invalid/x\nSuites: bookworm\nComponents: main\nEnabled: no\n"
    )
    assert aptsources.host_sources("bookworm", tmp_path) == (
        "deb [arch=amd64] http://a.invalid/debian bookworm main contrib",
        "deb [signed-by=/k.gpg] http://b.invalid/debian-security bookworm-security main",
    )


@pytest.mark.integration
def test_cache_dir_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("IMAGEFORGE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert base.cache_dir() == tmp_path / "xdg" / "imageforge"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert base.cache_dir() == Path.home() / ".cache" / "imageforge"
    monkeypatch.setenv("IMAGEFORGE_CACHE_DIR", str(tmp_path / "explicit"))
    assert base.cache_dir() == tmp_path / "explicit"
    monkeypatch.setenv("IMAGEFORGE_CACHE_DIR", str(Path(__file__).parent))
    with pytest.raises(ImageforgeError):
        base.cache_dir()
