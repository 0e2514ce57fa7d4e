"""Wheels for the Python packages PyPI has only as source for an image's Python.

A layer's environment is installed from wheels alone (pyenv.py). A package with no wheel for the
image's Python (PyCifRW has none for 3.13) is built once from its source distribution, natively
on the host: mmdebstrap makes a throwaway root of the image's own Debian release with its
compiler and Python headers, `pip wheel` builds there with no index, and the wheel is kept in
the cache (<cache>/wheels/<suite>/), keyed by the source file, for every later layer.
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
from pathlib import Path

from imageforge.clouds.local import pyenv
from imageforge.clouds.local.debcache import DebCache
from imageforge.errors import ImageforgeError
from imageforge.process import runner

BUILD_ROOT_PACKAGES = (
    "python3-dev",
    "python3-pip",
    "python3-setuptools",
    "python3-wheel",
    "gcc",
    "libc6-dev",
)
SOURCES_IN_ROOT = "/tmp/imageforge-sdists"
BUILT_IN_ROOT = "/tmp/imageforge-built"


def ensure_wheels(
    suite: str,
    requirements: tuple[str, ...],
    cache: Path,
    debs: DebCache,
    sources: tuple[str, ...],
    logfile: Path,
) -> Path:
    """The directory of wheels built for requirements on suite's Python (built if missing)."""
    built = cache / suite
    built.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".wheelbuild-", dir=cache))
    try:
        sdists = work / "sdists"
        argv = pyenv.pip_download()
        argv += ["--no-deps", "--no-binary=:all:", "--dest", str(sdists), *requirements]
        runner.run(argv, logfile=logfile, prefix="pip download", what="pip download (sources)")
        missing = [s for s in sorted(sdists.iterdir()) if not _built_from(built, s).is_dir()]
        if missing:
            _build(suite, missing, work, debs, sources, logfile)
            for sdist in missing:
                wheels = list((work / "out" / sdist.name).glob("*.whl"))
                if not wheels:
                    raise ImageforgeError(f"building {sdist.name} for {suite} made no wheel")
                target = _built_from(built, sdist)
                target.mkdir()
                for wheel in wheels:
                    shutil.move(wheel, target / wheel.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return built


def wheels_for(built: Path) -> list[Path]:
    """Every wheel built so far for one suite."""
    return sorted(built.glob("*/*.whl"))


def _built_from(built: Path, sdist: Path) -> Path:
    return built / sdist.name


def _build(
    suite: str,
    sdists: list[Path],
    work: Path,
    debs: DebCache,
    sources: tuple[str, ...],
    logfile: Path,
) -> None:
    """One throwaway root of suite: `pip wheel` each source there, with no index."""
    stage = work / "stage"
    for sdist in sdists:
        (stage / sdist.name).mkdir(parents=True)
        shutil.copy(sdist, stage / sdist.name / sdist.name)
    (work / "out").mkdir()
    build = " && ".join(
        f"{_pip_wheel()} -w {BUILT_IN_ROOT}/{shlex.quote(s.name)} "
        f"{SOURCES_IN_ROOT}/{shlex.quote(s.name)}/{shlex.quote(s.name)}"
        for s in sdists
    )
    argv = [
        "mmdebstrap",
        "--mode=root",
        "--variant=apt",
        "--dpkgopt=force-unsafe-io",
        *debs.mmdebstrap_options(work / "outbox"),
        "--include=" + ",".join(BUILD_ROOT_PACKAGES),
        f'--customize-hook=mkdir -p "$1{SOURCES_IN_ROOT}" "$1{BUILT_IN_ROOT}"',
        f"--customize-hook=sync-in {shlex.quote(str(stage))} {SOURCES_IN_ROOT}",
        f'--customize-hook=chroot "$1" sh -c {shlex.quote(build)}',
        f"--customize-hook=sync-out {BUILT_IN_ROOT} {shlex.quote(str(work / 'out'))}",
        suite,
        str(work / "root"),
        *sources,
    ]
    try:
        runner.run(argv, logfile=logfile, prefix="wheel build", what=f"building wheels on {suite}")
    finally:
        debs.harvest(work / "outbox")


def _pip_wheel() -> str:
    """pip wheel with a clean environment, no index and the root's own setuptools."""
    return (
        f"{pyenv.CLEAN_ENV} python3 -m pip wheel --no-deps --no-index --no-build-isolation "
        "--no-cache-dir --disable-pip-version-check"
    )
