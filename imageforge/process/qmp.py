"""Point-in-time copies of a running VM's disk over QMP, with QEMU's own backup jobs.

The first copy of a VM's disk takes the clusters of its top image (the overlay a build writes
to) and starts a dirty bitmap at the same instant; each later copy takes only what the bitmap
saw change since the one before (an incremental backup). Each copy is written into a qcow2
overlay whose backing file is the previous copy, so the chain of copies holds the disk as it
was at each point, and each file only what changed since the one before it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError
from qemu.qmp.legacy import QEMUMonitorProtocol

from imageforge.errors import ImageforgeError

BITMAP = "imageforge-steps"
JOB_SECONDS = 1800.0
CONNECT_SECONDS = 30.0


class BackupFailed(ImageforgeError):
    """QEMU could not copy the disk."""


def disk_device(monitor: QEMUMonitorProtocol, image: Path) -> str:
    """The block device whose top image is image (Packer names its drive, not us)."""
    wanted = image.resolve()
    devices: Any = monitor.cmd("query-block")
    for device in devices:
        inserted = device.get("inserted") or {}
        if inserted.get("file") and Path(inserted["file"]).resolve() == wanted:
            return str(device["device"])
    raise BackupFailed(f"no drive of the VM has {image} as its image")


def backup(socket_path: Path, image: Path, target: Path, *, first: bool) -> None:
    """Copy the VM's disk (whose top image is image) as it is now into target, an existing
    qcow2 overlay of the previous copy (first: of image's own backing file), and wait for it."""
    monitor = QEMUMonitorProtocol(str(socket_path))
    deadline = time.monotonic() + CONNECT_SECONDS
    while True:
        try:
            monitor.connect(negotiate=True)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise BackupFailed(f"QEMU's monitor at {socket_path} does not answer") from None
            time.sleep(0.5)
    try:
        device = disk_device(monitor, image)
        job = f"imageforge-{target.stem}"[:60]
        common: dict[str, Any] = {"device": device, "target": str(target), "mode": "existing"}
        common |= {"format": "qcow2", "job-id": job, "auto-dismiss": False}
        if first:  # the top image's clusters, and from this instant on, a bitmap of changes
            actions = [
                {"type": "block-dirty-bitmap-add", "data": {"node": device, "name": BITMAP}},
                {"type": "drive-backup", "data": {**common, "sync": "top"}},
            ]
        else:
            sync = {"sync": "incremental", "bitmap": BITMAP}
            actions = [{"type": "drive-backup", "data": {**common, **sync}}]
        monitor.cmd("transaction", actions=actions)
        _wait(monitor, job)
    except ExecuteError as exc:
        raise BackupFailed(f"QEMU refused the disk copy: {exc}") from None
    finally:
        monitor.close()


def _wait(monitor: QEMUMonitorProtocol, job: str) -> None:
    """Until the job has concluded; then dismiss it, failing with QEMU's own reason."""
    deadline = time.monotonic() + JOB_SECONDS
    while time.monotonic() < deadline:
        jobs: Any = monitor.cmd("query-jobs")
        mine = [j for j in jobs if j["id"] == job]
        if not mine:
            raise BackupFailed(f"the disk copy {job} vanished")
        if mine[0]["status"] == "concluded":
            monitor.cmd("job-dismiss", id=job)
            if mine[0].get("error"):
                raise BackupFailed(f"the disk copy failed: {mine[0]['error']}")
            return
        time.sleep(0.2)
    monitor.cmd("job-cancel", id=job)
    raise BackupFailed(f"the disk copy {job} took over {JOB_SECONDS:.0f}s")
