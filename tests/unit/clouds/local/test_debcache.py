"""The shared .deb cache: what mmdebstrap is told, and how downloads are counted."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from imageforge.clouds.local.debcache import DebCache


def test_hooks_link_the_cache_in_and_the_archives_out(tmp_path: Path) -> None:
    cache = DebCache(tmp_path / "debs")
    (tmp_path / "debs").mkdir()
    (tmp_path / "debs" / "a_1_amd64.deb").write_bytes(b"a")
    options = cache.mmdebstrap_options(tmp_path / "outbox")
    assert options[0] == "--skip=essential/unlink"
    setup = next(o for o in options if o.startswith("--setup-hook="))
    customize = next(o for o in options if o.startswith("--customize-hook="))
    tree = tmp_path / "tree"
    tree.mkdir()
    # Run the hooks the way mmdebstrap does: sh -c HOOK exec TREE.
    subprocess.run(["sh", "-c", setup.split("=", 1)[1], "exec", tree], check=True)
    archives = tree / "var/cache/apt/archives"
    linked = archives / "a_1_amd64.deb"
    assert os.path.samestat(linked.stat(), (tmp_path / "debs" / "a_1_amd64.deb").stat())
    (archives / "b_2_amd64.deb").write_bytes(b"b")  # apt downloaded this one
    subprocess.run(["sh", "-c", customize.split("=", 1)[1], "exec", tree], check=True)
    assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == [
        "a_1_amd64.deb",
        "b_2_amd64.deb",
    ]


def test_harvest_counts_only_what_the_cache_did_not_have(tmp_path: Path) -> None:
    cache = DebCache(tmp_path / "debs")
    outbox = tmp_path / "outbox"
    cache.mmdebstrap_options(outbox)
    (tmp_path / "debs" / "same_1_amd64.deb").write_bytes(b"same")
    os.link(tmp_path / "debs" / "same_1_amd64.deb", outbox / "same_1_amd64.deb")
    (tmp_path / "debs" / "changed_1_amd64.deb").write_bytes(b"old")
    (outbox / "changed_1_amd64.deb").write_bytes(b"new, downloaded again")
    (outbox / "new_1_amd64.deb").write_bytes(b"new")
    harvest = cache.harvest(outbox)
    assert (harvest.downloaded, harvest.reused) == (2, 1)
    assert (tmp_path / "debs" / "changed_1_amd64.deb").read_bytes() == b"new, downloaded again"
    assert cache.count() == 3
    assert list(outbox.iterdir()) == []
    again = cache.harvest(outbox)
    assert (again.downloaded, again.reused) == (0, 0)


def test_each_release_has_a_cache_of_its_own(tmp_path, monkeypatch) -> None:
    """Two releases can carry files of the same name that differ: a shared cache would swap
    them at every build of the other release and download them again."""
    from imageforge.clouds.local import recipe

    monkeypatch.setenv("IMAGEFORGE_CACHE_DIR", str(tmp_path / "cache"))
    trixie, bookworm = recipe.deb_cache("trixie"), recipe.deb_cache("bookworm")
    assert trixie.directory == tmp_path / "cache" / "debs" / "trixie"
    assert bookworm.directory != trixie.directory
