"""The real packer binary validates every cell of the shipped matrix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def test_invoke_validate_passes_for_all_cells() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "validate"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "all 12 cells valid" in result.stderr


def test_validate_fails_when_packer_rejects_the_template(tmp_path: Path) -> None:
    """The check can fail: a template packer rejects makes `invoke validate` exit non-zero."""
    for name in ("provisioners", "packer", "vagrant", "tests", "tasks.py", "images.yml"):
        src = ROOT / name
        if src.is_dir():
            subprocess.run(["cp", "-r", str(src), str(tmp_path / name)], check=True)
        else:
            (tmp_path / name).write_text(src.read_text())
    subprocess.run(["cp", "-r", str(ROOT / "templates"), str(tmp_path / "templates")], check=True)
    local = tmp_path / "templates" / "sources" / "local.pkr.hcl.j2"
    local.write_text(
        local.read_text().replace('disk_interface   = "virtio"', 'disk_interface   = "floppy"')
    )
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "validate", "--image", "slurm-node", "--cloud", "local"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "packer validate slurm-node-local failed" in result.stderr
    assert "unrecognized disk interface type" in result.stderr
