"""What imageforge writes into, and scrubs out of, an image's root tree before it becomes a disk.

Written: host name, fstab, GRUB and sshd settings, cloud-init's datasources (local images boot
with a NoCloud seed, or a config drive when imported into OpenStack), and a lean boot: timers a
server image never needs at boot are masked. Scrubbed: everything per-instance or cached, so
the image holds no host keys, no machine-id, no package lists, caches or logs.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
from pathlib import Path

from imageforge.clouds.local import disk, reproducible
from imageforge.process import runner

# A kernel that panics reboots after 10 s instead of hanging forever: on a cloud the instance
# comes back, and a VM under TCG that hits a rare early oops boots again instead of costing the
# whole SSH wait.
KERNEL_APPEND = "panic=10"
DATASOURCES = ("NoCloud", "ConfigDrive", "None")
# Periodic jobs that only slow a fresh VM down, and modules a server VM loads on demand if at
# all; images that want them enable them again.
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "man-db.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "modprobe@drm.service",
    "modprobe@efi_pstore.service",
    "modprobe@dm_mod.service",
    "modprobe@loop.service",
    "modprobe@fuse.service",
    # Early units a VM image has no use for, each a process start on an emulated CPU: GRUB's
    # boot-success record (the menu never waits), foreign binary formats, kernel debugging.
    "grub-common.service",
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
)
# Debian 12's cloud-init starts Python once per stage: the config stage's few modules run in
# cloud-final (CLOUD_INIT_LEAN) and cloud-config.service is masked, one interpreter start fewer.
# From cloud-init 24.3 (Debian 13) one process runs every stage, each stage's unit only signals
# it over a socket, so every unit must stay.
MASKED_UNITS_BY_SUITE = {"bookworm": ("cloud-config.service",)}
# Generators run at every boot and daemon-reload, each a process start of about 0.6 s on an
# emulated CPU (the sshd-over-vsock one 1.5 s). These look for what a VM image never has: a vsock
# for sshd, GPT partitions to mount automatically, a hibernation image, a TPM, an offline
# update, or a systemd.run= command on the kernel command line.
MASKED_GENERATORS = (
    "systemd-ssh-generator",
    "systemd-gpt-auto-generator",
    "systemd-hibernate-resume-generator",
    "systemd-tpm2-generator",
    "systemd-system-update-generator",
    "systemd-run-generator",
)
# systemd's first-boot catch-up (ldconfig, journal catalog, update-done) runs when /etc or /var
# is older than /usr; the tree is already up to date, so the stamps say so.
UPDATE_STAMPS = ("etc/.updated", "var/.updated")
# A small initramfs: only the drivers a virtual disk and a seed CD-ROM need (ext4 is built in);
# cloud-init looks for its seed as soon as systemd starts, so the CD-ROM must be there by then.
# Written before the kernel is installed (an mmdebstrap essential hook), so its own postinst
# makes the initramfs this way.
INITRAMFS_DRIVERS = (
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "ahci",
    "nvme",
    "ata_piix",
    "sr_mod",  # the CD-ROM that carries a NoCloud seed or a config drive
)
INITRAMFS_FILES = {
    "etc/initramfs-tools/conf.d/50-imageforge.conf": "MODULES=list\n",
    "etc/initramfs-tools/hooks/imageforge-disk-drivers": f"""\
#!/bin/sh
# imageforge: the disk drivers of virtual machines (MODULES=list adds no others), and no
# hardware database: udev's hwdb.bin (about 10 MiB) names devices, and finding a disk needs none.
[ "$1" = prereqs ] && {{ echo udev; exit 0; }}
. /usr/share/initramfs-tools/hook-functions
for module in {" ".join(INITRAMFS_DRIVERS)}; do manual_add_modules "$module"; done
rm -f "$DESTDIR/usr/lib/udev/hwdb.bin" "$DESTDIR/lib/udev/hwdb.bin" "$DESTDIR/etc/udev/hwdb.bin"
""",
}
# cloud-init, lean: no RSA host key (its generation alone took 8 s of an emulated boot), and
# only the modules a local image can use; the config stage's few modules run in the final stage
# (runcmd first, before scripts-user runs what it wrote).
CLOUD_INIT_LEAN = """\
ssh_genkeytypes: [ed25519, ecdsa]
cloud_init_modules: [seed_random, bootcmd, write-files, growpart, resizefs, disk_setup, mounts,
  set_hostname, update_hostname, update_etc_hosts, ca-certs, users-groups, ssh]
cloud_config_modules: []
cloud_final_modules: [locale, set-passwords, timezone, runcmd, package-update-upgrade-install,
  write-files-deferred, scripts-vendor, scripts-per-once, scripts-per-boot, scripts-per-instance,
  scripts-user, ssh-authkey-fingerprints, final-message, power-state-change]
"""
# ssl-cert's snakeoil pair is made when the package is installed; the image ships none, and
# this unit makes the instance's own before any service that uses it starts.
SNAKEOIL_UNIT = """\
[Unit]
Description=imageforge: this instance's own snakeoil TLS key and certificate
ConditionPathExists=/usr/sbin/make-ssl-cert
ConditionPathExists=!/etc/ssl/private/ssl-cert-snakeoil.key
Before=postgresql.service postgresql@.service nginx.service apache2.service
After=local-fs.target

[Service]
Type=oneshot
ExecStart=/usr/sbin/make-ssl-cert generate-default-snakeoil

[Install]
WantedBy=multi-user.target
"""
GRUB_DEFAULTS = f"""\
# imageforge: no menu delay, and a serial console on ttyS0.
GRUB_TIMEOUT=0
GRUB_CMDLINE_LINUX_DEFAULT="{KERNEL_APPEND}"
GRUB_CMDLINE_LINUX="{disk.KERNEL_CONSOLE}"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --speed=115200"
"""
SSHD_CONFIG = """\
# imageforge: keys only, no root logins.
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
"""
DEBCONF = "grub-pc grub-pc/install_devices multiselect /dev/vda\n"
# Per-instance or cached state: none of it may be in an image.
SCRUB_GLOBS = (
    "etc/ssh/ssh_host_*",
    "var/lib/apt/lists/*",
    "var/cache/apt/*.bin",
    "var/cache/apt/archives/*.deb",
    "var/cache/debconf/*-old",
    "var/lib/dbus/machine-id",
    "var/lib/systemd/random-seed",
    "etc/resolv.conf",
    # mmdebstrap keeps its --aptopt/--dpkgopt files; force-unsafe-io is for the build only.
    "etc/dpkg/dpkg.cfg.d/99mmdebstrap",
    "etc/apt/apt.conf.d/99mmdebstrap",
    "etc/munge/munge.key",  # packages make these at install time: they must be per instance
    "etc/ssl/private/ssl-cert-snakeoil.key",
    "etc/ssl/certs/ssl-cert-snakeoil.pem",
    "var/lib/rabbitmq/.erlang.cookie",
    "tmp/*",
    "var/tmp/*",
)


def mmdebstrap_options() -> list[str]:
    """An essential hook that writes INITRAMFS_FILES before the kernel is installed."""
    hooks = []
    for relative, text in INITRAMFS_FILES.items():
        quoted = shlex.quote(text)
        target = f'"$1/{relative}"'
        hooks.append(f'mkdir -p "$(dirname {target})" && printf %s {quoted} > {target}')
        hooks.append(f"chmod 0755 {target}" if "/hooks/" in relative else "true")
    return [f"--essential-hook={' && '.join(hooks)}"]


# How each release brings up its network. Debian 12: ifupdown and dhclient. Debian 13:
# systemd-networkd (part of systemd) and systemd-resolved, as Debian's own cloud images for it;
# cloud-init writes networkd's configuration, and resolv.conf points at resolved's stub.
NETWORK_PACKAGES = {"bookworm": ("ifupdown", "isc-dhcp-client"), "trixie": ("systemd-resolved",)}
ENABLED_UNITS_BY_SUITE = {"trixie": ("systemd-networkd.service", "systemd-resolved.service")}
NETWORK_CLOUD_CONFIG = {"trixie": "  network:\n    renderers: [networkd]\n"}
# resolved answers LLMNR and mDNS on every interface by default: a server image neither
# announces itself nor listens for name queries from its neighbours (no multicast at all).
RESOLVED_CONF = (
    "# imageforge: no multicast name resolution.\n[Resolve]\nLLMNR=no\nMulticastDNS=no\n"
)
FILES_BY_SUITE = {"trixie": {"etc/systemd/resolved.conf.d/50-imageforge.conf": RESOLVED_CONF}}
SYMLINKS_BY_SUITE = {"trixie": {"etc/resolv.conf": "../run/systemd/resolve/stub-resolv.conf"}}


def network_packages(suite: str) -> tuple[str, ...]:
    """The packages that bring up suite's network (ifupdown's stack before Debian 13)."""
    return NETWORK_PACKAGES.get(suite, NETWORK_PACKAGES["trixie"])


def files(user: str, hostname: str, suite: str) -> dict[str, str]:
    """The files written into the tree (relative path: content)."""
    datasources = ", ".join(DATASOURCES)
    return {
        "etc/hostname": f"{hostname}\n",
        "etc/hosts": f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n"
        "::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\n"
        "ff02::2\t\tip6-allrouters\n",
        "etc/fstab": f"LABEL={disk.ROOT_LABEL}\t/\text4\terrors=remount-ro\t0\t0\n",
        "etc/default/locale": "LANG=C.UTF-8\n",
        "etc/default/grub.d/50-imageforge.cfg": GRUB_DEFAULTS,
        "etc/ssh/sshd_config.d/50-imageforge.conf": SSHD_CONFIG,
        "etc/systemd/system/imageforge-snakeoil.service": SNAKEOIL_UNIT,
        "etc/cloud/cloud.cfg.d/50-imageforge.cfg": "# imageforge local image\n"
        f"datasource_list: [{datasources}]\n"
        "manage_etc_hosts: true\n"
        f"system_info:\n  default_user:\n    name: {user}\n"
        + NETWORK_CLOUD_CONFIG.get(suite, "")
        + CLOUD_INIT_LEAN,
    }


def fingerprint(user: str, hostname: str, suite: str) -> str:
    """Changes whenever what this module or disk.py would write into an image changes."""
    digest = hashlib.sha256(f"{user}\0{hostname}\0{suite}\0".encode())
    for module in (__file__, disk.__file__, reproducible.__file__):
        digest.update(Path(module).read_bytes())
    return digest.hexdigest()


def apply(rootfs: Path, user: str, hostname: str, suite: str) -> None:
    """Write the files, mask the units, set debconf answers and scrub the tree."""
    written = {**files(user, hostname, suite), **FILES_BY_SUITE.get(suite, {})}
    for relative, text in written.items():
        target = rootfs / relative
        _delete(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(0o644)
    wants = rootfs / "etc/systemd/system/multi-user.target.wants/imageforge-snakeoil.service"
    wants.parent.mkdir(parents=True, exist_ok=True)
    _delete(wants)
    wants.symlink_to("/etc/systemd/system/imageforge-snakeoil.service")
    for unit in (*MASKED_UNITS, *MASKED_UNITS_BY_SUITE.get(suite, ())):
        link = rootfs / "etc/systemd/system" / unit
        _delete(link)
        link.symlink_to("/dev/null")
    runner.run(
        ["chroot", rootfs, "debconf-set-selections"],
        stdin=DEBCONF,
        stream=False,
        what="debconf-set-selections",
    )
    (rootfs / "etc/machine-id").write_text("")  # empty: systemd makes one at the first boot
    for pattern in SCRUB_GLOBS:
        for path in rootfs.glob(pattern):
            _delete(path)
    for path in (rootfs / "var/log").rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.write_bytes(b"")
    for generator in MASKED_GENERATORS:
        link = rootfs / "etc/systemd/system-generators" / generator
        link.parent.mkdir(parents=True, exist_ok=True)
        _delete(link)
        link.symlink_to("/dev/null")
    _stamp_updated(rootfs)
    for name, points_to in SYMLINKS_BY_SUITE.get(suite, {}).items():
        _delete(rootfs / name)
        (rootfs / name).symlink_to(points_to)
    if units := ENABLED_UNITS_BY_SUITE.get(suite):
        runner.run(["systemctl", f"--root={rootfs}", "enable", *units], stream=False)


def _stamp_updated(rootfs: Path) -> None:
    """/etc and /var are as new as /usr (systemd's ConditionNeedsUpdate= is false): /usr and
    the stamps say reproducible.EPOCH, the time every file of the build is clamped to."""
    seconds = reproducible.EPOCH
    os.utime(rootfs / "usr", (seconds, seconds))
    for relative in UPDATE_STAMPS:
        stamp = rootfs / relative
        stamp.write_text(
            "# imageforge: this tree was up to date with /usr when the image was built.\n"
            f"TIMESTAMP_NSEC={seconds * 1_000_000_000}\n"
        )
        os.utime(stamp, (seconds, seconds))


def per_instance_leftovers(rootfs: Path) -> list[str]:
    """What in the tree is per-instance, or the build's own (its dpkg options): should be none."""
    found = [
        str(p.relative_to(rootfs))
        for g in SCRUB_GLOBS[:-2]
        for p in rootfs.glob(g)
        if not _points_into_run(p, rootfs)
    ]
    if (rootfs / "etc/machine-id").read_text().strip():
        found.append("etc/machine-id")
    found += [
        str(p.relative_to(rootfs))
        for p in (rootfs / "var/log").rglob("*")
        if p.is_file() and not p.is_symlink() and p.stat().st_size
    ]
    return found


def _points_into_run(path: Path, rootfs: Path) -> bool:
    """A symbolic link into /run (resolv.conf to resolved's stub) holds nothing of its own."""
    if not path.is_symlink():
        return False
    inside = os.path.join("/", path.parent.relative_to(rootfs), os.readlink(path))
    return os.path.normpath(inside).startswith("/run/")


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()
