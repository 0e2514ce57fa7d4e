"""Fixtures for unit tests: a scratch project with the files images.yml refers to."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project directory (cwd) with the provisioner tree and templates of the repo."""
    for name in ("provisioners", "templates", "packer", "vagrant", "tests/infra"):
        shutil.copytree(ROOT / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(project: Path, text: str) -> Path:
    path = project / "images.yml"
    path.write_text(text)
    return path
