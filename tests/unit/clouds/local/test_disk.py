"""GRUB on a disk without booting it: where boot.img and core.img go, and the menu."""

from __future__ import annotations

from pathlib import Path

import pytest

from imageforge.clouds.local import disk, reproducible
from imageforge.errors import ImageforgeError

PINS = reproducible.pins_for("0" * 64)


def fake_tree(root: Path, core_size: int = 3000) -> Path:
    grub = root / "boot/grub/i386-pc"
    grub.mkdir(parents=True)
    boot = bytearray(range(256)) * 2
    (grub / "boot.img").write_bytes(bytes(boot))
    (grub / "core.img").write_bytes(b"\xc0" * core_size)
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("test\n")
    return root


def test_boot_code_goes_into_the_mbr_and_core_behind_it(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path / "tree")
    raw = tmp_path / "disk.raw"
    disk.assemble(tree, raw, 16, tmp_path / "disk.log", pins=PINS)
    data = raw.read_bytes()
    boot = (tree / "boot/grub/i386-pc/boot.img").read_bytes()
    mbr = data[: disk.SECTOR]
    # GRUB's code, except the BPB (kept from the disk: zeros) and the drive check (NOPs).
    assert mbr[: disk.BPB_START] == boot[: disk.BPB_START]
    assert mbr[disk.BPB_START : disk.BPB_END] == bytes(disk.BPB_END - disk.BPB_START)
    assert mbr[disk.DRIVE_CHECK : disk.DRIVE_CHECK + 2] == b"\x90\x90"
    assert mbr[disk.DRIVE_CHECK + 2 : disk.MBR_CODE_END] == boot[disk.DRIVE_CHECK + 2 : 440]
    # The partition table sfdisk wrote is intact: bootable Linux partition at 1 MiB.
    assert mbr[510:512] == b"\x55\xaa"
    entry = mbr[446:462]
    assert entry[0] == 0x80 and entry[4] == 0x83
    assert int.from_bytes(entry[8:12], "little") == disk.MIB // disk.SECTOR
    core = data[disk.SECTOR : disk.SECTOR + 3000]
    assert core == b"\xc0" * 3000
    # The filesystem starts at the partition, untouched by the boot code.
    assert data[disk.MIB + 1080 : disk.MIB + 1082] == b"\x53\xef"  # ext4 magic


def test_a_core_image_too_big_for_the_gap_is_refused(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path / "tree", core_size=disk.MIB)
    with pytest.raises(ImageforgeError, match="does not fit"):
        disk.assemble(tree, tmp_path / "disk.raw", 16, tmp_path / "disk.log", pins=PINS)


def test_menu_boots_the_kernel_by_label_with_no_wait() -> None:
    text = disk.grub_cfg("boot/vmlinuz-6", "boot/initrd.img-6", "quiet")
    assert "set timeout=0" in text
    assert (
        "linux /boot/vmlinuz-6 root=LABEL=rootfs ro console=tty0 console=ttyS0,115200 quiet" in text
    )
    assert "initrd /boot/initrd.img-6" in text
