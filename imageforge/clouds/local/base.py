"""Debian qcow2 images built natively on the host from Debian packages, cached by content.

The base image is the recipe's packages; a flavor's layer is the same recipe plus the flavor's
declared packages. Both are built the same way, with no VM, no loop device and no mount:
mmdebstrap installs every package into a directory (the .deb files come from the shared
download cache), the tree is configured and scrubbed of everything per-instance, and disk.py
turns it into a bootable disk. The result lives in <cache>/base/<hash>/ (no extra packages) or
<cache>/layers/<hash>/, keyed by the recipe, the guest files, the options and tool versions.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from imageforge import log
from imageforge.clouds.local import disk, guestfiles, pyenv, reproducible, wheelbuild
from imageforge.clouds.local.debcache import Harvest
from imageforge.clouds.local.recipe import (  # noqa: F401 (the recipe, re-exported for callers)
    BASE_FORMAT,
    DEFAULT_PACKAGES,
    HEADROOM_MIB,
    IMAGE_NAME,
    INFO,
    MMDEBSTRAP_OPTIONS,
    BaseImage,
    BaseRecipe,
    cache_dir,
    deb_cache,
    recipe_hash,
    tool_versions,
)
from imageforge.errors import ImageforgeError
from imageforge.process import runner


def ensure_base(recipe: BaseRecipe | None = None, *, force: bool = False) -> BaseImage:
    """The cached image for recipe, built first if it is missing (or if force: --refresh)."""
    recipe = recipe or BaseRecipe()
    digest = recipe_hash(recipe)
    root = cache_dir() / recipe.kind
    root.mkdir(parents=True, exist_ok=True)
    what = "layer" if recipe.kind == "layers" else "base image"
    with _locked(root / f".{digest}.lock"):
        cached = None if force else _cached(root / digest, digest)
        if cached is not None:
            log.info(f"{what} {digest[:12]} is cached: {cached.path}")
            return cached
        for stale in root.glob(f".build-{digest[:12]}-*"):
            _remove_tree(stale)
        extra = f" + {len(recipe.extra_packages)} packages" if recipe.extra_packages else ""
        extra += f" + {len(recipe.python_packages)} Python" if recipe.python_packages else ""
        with log.step(f"Build the Debian {recipe.suite} {what} {digest[:12]}{extra}"):
            info = _build(recipe, digest, root)
    return BaseImage(
        root / digest / IMAGE_NAME,
        info["sha256"],
        digest,
        built=True,
        packages=info["packages"],
        downloaded=info["downloaded"],
        python_packages=info.get("python_packages", {}),
    )


def _cached(final: Path, digest: str) -> BaseImage | None:
    try:
        info = json.loads((final / INFO).read_text())
    except (OSError, ValueError):
        return None
    image = final / IMAGE_NAME
    if info.get("recipe_hash") != digest or not image.is_file():
        return None
    return BaseImage(
        image,
        info["sha256"],
        digest,
        built=False,
        packages=info.get("packages", {}),
        python_packages=info.get("python_packages", {}),
    )


def _build(recipe: BaseRecipe, digest: str, root: Path) -> dict[str, Any]:
    """Build in a temporary directory under root and rename it to root/digest at the end."""
    logs = cache_dir() / "logs" / f"{recipe.kind}-{digest[:12]}"
    _remove_tree(logs)
    logs.mkdir(parents=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{digest[:12]}-", dir=root))
    steps: dict[str, float] = {}
    started = time.monotonic()
    try:
        rootfs, raw, out = work / "rootfs", work / "disk.raw", work / "out"
        wheels = work / "wheels"
        if recipe.python_packages:
            with log.step("pip download: wheels of the layer's Python packages") as timing:
                built = _source_wheels(recipe, logs / "wheel-build.log")
                pyenv.make_wheels(
                    recipe.suite, recipe.python_packages, wheels, logs / "pip-download.log", built
                )
            steps["wheels"] = timing["seconds"]
        with log.step("mmdebstrap: install the packages into a directory") as timing:
            fetched = _bootstrap(recipe, rootfs, work / "outbox", wheels, logs / "mmdebstrap.log")
        steps["mmdebstrap"] = timing["seconds"]
        log.info(
            f"packages: {fetched.downloaded} downloaded, {fetched.reused} from the download cache"
        )
        with log.step("Configure, scrub, GRUB files") as timing:
            packages = installed_packages(rootfs)
            python = pyenv.installed(rootfs, recipe.python_venv) if recipe.python_venv else {}
            guestfiles.apply(rootfs, recipe.user, recipe.hostname, recipe.suite)
            disk.install_grub_files(rootfs, guestfiles.KERNEL_APPEND)
            leftovers = guestfiles.per_instance_leftovers(rootfs)
            if leftovers:
                raise ImageforgeError(f"per-instance files left in the tree: {leftovers}")
            size_mib = max(recipe.disk_size_mib, disk.tree_size_mib(rootfs) + HEADROOM_MIB)
        steps["configure"] = timing["seconds"]
        with log.step("Disk: sfdisk, mke2fs -d, GRUB boot code") as timing:
            pins = reproducible.pins_for(digest)
            disk.assemble(rootfs, raw, size_mib, logs / "disk.log", pins=pins)
            _remove_tree(rootfs)
        steps["disk"] = timing["seconds"]
        out.mkdir()
        with log.step("Convert to qcow2") as timing:
            disk.to_qcow2(raw, out / IMAGE_NAME, logs / "convert.log")
        steps["convert"] = timing["seconds"]
        info = _describe(recipe, digest, out / IMAGE_NAME, size_mib, steps, started)
        info.update(packages=packages, downloaded=fetched.downloaded, reused=fetched.reused)
        info.update(python_packages=python)
        (out / INFO).write_text(json.dumps(info, indent=2) + "\n")
        _install(out, root / digest)
        return info
    finally:
        _remove_tree(work)


def _source_wheels(recipe: BaseRecipe, logfile: Path) -> list[Path]:
    """The wheels of recipe.python_build, built for the suite's Python (cached)."""
    if not recipe.python_build:
        return []
    directory = wheelbuild.ensure_wheels(
        recipe.suite,
        recipe.python_build,
        cache_dir() / "wheels",
        deb_cache(recipe.suite),
        recipe.sources,
        logfile,
    )
    return wheelbuild.wheels_for(directory)


def _bootstrap(
    recipe: BaseRecipe, rootfs: Path, outbox: Path, wheels: Path, logfile: Path
) -> Harvest:
    if os.geteuid() != 0:
        raise ImageforgeError(
            "building the base image needs root (mmdebstrap --mode=root, mke2fs -d)",
            hint="run the build as root, e.g. in the CI container",
        )
    cache = deb_cache(recipe.suite)
    python = (
        pyenv.mmdebstrap_options(recipe.python_venv, recipe.python_packages, wheels)
        if recipe.python_packages
        else []
    )
    argv: list[str | Path] = [
        "mmdebstrap",
        *MMDEBSTRAP_OPTIONS,
        *cache.mmdebstrap_options(outbox),
        *guestfiles.mmdebstrap_options(),
        *python,
        f"--architectures={recipe.architecture}",
        "--include=" + ",".join((*recipe.packages, *recipe.extra_packages)),
        recipe.suite,
        rootfs,
        *recipe.sources,
    ]
    # SOURCE_DATE_EPOCH: mmdebstrap and what it runs (dpkg, maintainer scripts) write no clock
    # time into the tree, and it removes the logs and caches that would hold one.
    env = {"SOURCE_DATE_EPOCH": reproducible.ENVIRONMENT["SOURCE_DATE_EPOCH"]}
    runner.run(argv, env=env, logfile=logfile, prefix="mmdebstrap", what="mmdebstrap")
    return cache.harvest(outbox)


def installed_packages(rootfs: Path) -> dict[str, str]:
    """Every package installed in the tree, with its version (dpkg's database, read natively)."""
    out = runner.output(
        [
            "dpkg-query",
            f"--admindir={rootfs / 'var/lib/dpkg'}",
            "--show",
            "--showformat=${Package}:${Architecture}\t${Version}\t${db:Status-Abbrev}\n",
        ]
    )
    packages = {}
    for line in out.splitlines():
        name, version, status = ([*line.split("\t"), "", ""])[:3]
        if status.startswith("ii"):
            packages[name.removesuffix(":amd64").removesuffix(":all")] = version
    return dict(sorted(packages.items()))


def _describe(
    recipe: BaseRecipe,
    digest: str,
    image: Path,
    size_mib: int,
    steps: dict[str, float],
    started: float,
) -> dict[str, Any]:
    with image.open("rb") as handle:
        sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
    return {
        "recipe_hash": digest,
        "image": image.name,
        "sha256": sha256,
        "virtual_size_bytes": size_mib * disk.MIB,
        "file_size_bytes": image.stat().st_size,
        "tools": tool_versions(),
        "recipe": asdict(recipe),
        "steps_seconds": steps,
        "build_seconds": round(time.monotonic() - started, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _install(out: Path, final: Path) -> None:
    """Move the finished directory into place, replacing an older build of the same hash."""
    old = final.with_name(f".old-{final.name[:12]}-{os.getpid()}")
    if final.exists():
        os.rename(final, old)
    os.rename(out, final)
    _remove_tree(old)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on path, so that two processes do not build the same image."""
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(f"waiting for another imageforge process building this image ({path})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _remove_tree(path: Path) -> None:
    """rm -rf path, after unmounting whatever mmdebstrap left mounted below it (never through)."""
    if not os.path.lexists(path):
        return
    for mount in sorted(_mounts_under(path), reverse=True):
        runner.run(["umount", "--lazy", mount], check=False, stream=False)
    if still := _mounts_under(path):
        log.warn(f"not removing {path}: {still[0]} is still mounted")
        return
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        log.warn(f"could not remove all of {path}")


def _mounts_under(path: Path) -> list[str]:
    prefix = os.fspath(path.resolve())
    points = [
        re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[1])
        for line in Path("/proc/self/mounts").read_text().splitlines()
    ]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]
