"""Two cold builds of one layer, each into an empty cache, give the same disk, bit for bit.

The slow test of the reproducible layer: one flavor (slurm-node, the smallest layer). The builds
share only the .deb files (hard links of the developer's download cache, then of the first
build's), so the same package versions go in and nothing is downloaded twice.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from imageforge.clouds.local import base

from .test_layer import slurm_recipe

pytestmark = pytest.mark.integration


def link_debs(source: Path, cache: Path, suite: str) -> None:
    """cache starts with source's .deb files and nothing else: no base image, no layer."""
    target = cache / "debs" / suite
    target.mkdir(parents=True)
    for deb in sorted((source / "debs" / suite).glob("*.deb")):
        try:
            os.link(deb, target / deb.name)
        except OSError:  # another filesystem
            shutil.copy2(deb, target / deb.name)


def cold_build(cache: Path, monkeypatch: pytest.MonkeyPatch) -> base.BaseImage:
    monkeypatch.setenv("IMAGEFORGE_CACHE_DIR", str(cache))
    assert not (cache / "layers").exists()
    return base.ensure_base(slurm_recipe())


def test_two_cold_builds_give_the_same_layer(
    base_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = slurm_recipe()
    link_debs(base_cache, tmp_path / "first", recipe.suite)
    first = cold_build(tmp_path / "first", monkeypatch)
    link_debs(tmp_path / "first", tmp_path / "second", recipe.suite)
    second = cold_build(tmp_path / "second", monkeypatch)
    assert first.built and second.built and second.downloaded == 0
    assert first.recipe_hash == second.recipe_hash and first.packages == second.packages
    assert first.path.read_bytes() == second.path.read_bytes()
    # What a build record keeps (base_image.sha256), and the provenance names.
    assert first.record()["sha256"] == second.record()["sha256"] == first.sha256
    print(f"layer {first.recipe_hash[:12]} sha256 {first.sha256}")
