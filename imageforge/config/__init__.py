"""The typed model of images.yml: load once, validate everything, fail with a located message.

Every setting has a default, so images.yml only says what differs. `defaults` holds flavor
settings that every flavor inherits (deep-merged under each flavor before validation).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StringConstraints,
    ValidationError,
)

from imageforge.config import userdata, yamlsource
from imageforge.config.cloudsettings import Clouds
from imageforge.config.configerrors import dotted, explain, shown, suggest
from imageforge.config.configtypes import (
    CLOUDS,
    NAME_PLACEHOLDERS,
    Aiida,
    CloudName,
    Desktop,
    Environment,
    FlavorName,
    Model,
    Package,
    Port,
    ProjectPath,
    PythonEnv,
    TagKey,
    Text,
    UserName,
)
from imageforge.config.oses import DEFAULT_OS, LocalOsName, OsName
from imageforge.config.prices import Prices
from imageforge.config.publishpolicy import PublishPolicy
from imageforge.config.yamlsource import Mark
from imageforge.errors import ConfigError


def _script_shorthand(value: Any) -> Any:
    return {"script": value} if isinstance(value, str) else value


class Provisioner(Model):
    """A script run inside the build VM: shell or Python, chosen by its shebang."""

    script: ProjectPath = Field(description="Path relative to images.yml")
    env: Environment = Field(default_factory=dict, description="Environment for this script")


Step = Annotated[
    Provisioner, BeforeValidator(_script_shorthand, json_schema_input_type=str | Provisioner)
]


class OsPerCloud(Model):
    """The base operating system a flavor starts from, on each cloud."""

    local: LocalOsName = Field(DEFAULT_OS, description="Debian only: built here from packages")
    aws: OsName = DEFAULT_OS
    gcp: OsName = DEFAULT_OS
    openstack: OsName = DEFAULT_OS


class Flavor(Model):
    """What goes into an image, independent of the cloud it is built on."""

    description: Text = ""
    os: OsPerCloud = OsPerCloud()
    user: UserName = Field("imageforge", description="The image's default login user")
    packages: tuple[Package, ...] = Field(
        (),
        description="Distribution packages, added to those of `defaults`. Local builds install "
        "them natively into a cached layer; cloud builds install them first in the build VM",
    )
    provisioners: tuple[Step, ...] = ()
    cleanup: tuple[Step, ...] = (Provisioner(script="provisioners/cleanup/90-cleanup.sh"),)
    env: Environment = Field(default_factory=dict, description="Environment for every script")
    tests: ProjectPath | None = Field(None, description="testinfra suite, relative to images.yml")
    ports: tuple[Port, ...] = (22,)
    tags: dict[TagKey, Text] = Field(default_factory=dict, description="Tags/labels on every cloud")
    desktop: Desktop | None = Field(
        None, description="XFCE + TigerVNC desktop: image defaults; user-data overrides"
    )
    python: PythonEnv | None = None
    aiida: Aiida | None = Field(None, description="AiiDA profile, daemon and JupyterLab settings")
    verify_user_data: Annotated[dict[str, Any], AfterValidator(userdata.check_blocks)] = Field(
        default_factory=dict,
        description="cloud-config keys added to the user-data of the verification boot",
    )
    publish: PublishPolicy | None = Field(
        None, description="who this flavor is shared with, per cloud; overrides the top level's"
    )


class CellRef(Model):
    flavor: Text
    cloud: CloudName


class Matrix(Model):
    """Which cells to build: flavors × clouds, less exclude, plus include."""

    flavors: tuple[Text, ...] | None = Field(None, description="Default: every flavor")
    clouds: tuple[CloudName, ...] = CLOUDS  # type: ignore[assignment]
    exclude: tuple[CellRef, ...] = ()
    include: tuple[CellRef, ...] = ()


class Settings(Model):
    name_prefix: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,20}$")] = "imageforge"


class ImagesFile(Model):
    """The whole of images.yml."""

    settings: Settings = Settings()
    defaults: Flavor = Flavor()
    clouds: Clouds = Clouds()
    flavors: dict[FlavorName, Flavor] = Field(min_length=1)
    matrix: Matrix = Matrix()
    publish: PublishPolicy = Field(
        PublishPolicy(), description="who `invoke publish` shares images with; default: nobody"
    )
    prices: Prices = Field(
        Prices(), description="price table of `invoke build --dry-run`'s cost estimate"
    )


@dataclass(frozen=True)
class Project:
    """A loaded images.yml and the directory its relative paths start from."""

    path: Path
    root: Path
    images: ImagesFile
    raw: Any

    def where(self, *key_path: Any) -> Mark:
        """Where a key path stands in images.yml."""
        return yamlsource.locate(self.raw, key_path, Mark(self.display, 1, 1))

    @property
    def display(self) -> str:
        return _display(self.path)

    def error(
        self, key_path: tuple[Any, ...], message: str, *, hint: str | None = None
    ) -> ConfigError:
        """A ConfigError located at key_path."""
        return ConfigError(f"{self.where(*key_path)}: {dotted(key_path)}: {message}", hint=hint)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def load(path: Path | str = "images.yml") -> Project:
    """Load, merge defaults into flavors, validate, and check cross-references."""
    path = Path(path)
    raw = yamlsource.load_file(path, _display(path))
    display = _display(path)
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{display}:1:1: the file must be a mapping with a 'flavors' key (got {shown(raw)})"
        )
    merged = _merge_defaults(raw)
    try:
        images = ImagesFile.model_validate(merged)
    except ValidationError as exc:
        raise explain(exc, merged, display, ImagesFile) from None
    images = _add_default_packages(images)
    project = Project(path=path, root=path.resolve().parent, images=images, raw=merged)
    _check_files(project)
    return project


def _add_default_packages(images: ImagesFile) -> ImagesFile:
    """A flavor's packages are the defaults' packages plus its own (lists are not replaced)."""
    common = images.defaults.packages
    flavors = {
        name: flavor.model_copy(
            update={"packages": tuple(dict.fromkeys((*common, *flavor.packages)))}
        )
        for name, flavor in images.flavors.items()
    }
    return images.model_copy(update={"flavors": flavors})


def _merge_defaults(raw: dict[Any, Any]) -> dict[Any, Any]:
    flavors = raw.get("flavors")
    defaults = raw.get("defaults")
    if not isinstance(flavors, dict) or not isinstance(defaults, dict):
        return raw
    # packages add up (see _add_default_packages); every other key is deep-merged.
    trimmed = yamlsource.LocatedDict((k, v) for k, v in defaults.items() if k != "packages")
    trimmed.mark = getattr(defaults, "mark", None)
    trimmed.marks = getattr(defaults, "marks", {})
    defaults = trimmed
    merged = yamlsource.LocatedDict(raw)
    merged.mark, merged.marks = raw.mark, raw.marks  # type: ignore[attr-defined]
    new_flavors = yamlsource.LocatedDict()
    new_flavors.mark, new_flavors.marks = flavors.mark, flavors.marks  # type: ignore[attr-defined]
    for name, flavor in flavors.items():
        new_flavors[name] = yamlsource.merge(defaults, flavor if flavor is not None else {})
    merged["flavors"] = new_flavors
    return merged


def _check_files(project: Project) -> None:
    images = project.images
    if images.defaults.publish is not None:
        raise project.error(
            ("defaults", "publish"),
            "the publish policy goes at the top level (`publish:`) or in a flavor",
        )
    for name, flavor in images.flavors.items():
        for section in ("provisioners", "cleanup"):
            for index, step in enumerate(getattr(flavor, section)):
                _check_file(project, ("flavors", name, section, index), step.script)
        if flavor.tests is not None:
            _check_file(project, ("flavors", name, "tests"), flavor.tests)
        if flavor.aiida is not None and flavor.python is None:
            raise project.error(
                ("flavors", name, "aiida"),
                "AiiDA needs a Python environment: declare `python:` with aiida-core in it",
            )
        if flavor.aiida is not None and flavor.aiida.jupyter_port not in flavor.ports:
            raise project.error(
                ("flavors", name, "aiida", "jupyter_port"),
                f"port {flavor.aiida.jupyter_port} is not among the flavor's ports "
                f"{list(flavor.ports)}",
                hint="add it to `ports`, so that clouds and verification open it",
            )
    for section, cloud in images.clouds:
        for field in ("ami_name", "image_name", "image_family"):
            pattern = getattr(cloud, field, None)
            if pattern is None:
                continue
            for placeholder in re.findall(r"\{([^{}]*)\}", pattern):
                if placeholder not in NAME_PLACEHOLDERS:
                    raise project.error(
                        ("clouds", section, field),
                        f"unknown placeholder {{{placeholder}}}; allowed: "
                        + ", ".join(f"{{{p}}}" for p in NAME_PLACEHOLDERS)
                        + suggest(placeholder, NAME_PLACEHOLDERS),
                    )


def _check_file(project: Project, key_path: tuple[Any, ...], relative: str) -> None:
    try:
        path = (project.root / relative).resolve()
    except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
        raise project.error(key_path, f"{relative!r} is a symbolic link loop") from None
    if not path.is_relative_to(project.root.resolve()):
        raise project.error(
            key_path, f"{relative!r} leads outside the project directory (a symbolic link?)"
        )
    if path.is_file():
        return
    nearby = [
        str(p.relative_to(project.root))
        for p in (project.root / "provisioners").rglob("*")
        if p.is_file()
    ] + [str(p.relative_to(project.root)) for p in (project.root / "tests").rglob("test_*.py")]
    raise project.error(key_path, f"file {relative!r} does not exist{suggest(relative, nearby)}")
