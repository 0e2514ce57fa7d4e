"""The build matrix: which flavor is built on which cloud."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imageforge import config
from imageforge.config import Flavor, Project
from imageforge.config.configerrors import suggest
from imageforge.config.configtypes import CLOUDS
from imageforge.config.oses import OsName
from imageforge.errors import ConfigError


def load(path: Path | str) -> Project:
    """images.yml, checked down to its matrix section (config does not know the matrix)."""
    project = config.load(path)
    cells(project)
    return project


@dataclass(frozen=True)
class Cell:
    """One flavor on one cloud."""

    flavor_name: str
    cloud: str
    flavor: Flavor
    cloud_settings: Any

    @property
    def name(self) -> str:
        return f"{self.flavor_name}-{self.cloud}"

    @property
    def os(self) -> OsName:
        os_name: OsName = getattr(self.flavor.os, self.cloud)
        return os_name

    def settings(self) -> dict[str, Any]:
        """What images.yml says of the cell that shapes its image (who it is shared with
        aside): kept in the build record for `invoke diff`, compared by --changed-since."""
        return {
            "flavor": self.flavor.model_dump(mode="json", exclude={"publish"}),
            "cloud": self.cloud_settings.model_dump(mode="json"),
        }


def cells(project: Project) -> list[Cell]:
    """Every enabled cell, in a stable order; the matrix section is checked on the way."""
    images = project.images
    matrix = images.matrix
    declared = list(images.flavors)
    flavors = list(matrix.flavors) if matrix.flavors is not None else declared
    for index, name in enumerate(flavors):
        _known_flavor(project, ("matrix", "flavors", index), name)
    _no_repeats(project, ("matrix", "flavors"), flavors)
    _no_repeats(project, ("matrix", "clouds"), list(matrix.clouds))
    wanted = [(f, c) for f in flavors for c in matrix.clouds]
    for index, ref in enumerate(matrix.exclude):
        _known_flavor(project, ("matrix", "exclude", index, "flavor"), ref.flavor)
        if (ref.flavor, ref.cloud) not in wanted:
            raise project.error(
                ("matrix", "exclude", index),
                f"excludes {ref.flavor}-{ref.cloud}, which the matrix does not contain",
            )
        wanted.remove((ref.flavor, ref.cloud))
    for index, ref in enumerate(matrix.include):
        _known_flavor(project, ("matrix", "include", index, "flavor"), ref.flavor)
        if (ref.flavor, ref.cloud) in wanted:
            raise project.error(
                ("matrix", "include", index),
                f"duplicate cell {ref.flavor}-{ref.cloud}: it is already in the matrix",
                hint="remove this include entry",
            )
        wanted.append((ref.flavor, ref.cloud))
    if not wanted:
        raise project.error(("matrix",), "the matrix is empty: no flavor × cloud cell is left")
    order = {c: i for i, c in enumerate(CLOUDS)}
    wanted.sort(key=lambda fc: (declared.index(fc[0]), order[fc[1]]))
    return [Cell(f, c, images.flavors[f], getattr(images.clouds, c)) for f, c in wanted]


def find(project: Project, flavor: str, cloud: str) -> Cell:
    """The cell for a command line's --image and --cloud, with a suggestion on a typo."""
    if flavor not in project.images.flavors:
        names = list(project.images.flavors)
        raise ConfigError(
            f"unknown image {flavor!r}; allowed: {', '.join(names)}{suggest(flavor, names)}"
        )
    if cloud not in CLOUDS:
        raise ConfigError(
            f"unknown cloud {cloud!r}; allowed: {', '.join(CLOUDS)}{suggest(cloud, CLOUDS)}"
        )
    for cell in cells(project):
        if (cell.flavor_name, cell.cloud) == (flavor, cloud):
            return cell
    raise ConfigError(
        f"{flavor} on {cloud} is not in the matrix of {project.display}",
        hint="add it under matrix.include, or remove the exclude entry",
    )


def selected(project: Project, image: str | None, cloud: str | None) -> list[Cell]:
    """Cells filtered by optional --image and --cloud."""
    if image is not None and cloud is not None:
        return [find(project, image, cloud)]
    if image is not None and image not in project.images.flavors:
        find(project, image, "local")
    if cloud is not None and cloud not in CLOUDS:
        find(project, next(iter(project.images.flavors)), cloud)
    chosen = [
        c
        for c in cells(project)
        if (image is None or c.flavor_name == image) and (cloud is None or c.cloud == cloud)
    ]
    if not chosen:
        what = f"of {image}" if image is not None else f"on {cloud}"
        raise ConfigError(
            f"the matrix of {project.display} has no cell {what}",
            hint="add it under matrix.include, or remove the exclude entry",
        )
    return chosen


def github(cells_: list[Cell], shared: Collection[str] = ()) -> str:
    """A GitHub Actions strategy.matrix: {"include": [{image, cloud, name, os, publish}, ...]};
    publish is true for the cells named in shared (images.yml's policy shares them)."""
    include = [
        {
            "image": c.flavor_name,
            "cloud": c.cloud,
            "name": c.name,
            "os": c.os,
            "publish": c.name in shared,
        }
        for c in cells_
    ]
    return json.dumps({"include": include}, separators=(",", ":"))


def _known_flavor(project: Project, key_path: tuple[Any, ...], name: str) -> None:
    names = list(project.images.flavors)
    if name not in names:
        raise project.error(
            key_path, f"unknown flavor {name!r}; allowed: {', '.join(names)}{suggest(name, names)}"
        )


def _no_repeats(project: Project, key_path: tuple[Any, ...], names: list[str]) -> None:
    for index, name in enumerate(names):
        if name in names[:index]:
            raise project.error((*key_path, index), f"duplicate entry {name!r}")
