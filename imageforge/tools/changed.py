"""Which cells' inputs changed since a git revision: `invoke matrix --changed-since REF`.

A cell is rebuilt when any of its inputs differs between REF (its merge base with HEAD, so a
pull request is compared with where it branched off) and the working tree:

- files every cell reads: the build block template, `packer/`, the hygiene suite, rendering,
  the OS table;
- its cloud's source template and source module;
- for local cells, the base recipe (the layer's code);
- the flavor's provisioner and cleanup scripts, its `provisioners/<flavor>/` directory and its
  testinfra suite;
- the flavor's settings and the cloud's settings in images.yml (its publish policy aside: who
  an image is shared with does not change the image), or the cell being new in the matrix.

images.yml at REF is read from a `git archive` of REF, so its paths resolve as they did then;
if it cannot be read there, every cell counts as changed.
"""

from __future__ import annotations

import functools
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from imageforge.config import Project, matrix
from imageforge.config.matrix import Cell
from imageforge.errors import CommandError, ConfigError, ImageforgeError
from imageforge.process import runner
from imageforge.stages import render

EVERY_CELL = (
    "templates/build.pkr.hcl.j2",
    "packer/",
    "tests/infra/test_common.py",
    "tests/infra/conftest.py",
    "imageforge/stages/render.py",
    "imageforge/packer/hcl.py",
    "imageforge/config/oses.py",  # each OS's release, login user and Python
    "imageforge/config/userdata.py",  # the user-data schema every image carries
    *render.BUILTIN_SCRIPTS,  # what render adds to every build (the first-boot library...)
)


def cloud_files(cloud: str) -> tuple[str, ...]:
    """The cloud's source template and its package (for local, the base and layer recipe too)."""
    return (f"templates/sources/{cloud}.pkr.hcl.j2", f"imageforge/clouds/{cloud}/")


@dataclass(frozen=True)
class Changed:
    """A cell whose inputs changed, and why (the first reasons found)."""

    cell: Cell
    reasons: tuple[str, ...]


def since(project: Project, ref: str, cells: list[Cell]) -> list[Changed]:
    """The cells among `cells` whose inputs differ between ref's merge base and now."""
    try:
        top = Path(_git(project.root, "rev-parse", "--show-toplevel").strip())
    except CommandError:
        raise ConfigError(f"--changed-since: {project.root} is not in a git checkout") from None
    unknown = ConfigError(
        f"--changed-since {ref}: not a revision with history shared with HEAD",
        hint="fetch it first (actions/checkout with fetch-depth: 0), or name a branch or sha",
    )
    if ref.startswith("-") or not ref.strip():  # never an option to git
        raise unknown
    try:
        commit = _git(project.root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
        base = _git(project.root, "merge-base", commit.strip(), "HEAD").strip()
    except CommandError:
        raise unknown from None
    prefix = project.root.resolve().relative_to(top.resolve())
    files = _changed_files(top, base, prefix)
    old = _old_project(top, base, project.path.resolve().relative_to(top.resolve()))
    before = old if isinstance(old, str) else _Before(old)
    found = []
    for cell in cells:
        reasons = reasons_for(cell, files, before, project)
        if reasons:
            found.append(Changed(cell, tuple(reasons)))
    return found


@dataclass(frozen=True)
class _Before:
    """The project at the base revision, with its cells looked up once."""

    project: Project

    @functools.cached_property
    def cells(self) -> dict[tuple[str, str], Cell]:
        return {(c.flavor_name, c.cloud): c for c in matrix.cells(self.project)}


def reasons_for(cell: Cell, files: set[str], before: _Before | str, now: Project) -> list[str]:
    """Why a cell must be built again, given the changed project-relative files, the project
    as it was (or, as a string, why it could not be read) and as it is."""
    if isinstance(before, str):
        return [before]
    reasons = []
    watched = [*EVERY_CELL, *cloud_files(cell.cloud), *flavor_files(cell)]
    for path in sorted(files):
        if any(path == w or (w.endswith("/") and path.startswith(w)) for w in watched):
            reasons.append(f"{path} changed")
    was = before.cells.get((cell.flavor_name, cell.cloud))
    if was is None:
        return [*reasons, "new in the matrix"]
    then, current = was.settings(), cell.settings()
    if then["flavor"] != current["flavor"]:
        reasons.append(f"flavors.{cell.flavor_name} changed in images.yml")
    if then["cloud"] != current["cloud"]:
        reasons.append(f"clouds.{cell.cloud} changed in images.yml")
    if before.project.images.settings != now.images.settings:
        reasons.append("settings changed in images.yml")
    return reasons


def flavor_files(cell: Cell) -> list[str]:
    """The project-relative files of a flavor: its scripts, its directory, its suite."""
    flavor = cell.flavor
    scripts = [step.script for step in (*flavor.provisioners, *flavor.cleanup)]
    tests = [flavor.tests] if flavor.tests is not None else []
    return [
        *(PurePosixPath(path).as_posix() for path in (*scripts, *tests)),
        f"provisioners/{cell.flavor_name}/",
    ]


def _changed_files(top: Path, base: str, prefix: Path) -> set[str]:
    """Files changed from base to the working tree (untracked ones too), project-relative."""
    listed = _git(top, "diff", "--name-only", "--no-renames", base, "--").splitlines()
    listed += _git(top, "ls-files", "--others", "--exclude-standard").splitlines()
    found = set()
    for name in filter(str.strip, listed):
        path = PurePosixPath(name.strip())
        if prefix == Path("."):
            found.add(str(path))
        elif path.is_relative_to(prefix.as_posix()):
            found.add(str(path.relative_to(prefix.as_posix())))
    return found


def _old_project(top: Path, base: str, images: Path) -> Project | str:
    """images.yml as it was at base, with the tree it referred to; or why it cannot be read."""
    with tempfile.TemporaryDirectory(prefix="imageforge-changed-") as scratch:
        archive = Path(scratch) / "tree.tar"
        _git(top, "archive", "--format=tar", "-o", str(archive), base)
        tree = Path(scratch) / "tree"
        with tarfile.open(archive) as tar:
            tar.extractall(tree, filter="data")
        if not (tree / images).is_file():
            return f"{images} did not exist at {base[:12]}"
        try:
            return matrix.load(tree / images)
        except ImageforgeError as exc:
            return f"{images} at {base[:12]} cannot be read ({exc})"


def _git(where: Path, *args: str) -> str:
    return runner.output(["git", "-C", str(where), *args], what=f"git {args[0]}")
