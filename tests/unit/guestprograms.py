"""Load the images' first-boot programs (provisioners/*/*.py) on the host, with their shared
library (provisioners/common/06-firstboot.py) importable as it is in an image, and the
user-data schema imageforge would write into the image."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from imageforge.config import userdata

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "provisioners" / "common" / "06-firstboot.py"


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The library, as `imageforge_firstboot`, with its schema and motd in tmp_path."""
    module = load(LIBRARY, "imageforge_firstboot")
    monkeypatch.setitem(sys.modules, "imageforge_firstboot", module)
    schema = tmp_path / "user-data.schema.json"
    schema.write_text(json.dumps(userdata.schema()))
    monkeypatch.setattr(module, "SCHEMA", schema)
    monkeypatch.setattr(module, "MOTD_DIR", tmp_path / "motd.d")
    consoled: list[str] = []
    monkeypatch.setattr(module, "to_console", consoled.append)
    module.consoled = consoled  # type: ignore[attr-defined]
    return module


def program(relative: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A flavor's first-boot program, importing the library above."""
    firstboot = library(tmp_path, monkeypatch)
    module = load(ROOT / relative, Path(relative).stem.replace("-", "_"))
    assert module.firstboot is firstboot
    return module


def cloud_config(blocks: dict) -> bytes:
    import yaml

    return ("#cloud-config\n" + yaml.safe_dump(blocks)).encode()
