"""Fixtures for unit tests: a scratch project with the files images.yml refers to."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def scratch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """An empty project directory (cwd) with the provisioner tree and templates of the repo,
    and a cache directory of its own (the step cache, layers) outside it."""
    monkeypatch.setenv("IMAGEFORGE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    for name in ("provisioners", "templates", "packer", "vagrant", "tests/infra"):
        shutil.copytree(ROOT / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(project: Path, text: str) -> Path:
    path = project / "images.yml"
    path.write_text(text)
    return path
