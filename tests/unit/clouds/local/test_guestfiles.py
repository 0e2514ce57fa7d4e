"""What a tree must not keep: the per-instance leftovers check."""

from __future__ import annotations

import subprocess
from pathlib import Path

from imageforge.clouds.local import guestfiles
from imageforge.stages.sshchecks import timespan_seconds


def tree(root: Path) -> Path:
    for directory in ("etc/ssh", "var/log", "var/lib/apt/lists", "etc/munge"):
        (root / directory).mkdir(parents=True)
    (root / "etc/machine-id").write_text("")
    (root / "var/log/dpkg.log").write_text("")
    return root


def test_a_clean_tree_has_no_leftovers(tmp_path: Path) -> None:
    assert guestfiles.per_instance_leftovers(tree(tmp_path)) == []


def test_every_kind_of_leftover_is_named(tmp_path: Path) -> None:
    root = tree(tmp_path)
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("key")
    (root / "var/lib/apt/lists/deb_dists_bookworm_InRelease").write_text("x")
    (root / "etc/munge/munge.key").write_text("secret")
    (root / "var/log/dpkg.log").write_text("installed\n")
    (root / "etc/dpkg/dpkg.cfg.d").mkdir(parents=True)
    (root / "etc/dpkg/dpkg.cfg.d/99mmdebstrap").write_text("force-unsafe-io\n")
    assert sorted(guestfiles.per_instance_leftovers(root)) == [
        "etc/dpkg/dpkg.cfg.d/99mmdebstrap",
        "etc/machine-id",
        "etc/munge/munge.key",
        "etc/ssh/ssh_host_ed25519_key",
        "var/lib/apt/lists/deb_dists_bookworm_InRelease",
        "var/log/dpkg.log",
    ]


def test_systemd_time_spans() -> None:
    assert timespan_seconds("5.371s") == 5.371
    assert timespan_seconds("1min 2.5s") == 62.5
    assert timespan_seconds("850ms") == 0.85
    assert timespan_seconds("1h 1min 1s") == 3661.0


def test_resolved_stub_link_is_not_a_leftover(tmp_path: Path) -> None:
    root = tree(tmp_path)
    (root / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    assert guestfiles.per_instance_leftovers(root) == []
    (root / "etc/resolv.conf").unlink()
    (root / "etc/resolv.conf").write_text("nameserver 10.0.2.3\n")  # the build host's
    assert guestfiles.per_instance_leftovers(root) == ["etc/resolv.conf"]


def test_each_release_gets_its_own_network_stack_and_cloud_init_units() -> None:
    trixie = guestfiles.files("debian", "debian", "trixie")[
        "etc/cloud/cloud.cfg.d/50-imageforge.cfg"
    ]
    bookworm = guestfiles.files("debian", "debian", "bookworm")[
        "etc/cloud/cloud.cfg.d/50-imageforge.cfg"
    ]
    assert "renderers: [networkd]" in trixie and "renderers" not in bookworm
    assert guestfiles.network_packages("trixie") == ("systemd-resolved",)
    assert "systemd-networkd.service" in guestfiles.ENABLED_UNITS_BY_SUITE["trixie"]
    assert guestfiles.network_packages("bookworm") == ("ifupdown", "isc-dhcp-client")
    # cloud-init's single process needs every stage's unit; Debian 12 masks one interpreter.
    assert "cloud-config.service" in guestfiles.MASKED_UNITS_BY_SUITE["bookworm"]
    assert "cloud-config.service" not in guestfiles.MASKED_UNITS_BY_SUITE.get("trixie", ())
    assert guestfiles.fingerprint("u", "h", "trixie") != guestfiles.fingerprint(
        "u", "h", "bookworm"
    )


def test_initramfs_hook_runs_after_udev_and_drops_its_hardware_database(tmp_path: Path) -> None:
    """The hook names udev as its prerequisite (so it runs after udev's own hook copied
    hwdb.bin), then removes the database; the drivers are added by hook-functions."""
    hook = tmp_path / "hook"
    hook.write_text(guestfiles.INITRAMFS_FILES["etc/initramfs-tools/hooks/imageforge-disk-drivers"])
    prereqs = subprocess.run(["sh", hook, "prereqs"], capture_output=True, text=True, check=True)
    assert prereqs.stdout.split() == ["udev"]
    destdir = tmp_path / "initramfs"
    (destdir / "usr/lib/udev").mkdir(parents=True)
    (destdir / "usr/lib/udev/hwdb.bin").write_bytes(b"hwdb")
    functions = tmp_path / "hook-functions"
    functions.write_text('manual_add_modules() { echo "$1" >> "$DESTDIR/modules"; }\n')
    text = hook.read_text().replace("/usr/share/initramfs-tools/hook-functions", str(functions))
    hook.write_text(text)
    subprocess.run(["sh", hook], env={"DESTDIR": str(destdir), "PATH": "/usr/bin:/bin"}, check=True)
    assert not (destdir / "usr/lib/udev/hwdb.bin").exists()
    assert (destdir / "modules").read_text().split() == list(guestfiles.INITRAMFS_DRIVERS)


def test_masked_generators_spare_the_ones_a_vm_needs() -> None:
    needed = {"systemd-fstab-generator", "systemd-getty-generator", "cloud-init-generator"}
    assert needed.isdisjoint(guestfiles.MASKED_GENERATORS)
    assert "systemd-ssh-generator" in guestfiles.MASKED_GENERATORS
