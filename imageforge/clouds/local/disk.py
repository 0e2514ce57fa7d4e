"""A bootable disk image from a root tree, with no loop devices, no mounts and no boot.

sfdisk partitions a plain file; mke2fs -d writes the ext4 partition straight from the tree;
GRUB goes on the disk the way grub-install would put it there for a BIOS boot: the tree's own
grub-mkimage makes core.img (its prefix names the partition, so it needs no search), boot.img
goes into the MBR's code area and core.img into the gap before the partition, and the modules
and a grub.cfg go into /boot/grub. `update-grub` in a running system replaces that grub.cfg.
The same tree and pins give the same disk, byte for byte (reproducible.py).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from imageforge.clouds.local import reproducible
from imageforge.clouds.local.reproducible import Pins
from imageforge.errors import ImageforgeError
from imageforge.process import runner

MIB = 1024 * 1024
SECTOR = 512
PARTITION_START_MIB = 1
ROOT_LABEL = "rootfs"
GRUB_PREFIX = "(hd0,msdos1)/boot/grub"
GRUB_CORE_MODULES = ("biosdisk", "part_msdos", "ext2")
KERNEL_CONSOLE = "console=tty0 console=ttyS0,115200"
# GRUB's boot.img: the MBR code area ends where the disk signature and partition table start.
MBR_CODE_END = 440
BPB_START, BPB_END = 0x03, 0x5A  # kept from the existing sector, as grub-bios-setup does
DRIVE_CHECK = 0x66  # a jump that grub-bios-setup replaces with two NOPs on hard disks


def grub_cfg(kernel: str, initrd: str, append: str) -> str:
    """The boot menu: one entry, no wait, console on the screen and the first serial port."""
    return f"""\
# imageforge: written when the image was built; update-grub in a running system replaces it.
set default=0
set timeout=0
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
insmod part_msdos
insmod ext2
menuentry 'Debian GNU/Linux' {{
    linux /{kernel} root=LABEL={ROOT_LABEL} ro {KERNEL_CONSOLE} {append}
    initrd /{initrd}
}}
"""


def install_grub_files(rootfs: Path, append: str) -> Path:
    """Put GRUB's modules, core.img and grub.cfg into rootfs/boot/grub; return core.img's path."""
    modules = rootfs / "usr/lib/grub/i386-pc"
    if not (modules / "boot.img").is_file():
        raise ImageforgeError(f"GRUB for BIOS is not installed in the tree ({modules})")
    kernels = sorted(p.name for p in (rootfs / "boot").glob("vmlinuz-*"))
    initrds = sorted(p.name for p in (rootfs / "boot").glob("initrd.img-*"))
    if len(kernels) != 1 or len(initrds) != 1:
        raise ImageforgeError(f"expected one kernel and initrd in /boot, found {kernels} {initrds}")
    target = rootfs / "boot/grub/i386-pc"
    target.mkdir(parents=True, exist_ok=True)
    for pattern in ("*.mod", "*.lst", "boot.img"):
        for path in modules.glob(pattern):
            shutil.copyfile(path, target / path.name)
    runner.run(
        [
            "chroot",
            rootfs,
            "grub-mkimage",
            "--format=i386-pc",
            "--directory=/usr/lib/grub/i386-pc",
            f"--prefix={GRUB_PREFIX}",
            "--output=/boot/grub/i386-pc/core.img",
            *GRUB_CORE_MODULES,
        ],
        stream=False,
        what="grub-mkimage",
    )
    (rootfs / "boot/grub/grub.cfg").write_text(
        grub_cfg(f"boot/{kernels[0]}", f"boot/{initrds[0]}", append)
    )
    return target / "core.img"


def assemble(rootfs: Path, raw: Path, size_mib: int, logfile: Path, *, pins: Pins) -> None:
    """A raw disk: an MBR with one bootable partition at 1 MiB holding ext4 made from rootfs,
    and GRUB's boot code in the MBR and the gap before the partition. Its identifiers are the
    pins and its times reproducible.EPOCH, so the same tree gives the same bytes."""
    core = (rootfs / "boot/grub/i386-pc/core.img").read_bytes()
    boot = (rootfs / "boot/grub/i386-pc/boot.img").read_bytes()
    gap = PARTITION_START_MIB * MIB - SECTOR
    if len(core) > gap:
        raise ImageforgeError(f"GRUB's core.img ({len(core)} bytes) does not fit before {gap}")
    with raw.open("wb") as handle:
        handle.truncate(size_mib * MIB)
    start = PARTITION_START_MIB * MIB
    runner.run(
        ["sfdisk", "--no-reread", "--no-tell-kernel", raw],
        stdin=f"label: dos\nlabel-id: {pins.label_id}\n"
        f"start={start // SECTOR}, type=83, bootable\n",
        logfile=logfile,
        stream=False,
        what="sfdisk",
    )
    reproducible.clamp_times(rootfs)
    size_kib = (size_mib - PARTITION_START_MIB) * 1024
    runner.run(
        [
            "mke2fs",
            "-F",
            "-q",
            "-t",
            "ext4",
            "-L",
            ROOT_LABEL,
            "-U",
            pins.fs_uuid,
            "-d",
            rootfs,
            "-E",
            f"offset={start},hash_seed={pins.hash_seed}",
            raw,
            f"{size_kib}k",
        ],
        env=reproducible.ENVIRONMENT,
        logfile=logfile,
        stream=False,
        what="mke2fs -d",
    )
    _set_inode_times(rootfs, raw, start)
    with raw.open("r+b") as handle:
        mbr = bytearray(handle.read(SECTOR))
        code = bytearray(boot[:MBR_CODE_END])
        code[BPB_START:BPB_END] = mbr[BPB_START:BPB_END]
        code[DRIVE_CHECK : DRIVE_CHECK + 2] = b"\x90\x90"
        mbr[:MBR_CODE_END] = code
        handle.seek(0)
        handle.write(mbr)
        handle.seek(SECTOR)
        handle.write(core)


def _set_inode_times(rootfs: Path, raw: Path, offset: int) -> None:
    """The times mke2fs took from the build host (see reproducible.inode_time_commands).

    The commands go through a file: debugfs echoes each one, and would fill a pipe's buffer
    while its standard input is still being written."""
    with tempfile.NamedTemporaryFile("w", dir=raw.parent, suffix=".debugfs") as commands:
        commands.write(reproducible.inode_time_commands(rootfs))
        commands.flush()
        result = runner.run(
            ["debugfs", "-w", "-f", commands.name, f"{raw}?offset={offset}"],
            env=reproducible.ENVIRONMENT,
            stream=False,
            what="debugfs: set inode times",
        )
    # Each command echoed starts with "debugfs"; debugfs goes on after one that fails.
    errors = [line for line in result.output.splitlines() if not line.startswith("debugfs")]
    if errors:
        raise ImageforgeError(f"debugfs could not set inode times: {errors[0]}")


def tree_size_mib(rootfs: Path) -> int:
    """The space the tree's files take, in MiB (du), for sizing the filesystem."""
    out = runner.output(["du", "-s", "-x", "--block-size=1M", rootfs])
    return int(out.split()[0])


def to_qcow2(raw: Path, image: Path, logfile: Path, *, compress: bool = False) -> None:
    """Convert raw to qcow2, sparse; compressed only for artifacts that are shipped.

    Only those get -W (out-of-order writes, about a tenth faster compressed on two cores):
    it lays clusters out in the order they finish, so two conversions of one disk differ. A
    layer is written in order, to be reproducible; shipped disks come from a VM's build."""
    argv = ["qemu-img", "convert", "-m", "4", "-O", "qcow2"]
    runner.run(
        [*argv, *(["-W", "-c"] if compress else []), raw, image],
        logfile=logfile,
        stream=False,
        what="qemu-img convert",
    )
