"""The host's apt sources: one-line and deb822 files, read the way apt reads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from imageforge.clouds.local import aptsources
from imageforge.errors import ImageforgeError


def apt_dir(tmp_path: Path, one_line: str = "", **sources: str) -> Path:
    (tmp_path / "sources.list.d").mkdir()
    if one_line:
        (tmp_path / "sources.list").write_text(one_line)
    for name, text in sources.items():
        (tmp_path / "sources.list.d" / f"{name}.sources").write_text(text)
    return tmp_path


def test_both_formats_in_order(tmp_path: Path) -> None:
    root = apt_dir(
        tmp_path,
        "# comment\ndeb [arch=amd64] http://a.invalid/debian bookworm main contrib\n"
        "deb http://a.invalid/debian bullseye main\ndeb-src http://a.invalid/debian bookworm main\n",
        debian="Types: deb deb-src\nURIs: http://b.invalid/debian-security\n"
        "Suites: bookworm-security\nComponents: main\nSigned-By: /k.gpg\n\n"
        "Types: deb\nURIs: http://c.invalid/x\nSuites: bookworm\nComponents: main\nEnabled: no\n",
    )
    assert aptsources.host_sources("bookworm", root) == (
        "deb [arch=amd64] http://a.invalid/debian bookworm main contrib",
        "deb [signed-by=/k.gpg] http://b.invalid/debian-security bookworm-security main",
    )


def test_deb822_details(tmp_path: Path) -> None:
    root = apt_dir(
        tmp_path,
        mirrors="# a comment before the paragraph\n"
        "types: deb\nuris: http://a.invalid/d http://b.invalid/d\n"
        "Suites: bookworm\n bookworm-updates\n# a comment inside it\n"
        "Components: main non-free-firmware\nArchitectures: amd64 arm64\n"
        "Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n mQINBGPL\n"
        " -----END PGP PUBLIC KEY BLOCK-----\n",
    )
    assert aptsources.host_sources("bookworm", root) == (
        "deb [arch=amd64,arm64] http://a.invalid/d bookworm main non-free-firmware",
        "deb [arch=amd64,arm64] http://a.invalid/d bookworm-updates main non-free-firmware",
        "deb [arch=amd64,arm64] http://b.invalid/d bookworm main non-free-firmware",
        "deb [arch=amd64,arm64] http://b.invalid/d bookworm-updates main non-free-firmware",
    )


def test_suites_match_by_prefix_only(tmp_path: Path) -> None:
    root = apt_dir(
        tmp_path,
        "deb http://a.invalid/d bookworm/updates main\ndeb http://a.invalid/d bookwormish main\n"
        "deb http://a.invalid/d bookworm main\ndeb http://a.invalid/d bookworm main\n",
    )
    assert aptsources.host_sources("bookworm", root) == (
        "deb http://a.invalid/d bookworm/updates main",
        "deb http://a.invalid/d bookworm main",
    )


def test_another_release_is_the_hosts_own_sources_renamed(tmp_path: Path) -> None:
    root = apt_dir(
        tmp_path,
        "deb [signed-by=/k.gpg] http://a.invalid/d bookworm main\n"
        "deb http://a.invalid/d bookworm-updates main\n"
        "deb http://b.invalid/s bookworm/updates main\n"
        "deb http://c.invalid/old bullseye main\n"
        "deb http://d.invalid/x stable main\n",
    )
    assert aptsources.host_sources("trixie", root) == (
        "deb [signed-by=/k.gpg] http://a.invalid/d trixie main",
        "deb http://a.invalid/d trixie-updates main",
        "deb http://b.invalid/s trixie-security main",
    )


def test_no_entry_for_the_suite_is_an_error(tmp_path: Path) -> None:
    root = apt_dir(tmp_path, "deb http://a.invalid/d stable main\n")
    with pytest.raises(ImageforgeError, match=r"have no 'deb' entry for bookworm") as caught:
        aptsources.host_sources("bookworm", root)
    assert caught.value.hint and "BaseRecipe(sources=" in caught.value.hint
