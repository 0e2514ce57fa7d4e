"""The real packer binary validates every cell of the shipped matrix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from imageforge import config, packer
from imageforge.config import matrix
from imageforge.packer import hcl

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("provisioners", "packer", "templates", "vagrant", "tests/infra", "tasks.py")
# Everything HCL or Packer might interpret, in text images.yml accepts ('{{' it refuses).
HOSTILE = 'it\'s "q" \\ ${x} %{ if true }y%{ endif } $${z} %%{w} }} `id` $HOME ü 🙂'

pytestmark = pytest.mark.integration


def test_invoke_validate_passes_for_all_cells() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "validate"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    count = len(matrix.cells(config.load(ROOT / "images.yml")))
    assert f"all {count} cells valid" in result.stderr


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


def copy_project(dest: Path, images: dict) -> Path:
    for name in PARTS:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name)
        else:
            shutil.copy(src, dest / name)
    (dest / "images.yml").write_text(yaml.safe_dump(images, allow_unicode=True))
    return dest


def test_hostile_text_renders_templates_that_packer_validates(tmp_path: Path) -> None:
    """A tag, description and environment value full of HCL and shell syntax validate on every
    cloud."""
    flavor = {"description": HOSTILE, "tags": {"team": HOSTILE}, "env": {"NOTE": HOSTILE}}
    project = copy_project(tmp_path, {"flavors": {"a": flavor}})
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "validate", "--image", "a"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "all 4 cells valid" in result.stderr


def test_hostile_text_reaches_packer_literally(tmp_path: Path) -> None:
    """What Packer makes of escaped values: a null build (no VM, no cloud) writes the manifest's
    custom_data and a provisioner's environment, and both hold the text exactly."""
    template = f"""
source "null" "n" {{
  communicator = "none"
}}

build {{
  sources = ["source.null.n"]

  provisioner "shell-local" {{
{hcl.attributes({"environment_vars": [f"NOTE={HOSTILE}"], "inline": ["env > env.txt"]}, 4)}
  }}

  post-processor "manifest" {{
    output = "manifest.json"
{hcl.attributes({"custom_data": {"team": HOSTILE, "template": "{{ build_name }}"}}, 4)}
  }}
}}
"""
    (tmp_path / "probe.pkr.hcl").write_text(template)
    result = subprocess.run(
        [packer.binary(), "build", "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "CHECKPOINT_DISABLE": "1", "PACKER_CACHE_DIR": str(tmp_path / "c")},
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    custom = json.loads((tmp_path / "manifest.json").read_text())["builds"][0]["custom_data"]
    assert custom["team"] == HOSTILE
    # Why images.yml refuses '{{': Packer runs its Go templates on such values, escaped or not.
    assert custom["template"] == "n"
    assert f"NOTE={HOSTILE}" in (tmp_path / "env.txt").read_text().splitlines()
