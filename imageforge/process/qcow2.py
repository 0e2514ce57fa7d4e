"""qcow2 images: copy-on-write overlays and their sizes (qemu-img)."""

from __future__ import annotations

import json
from pathlib import Path

from imageforge.process import runner
from imageforge.process.qemu import QEMU_IMG


def overlay(base: Path, path: Path, size: int | None = None) -> Path:
    """Create a qcow2 copy-on-write overlay at path on top of the qcow2 image base (with
    size: that many bytes, else base's size)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    argv: list[str | Path] = [
        QEMU_IMG,
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        base.resolve(),
        path,
    ]
    runner.run(
        [*argv, *([str(size)] if size is not None else [])],
        stream=False,
        what="creating a qcow2 overlay",
    )
    return path


def virtual_size(image: Path) -> int:
    """The disk size (bytes) of a qcow2 image, even one a running VM holds."""
    info = runner.output([QEMU_IMG, "info", "-U", "--output=json", image])
    return int(json.loads(info)["virtual-size"])
