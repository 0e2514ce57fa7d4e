"""Disk copies through QEMU's monitor, in a real QEMU (stopped before its firmware: the disk is
written through the monitor's qemu-io, as a guest would)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from qemu.qmp.legacy import QEMUMonitorProtocol

from imageforge.process import qcow2, qmp


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """QEMU on an overlay of a 64 MiB layer whose first 4 MiB hold 0x11; (layer, disk, socket)."""
    layer = tmp_path / "layer.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", layer, "64M"], check=True)
    write = ["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 4M", layer]
    subprocess.run(write, check=True, stdout=subprocess.DEVNULL)
    # Packer grows the build VM's overlay to disk_size: larger than the layer.
    disk = qcow2.overlay(layer, tmp_path / "disk.qcow2", size=128 * 2**20)
    socket = tmp_path / "qmp.sock"
    argv = ["qemu-system-x86_64", "-S", "-nodefaults", "-display", "none"]
    argv += ["-drive", f"file={disk},if=virtio,format=qcow2"]
    argv += ["-qmp", f"unix:{socket},server=on,wait=off"]
    process = subprocess.Popen(argv)
    try:
        deadline = time.monotonic() + 30
        while not socket.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        yield layer, disk, socket
    finally:
        process.terminate()
        process.wait(timeout=30)


def guest_writes(socket: Path, pattern: int, offset_mib: int) -> None:
    monitor = QEMUMonitorProtocol(str(socket))
    monitor.connect()
    line = f'qemu-io virtio0 "write -P {pattern:#x} {offset_mib}M 1M"'
    monitor.cmd("human-monitor-command", **{"command-line": line})
    monitor.close()


def holds(image: Path, pattern: int, offset_mib: int) -> bool:
    read = ["qemu-io", "-r", "-f", "qcow2", "-c", f"read -P {pattern:#x} {offset_mib}M 1M", image]
    return (
        "Pattern verification failed"
        not in subprocess.run(read, capture_output=True, text=True, check=True).stdout
    )


def data_extents(image: Path) -> list[tuple[int, int]]:
    """The (offset, length) in MiB of what the image file itself holds."""
    out = subprocess.run(
        ["qemu-img", "map", "--output=json", image], capture_output=True, text=True, check=True
    ).stdout
    return [
        (e["start"] >> 20, e["length"] >> 20)
        for e in json.loads(out)
        if e["depth"] == 0 and e["data"]
    ]


def test_each_copy_holds_the_disk_at_its_point_and_only_what_changed(vm, tmp_path: Path) -> None:
    layer, disk, socket = vm
    guest_writes(socket, 0x22, 1)
    size = qcow2.virtual_size(disk)
    assert size == 128 * 2**20
    first = qcow2.overlay(layer, tmp_path / "step1.qcow2", size=size)
    qmp.backup(socket, disk, first, first=True)
    guest_writes(socket, 0x33, 2)
    second = qcow2.overlay(first, tmp_path / "step2.qcow2", size=size)
    qmp.backup(socket, disk, second, first=False)
    guest_writes(socket, 0x44, 3)  # after the last copy: in neither
    assert holds(first, 0x22, 1) and holds(first, 0x11, 2) and holds(first, 0x11, 3)
    assert holds(second, 0x22, 1) and holds(second, 0x33, 2) and holds(second, 0x11, 3)
    # Each file holds only its own step's change; the rest comes through the chain.
    assert [e for e in data_extents(first) if e[1]] == [(1, 1)]
    assert [e for e in data_extents(second) if e[1]] == [(2, 1)]


def test_a_disk_the_vm_does_not_have_is_a_clear_error(vm, tmp_path: Path) -> None:
    layer, _, socket = vm
    target = qcow2.overlay(layer, tmp_path / "t.qcow2")
    with pytest.raises(qmp.BackupFailed, match="no drive of the VM"):
        qmp.backup(socket, tmp_path / "other.qcow2", target, first=True)


def test_no_monitor_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(qmp.BackupFailed, match="monitor"):
        qmp.backup(tmp_path / "none.sock", tmp_path / "d", tmp_path / "t", first=True)
