"""Wheels built from source for an image's Python: once, natively, in a root of its release."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from imageforge.clouds.local import pyenv, wheelbuild
from imageforge.clouds.local.debcache import DebCache
from imageforge.errors import ImageforgeError
from tests.fakes.runner import FakeRunner


def fake(tmp_path: Path, *, make_wheel: bool = True) -> FakeRunner:
    """pip download writes one sdist; mmdebstrap 'builds' a wheel where sync-out puts it."""

    def download(argv: list[str], kwargs: dict) -> str:
        dest = Path(argv[argv.index("--dest") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "PyCifRW-4.4.6.tar.gz").write_bytes(b"source")
        return ""

    def mmdebstrap(argv: list[str], kwargs: dict) -> str:
        sync_out = next(a for a in argv if "sync-out" in a).split()[-1]
        if make_wheel:
            built = Path(sync_out) / "PyCifRW-4.4.6.tar.gz"
            built.mkdir(parents=True)
            (built / "PyCifRW-4.4.6-cp313-cp313-linux_x86_64.whl").write_bytes(b"wheel")
        return ""

    return (
        FakeRunner().on("python3", "-m", "pip", answer=download).on("mmdebstrap", answer=mmdebstrap)
    )


def build(tmp_path: Path, runner: FakeRunner, monkeypatch) -> Path:
    monkeypatch.setattr(wheelbuild.runner, "run", runner)
    monkeypatch.setattr(pyenv.sys, "executable", "python3")
    return wheelbuild.ensure_wheels(
        "trixie",
        ("PyCifRW~=4.4",),
        tmp_path / "wheels",
        DebCache(tmp_path / "debs"),
        ("deb http://a.invalid/debian trixie main",),
        tmp_path / "log",
    )


def test_a_source_is_built_once_in_a_root_of_the_release(tmp_path: Path, monkeypatch) -> None:
    runner = fake(tmp_path)
    built = build(tmp_path, runner, monkeypatch)
    assert [w.name for w in wheelbuild.wheels_for(built)] == [
        "PyCifRW-4.4.6-cp313-cp313-linux_x86_64.whl"
    ]
    [download] = runner.ran("python3", "-m", "pip")
    assert "--no-binary=:all:" in download and "--no-deps" in download
    [root] = runner.ran("mmdebstrap")
    assert root[-3:-1] == ["trixie", root[-2]] and root[-1].startswith("deb ")
    include = next(a for a in root if a.startswith("--include="))
    assert {"python3-dev", "gcc"} <= set(include.removeprefix("--include=").split(","))
    hook = next(a for a in root if "pip wheel" in a)
    words = shlex.split(hook.split("sh -c ", 1)[1])[0]
    assert "--no-index" in words and "--no-build-isolation" in words  # nothing downloaded there
    # The second layer finds it in the cache: no build root again.
    build(tmp_path, runner, monkeypatch)
    assert len(runner.ran("mmdebstrap")) == 1
    assert not list((tmp_path / "wheels").glob(".wheelbuild-*"))  # the work directory is gone


def test_a_build_that_makes_no_wheel_is_an_error(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ImageforgeError, match="made no wheel"):
        build(tmp_path, fake(tmp_path, make_wheel=False), monkeypatch)
    assert not list((tmp_path / "wheels" / "trixie").iterdir())


def test_built_wheels_join_the_download(tmp_path: Path, monkeypatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(pyenv.runner, "run", lambda argv, **kwargs: seen.append(argv))
    wheel = tmp_path / "PyCifRW-4.4.6-cp313-cp313-linux_x86_64.whl"
    wheel.write_bytes(b"wheel")
    out = tmp_path / "out"
    pyenv.make_wheels("trixie", ("aiida-core~=2.9",), out, tmp_path / "log", [wheel])
    [argv] = seen
    assert argv[argv.index("--find-links") + 1] == str(out) and (out / wheel.name).is_file()
    assert "--only-binary=:all:" in argv  # everything else still comes as a wheel
