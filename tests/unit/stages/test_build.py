"""What makes a build reusable, and how a failed provisioner is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from imageforge import clouds, config
from imageforge.config import matrix
from imageforge.errors import CommandError
from imageforge.packer import PackerVersion
from imageforge.records import state
from imageforge.stages import build, render

from ..conftest import write

V = PackerVersion(1, 6, 6)


def content_hash(project_dir: Path, base_id: str = "base-1") -> str:
    project = config.load(project_dir / "images.yml")
    cell = matrix.find(project, "a", "local")
    rendered = render.render(project, cell, V, project_dir / "out")
    return build.content_hash(project, cell, rendered, base_id)


def test_content_hash_is_stable_and_tracks_every_input(scratch: Path) -> None:
    write(scratch, "flavors:\n  a:\n    provisioners: [provisioners/slurm-node/20-slurm.py]\n")
    first = content_hash(scratch)
    assert content_hash(scratch) == first
    assert content_hash(scratch, base_id="base-2") != first
    script = scratch / "provisioners" / "slurm-node" / "20-slurm.py"
    script.write_text(script.read_text() + "# changed\n")
    changed_script = content_hash(scratch)
    assert changed_script != first
    for builtin in render.BUILTIN_SCRIPTS:  # what render adds to every build counts too
        path = scratch / builtin
        text = path.read_text()
        path.write_text(text + "# changed\n")
        assert content_hash(scratch) != changed_script, builtin
        path.write_text(text)
    assert content_hash(scratch) == changed_script
    write(
        scratch,
        "flavors:\n  a:\n    env: {X: '1'}\n    provisioners: [provisioners/slurm-node/20-slurm.py]\n",
    )
    assert content_hash(scratch) not in (first, changed_script)
    write(
        scratch,
        "clouds:\n  local: {memory_mb: 4096}\nflavors:\n  a:\n    provisioners: [provisioners/slurm-node/20-slurm.py]\n",
    )
    assert content_hash(scratch) not in (first, changed_script)


def test_failed_provisioner_is_named_with_its_output() -> None:
    tracker = build._ProvisionerTracker()
    for line in [
        "==> slurm-node.qemu.x: Provisioning with shell script: provisioners/common/10-base.sh",
        "    slurm-node.qemu.x: ok",
        "==> slurm-node.qemu.x: Provisioning with shell script: provisioners/x/20-y.sh",
        "    slurm-node.qemu.x: E: Unable to locate package nope",
        "==> slurm-node.qemu.x: Script exited with non-zero exit status: 100.Allowed exit codes are: [0]",
    ]:
        tracker.feed(line)
    message = tracker.explain(CommandError(["packer"], 1, []), Path("/nonexistent/serial.log"))
    assert message.startswith("provisioner provisioners/x/20-y.sh failed with exit code 100;")
    assert "Unable to locate package nope" in message
    assert "10-base.sh" not in message


def test_a_build_vm_that_never_answers_ssh_is_explained_by_its_console(tmp_path: Path) -> None:
    serial = tmp_path / "serial.log"
    serial.write_text(
        "early line\n"
        + "".join(f"line {n}\n" for n in range(30))
        + "Oops: int3: 0000 [#1] SMP\nimageforge-secret: munge=abc\n"
        + "Kernel panic - not syncing: Fatal exception in interrupt\x1b[0m\n"
    )
    tracker = build._ProvisionerTracker()
    tracker.feed("==> x: Waiting for SSH to become available...")
    tracker.feed("==> x: Timeout waiting for SSH.")
    message = tracker.explain(CommandError(["packer"], 1, []), serial)
    assert f"last lines of {serial}:" in message
    assert "Kernel panic - not syncing: Fatal exception in interrupt\n" in message + "\n"
    assert "Oops: int3" in message and "munge=[redacted]" in message
    assert "abc" not in message and "\x1b" not in message and "early line" not in message
    connected = build._ProvisionerTracker()
    connected.feed("==> x: Waiting for SSH to become available...")
    connected.feed("==> x: Connected to SSH!")
    assert "last lines" not in connected.explain(CommandError(["packer"], 1, []), serial)


def test_refresh_rebuilds_the_layer_and_a_new_layer_is_a_new_build(
    scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--refresh reaches the layer; a refreshed layer (new sha256, same recipe) is not reused."""
    write(scratch, "flavors:\n  a:\n    packages: [munge]\n")
    project = config.load(scratch / "images.yml")
    cell = matrix.find(project, "a", "local")
    refreshes: list[bool] = []

    def layer(project, cell, *, refresh=False):
        refreshes.append(refresh)
        sha = "sha-after-refresh" if refresh else "sha-before"
        return {"path": "/layer.qcow2", "sha256": sha, "recipe_hash": "same", "packages": {}}

    hashes: list[str] = []
    reused = state.BuildRecord(id="20260101-000000-abcdef0-000000", flavor="a", cloud="local")
    monkeypatch.setattr(clouds.get("local"), "base_image", layer)
    monkeypatch.setattr(
        state, "reusable", lambda root, flavor, cloud, chash: hashes.append(chash) or reused
    )
    assert build.build(project, cell, verify=False, packer_version="1.6.6") is reused
    assert build.build(project, cell, refresh=True, verify=False, packer_version="1.6.6") is reused
    assert refreshes == [False, True]
    assert hashes[0] != hashes[1]
