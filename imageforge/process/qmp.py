"""Point-in-time copies of a running VM's disk over QMP, with QEMU's own backup jobs.

The first copy of a VM's disk takes the clusters of its top image (the overlay a build writes
to) and starts a dirty bitmap at the same instant; each later copy takes only what the bitmap
saw change since the one before (an incremental backup). Each copy is written into a qcow2
overlay whose backing file is the previous copy, so the chain of copies holds the disk as it
was at each point, and each file only what changed since the one before it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient, QMPError

from imageforge.errors import ImageforgeError

BITMAP = "imageforge-steps"
JOB_SECONDS = 1800.0
CONNECT_SECONDS = 30.0


class BackupFailed(ImageforgeError):
    """QEMU could not copy the disk."""


def backup(socket_path: Path, image: Path, target: Path, *, first: bool) -> None:
    """Copy the VM's disk (whose top image is image) as it is now into target, an existing
    qcow2 overlay of the previous copy (first: of image's own backing file), and wait for it."""
    try:
        asyncio.run(_backup(socket_path, image, target, first))
    except (TimeoutError, QMPError, OSError) as exc:
        raise BackupFailed(
            f"QEMU's monitor at {socket_path}: {exc or type(exc).__name__}"
        ) from None


async def _backup(socket_path: Path, image: Path, target: Path, first: bool) -> None:
    monitor = QMPClient("imageforge-steps")
    await asyncio.wait_for(monitor.connect(str(socket_path)), CONNECT_SECONDS)
    try:
        device = _device(await monitor.execute("query-block"), image)
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
        await monitor.execute("transaction", {"actions": actions})
        await _wait(monitor, job)
    finally:
        await monitor.disconnect()


def _device(devices: Any, image: Path) -> str:
    """The block device whose top image is image (Packer names its drive, not us)."""
    wanted = image.resolve()
    for device in devices:
        inserted = device.get("inserted") or {}
        if inserted.get("file") and Path(inserted["file"]).resolve() == wanted:
            return str(device["device"])
    raise BackupFailed(f"no drive of the VM has {image} as its image")


async def _wait(monitor: QMPClient, job: str) -> None:
    """Until the job has concluded; then dismiss it, failing with QEMU's own reason."""
    deadline = time.monotonic() + JOB_SECONDS
    while time.monotonic() < deadline:
        jobs: Any = await monitor.execute("query-jobs")
        mine = [j for j in jobs if j["id"] == job]
        if not mine:
            raise BackupFailed(f"the disk copy {job} vanished")
        if mine[0]["status"] == "concluded":
            await monitor.execute("job-dismiss", {"id": job})
            if mine[0].get("error"):
                raise BackupFailed(f"the disk copy failed: {mine[0]['error']}")
            return
        await asyncio.sleep(0.2)
    await monitor.execute("job-cancel", {"id": job})
    raise BackupFailed(f"the disk copy {job} took over {JOB_SECONDS:.0f}s")
