"""The same tree and recipe give the same disk: each test is a difference once found between
two builds of one layer (real sfdisk, mke2fs and debugfs on a small tree)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from imageforge.clouds.local import disk, guestfiles, pyenv, reproducible
from imageforge.clouds.local.reproducible import EPOCH

from .test_disk import fake_tree

DIGEST = "ab" * 32
PINS = reproducible.pins_for(DIGEST)


def tree(root: Path) -> Path:
    """A small tree as a build leaves it: files newer than EPOCH, a link, odd names."""
    fake_tree(root)
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/old").write_text("from a package\n")
    os.utime(root / "usr/lib/old", (EPOCH - 86400, EPOCH - 86400))
    (root / 'etc/a "quoted" name').write_text("x\n")
    (root / "etc/link").symlink_to("hostname")
    return root


def debugfs(raw: Path, request: str) -> str:
    device = f"{raw}?offset={disk.PARTITION_START_MIB * disk.MIB}"
    argv = ["debugfs", "-R", request, device]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def test_pins_come_from_the_recipe_digest() -> None:
    pins = reproducible.pins_for(DIGEST)
    assert pins == reproducible.pins_for(DIGEST)
    other = reproducible.pins_for("cd" * 32)
    assert (other.disk_id, other.fs_uuid, other.hash_seed) != (
        pins.disk_id,
        pins.fs_uuid,
        pins.hash_seed,
    )
    assert pins.fs_uuid != pins.hash_seed
    assert pins.label_id.startswith("0x") and len(pins.label_id) == 10 and pins.disk_id


def test_times_are_clamped_to_the_epoch_links_themselves(tmp_path: Path) -> None:
    root = tree(tmp_path / "tree")
    target_mtime = (root / "etc/hostname").stat().st_mtime
    paths = [path for path, _ in reproducible.walk(root)]
    reproducible.clamp_times(root)
    for path in paths:  # listed before: listing a directory moves its atime
        stat = path.lstat()
        assert stat.st_mtime <= EPOCH and stat.st_atime == stat.st_mtime, path
    assert (root / "usr/lib/old").stat().st_mtime == EPOCH - 86400  # older files keep theirs
    assert target_mtime > EPOCH  # the test's files are new: the link was set, not followed


def test_walk_is_sorted_and_names_paths_inside_the_filesystem(tmp_path: Path) -> None:
    root = tree(tmp_path / "tree")
    inside = [name for _, name in reproducible.walk(root)]
    assert inside[0] == "/" and "/etc/link" in inside and "/usr/lib/old" in inside
    assert inside.index("/boot") < inside.index("/etc") < inside.index("/usr")


def test_inode_time_commands_quote_each_path(tmp_path: Path) -> None:
    commands = reproducible.inode_time_commands(tree(tmp_path / "tree")).splitlines()
    assert f'sif "/etc/a ""quoted"" name" ctime @{EPOCH}' in commands
    assert f'sif "/" atime @{EPOCH}' in commands


def test_filesystem_takes_its_identity_from_the_pins(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    pins = reproducible.pins_for(DIGEST)
    disk.assemble(tree(tmp_path / "tree"), raw, 16, tmp_path / "disk.log", pins=pins)
    header = debugfs(raw, "stats -h")
    assert f"Filesystem UUID:          {pins.fs_uuid}" in header
    assert f"Directory Hash Seed:      {pins.hash_seed}" in header
    assert "Filesystem created:       Wed Jan  1 00:00:00 2025" in header
    assert raw.read_bytes()[440:444] == pins.disk_id.to_bytes(4, "little")  # the MBR signature


def test_every_inode_time_is_the_epoch_or_older(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    root = tree(tmp_path / "tree")
    disk.assemble(root, raw, 16, tmp_path / "disk.log", pins=reproducible.pins_for(DIGEST))
    for path in ("/", "/etc/hostname", "/etc/link", '"/etc/a ""quoted"" name"', "/lost+found"):
        stat = debugfs(raw, f"stat {path}")
        for field in ("ctime", "atime", "mtime", "crtime"):
            line = next(x for x in stat.splitlines() if x.strip().startswith(f"{field}:"))
            seconds = int(line.split("0x")[1].split(":")[0], 16)
            assert seconds <= EPOCH, (path, line)


def test_two_disks_of_the_same_tree_are_equal(tmp_path: Path) -> None:
    root = tree(tmp_path / "tree")
    pins = reproducible.pins_for(DIGEST)
    disk.assemble(root, tmp_path / "a.raw", 16, tmp_path / "disk.log", pins=pins)
    first = int(time.time())
    while int(time.time()) == first:  # the tree's ctimes and the clock move on
        time.sleep(0.05)
    (root / "etc/hostname").read_text()  # a read moves an atime
    disk.assemble(root, tmp_path / "b.raw", 16, tmp_path / "disk.log", pins=pins)
    assert (tmp_path / "a.raw").read_bytes() == (tmp_path / "b.raw").read_bytes()


def test_the_layer_is_converted_in_order(tmp_path: Path, monkeypatch) -> None:
    """qemu-img convert -W (out-of-order writes) gave two qcow2 files of one raw disk."""
    raw = tmp_path / "disk.raw"
    disk.assemble(tree(tmp_path / "tree"), raw, 16, tmp_path / "log", pins=PINS)
    disk.to_qcow2(raw, tmp_path / "a.qcow2", tmp_path / "log")
    disk.to_qcow2(raw, tmp_path / "b.qcow2", tmp_path / "log")
    assert (tmp_path / "a.qcow2").read_bytes() == (tmp_path / "b.qcow2").read_bytes()
    seen: list[list[str]] = []
    monkeypatch.setattr(disk.runner, "run", lambda argv, **_: seen.append(list(map(str, argv))))
    disk.to_qcow2(raw, tmp_path / "c.qcow2", tmp_path / "log")
    disk.to_qcow2(raw, tmp_path / "d.qcow2", tmp_path / "log", compress=True)
    assert "-W" not in seen[0] and "-W" in seen[1]  # shipped disks come from a VM anyway


def test_pip_in_the_tree_writes_hash_checked_byte_code(tmp_path: Path) -> None:
    """.pyc files hold their source's mtime unless SOURCE_DATE_EPOCH reaches the compiler
    through pyenv's clean environment (env -i)."""
    (tmp_path / "m.py").write_text("X = 1\n")
    argv = [*shlex.split(pyenv.CLEAN_ENV), sys.executable, "-m", "py_compile", "m.py"]
    subprocess.run(argv, cwd=tmp_path, check=True)
    (pyc,) = (tmp_path / "__pycache__").glob("m.*.pyc")
    assert pyc.read_bytes()[4:8] == (3).to_bytes(4, "little")  # hash-based, checked


def test_update_stamps_say_the_epoch(tmp_path: Path) -> None:
    (tmp_path / "usr").mkdir()
    (tmp_path / "etc").mkdir()
    (tmp_path / "var").mkdir()
    guestfiles._stamp_updated(tmp_path)
    assert (tmp_path / "usr").stat().st_mtime == EPOCH
    for stamp in guestfiles.UPDATE_STAMPS:
        assert f"TIMESTAMP_NSEC={EPOCH * 1_000_000_000}\n" in (tmp_path / stamp).read_text()
        assert (tmp_path / stamp).stat().st_mtime == EPOCH
