"""render: images.yml cell → Packer HCL files under build/<flavor>-<cloud>/.

Templates are jinja2 with StrictUndefined; every value passes through imageforge.packer.hcl, which
escapes it (a template cannot print anything else), and `packer fmt` lays the result out.
Values that change from build to build (build id, paths on this machine) are Packer variables,
so the template hash only changes when the template's meaning does.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from imageforge import clouds, packer
from imageforge.config import Project, Provisioner, userdata
from imageforge.config.matrix import Cell
from imageforge.packer import PackerVersion, hcl
from imageforge.packer.hcl import Raw
from imageforge.process import runner

if TYPE_CHECKING:
    from imageforge.clouds.capabilities import PackerSource

VARFILE = "imageforge.auto.pkrvars.hcl"
EXECUTE = "chmod +x {{ .Path }}; sudo -E env {{ .Vars }} {{ .Path }}"
# A cached step: its disk is copied right after, so what it wrote is flushed first.
EXECUTE_SYNCED = EXECUTE + " && sync"
HOST_PASSTHROUGH = "provisioners/common/00-host-passthrough.sh"
# In every image, whatever its flavor lists: only root reaches the metadata service.
METADATA_GUARD = "provisioners/common/05-metadata-guard.sh"
# In every image: the library its first-boot programs share, and the user-data schema.
FIRSTBOOT_LIBRARY = "provisioners/common/06-firstboot.py"
# After the flavor's steps, never cached: the build's id, the only per-build content.
BUILD_ID_STEP = "provisioners/common/80-build-id.sh"
# The scripts render adds to every build, whatever its flavor lists.
BUILTIN_SCRIPTS = (HOST_PASSTHROUGH, METADATA_GUARD, FIRSTBOOT_LIBRARY, BUILD_ID_STEP)
# Packages every image needs for what imageforge itself installs (the guard's nft).
IMAGE_PACKAGES = ("nftables",)
PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy")
# Where a cloud build pins it: after 90_dpkg.cfg (cloud-init's package writes its debconf
# choice there), since of cloud.cfg.d's files the last one in sort order wins.
DATASOURCE_CFG = "/etc/cloud/cloud.cfg.d/99-imageforge-datasource.cfg"
# Installed for the build of python.build's sources in a cloud build VM, and removed after.
SOURCE_BUILD_PACKAGES = ("python3-dev", "gcc", "libc6-dev")


@dataclass(frozen=True)
class StepDefinition:
    """A step the step cache keeps the disk after: its number, script and what defines it."""

    number: int
    script: str
    definition: str  # its provisioner block and its script's bytes (as sha256)


@dataclass(frozen=True)
class Rendered:
    """A rendered template directory; with a step-caching cloud, its cached steps, and what
    defines the disk before the first of them (the source, the variables, the host step)."""

    directory: Path
    files: tuple[Path, ...]
    template_hash: str
    steps: tuple[StepDefinition, ...] = ()
    start: str = ""


def environment(root: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(root / "templates"),
        undefined=jinja2.StrictUndefined,
        finalize=_escaped_only,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["hcl"] = hcl.value
    return env


# A bare word or reference (var.name, a section name) cannot break out of an expression or
# comment; everything else must come from imageforge.packer.hcl.
_BARE_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def _escaped_only(value: Any) -> Any:
    """jinja2's finalize: refuse to print text that did not pass through imageforge.packer.hcl."""
    if isinstance(value, hcl.Raw) or (isinstance(value, str) and _BARE_WORD.fullmatch(value)):
        return value
    raise TypeError(f"template printed {value!r} unescaped; pass it through the hcl filter")


def packer_fmt(path: Path) -> None:
    """Lay out rendered HCL (a file or a directory's files) in place, the way Packer does."""
    runner.run([packer.binary(), "fmt", str(path)], stream=False, what=f"packer fmt {path.name}")


def build_dir(project: Project, cell: Cell) -> Path:
    return project.root / "build" / cell.name


def render(
    project: Project,
    cell: Cell,
    version: PackerVersion,
    out: Path | None = None,
    cloud: PackerSource | None = None,
) -> Rendered:
    """Write the cell's .pkr.hcl files and return them with their hash."""
    out = out or build_dir(project, cell)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.pkr.hcl"):
        stale.unlink()
    env = environment(project.root)
    cloud = cloud or clouds.get(cell.cloud)
    source_name = cell.name
    texts: dict[str, str] = {}
    if version.has_plugins:
        texts["plugins.pkr.hcl"] = (project.root / "packer" / "plugins.pkr.hcl").read_text()
    texts["variables.pkr.hcl"] = (project.root / "packer" / "variables.pkr.hcl").read_text()
    texts["source.pkr.hcl"] = env.get_template(f"sources/{cell.cloud}.pkr.hcl.j2").render(
        source_name=source_name, plugins=version.has_plugins, **cloud.source(project, cell)
    )
    steps = _steps(project, cell, cloud.caches_steps)
    texts["build.pkr.hcl"] = env.get_template("build.pkr.hcl.j2").render(
        build_name=cell.flavor_name,
        source_ref=f"source.{cloud.builder}.{source_name}",
        steps=steps,
        manifest_custom_data=hcl.attributes(
            {"custom_data": clouds.metadata(project, cell, {})}, indent=4
        ),
    )
    files = []
    for name, text in texts.items():
        path = out / name
        path.write_text(text, encoding="utf-8")
        files.append(path)
    packer_fmt(out)  # before hashing: the hash covers the final text
    cached = [s["cached"] for s in steps if s.get("cached")]
    start = "".join(s["cached_by"] for s in steps if s["section"] == "host")
    start += "".join(f"{p.name}\0{p.read_text()}" for p in files if p.name != "build.pkr.hcl")
    return Rendered(out, tuple(files), template_hash(files), tuple(cached), start)


def template_hash(files: list[Path] | tuple[Path, ...]) -> str:
    """sha256 over the rendered files (names and contents), first 16 hex digits."""
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def write_vars(rendered: Rendered, values: dict[str, Any]) -> Path:
    """The per-build variable values; never a secret (those come from PKR_VAR_* only)."""
    path = rendered.directory / VARFILE
    path.write_text(hcl.attributes(values, indent=0) + "\n", encoding="utf-8")
    packer_fmt(path)
    return path


def cloud_init_packages(cell: Cell) -> tuple[str, ...]:
    """What the cell's cloud installs so that its instances run cloud-init (its capability)."""
    return clouds.get(cell.cloud).cloud_init_packages(cell.os)


def cloud_init_config(cell: Cell) -> str:
    """The cloud-init settings a cloud build pins: the cloud's own datasource, so that
    instances do not probe for others at boot. Where imageforge installs cloud-init, the
    network stays as the image configured it (cloud-init only reads the metadata)."""
    text = f"datasource_list: [{clouds.get(cell.cloud).datasource}, None]\n"
    if cloud_init_packages(cell):
        text += "network: {config: disabled}\n"
    return text


def package_commands(cell: Cell) -> list[str]:
    """The generated first provisioner of a cloud build: cloud-init where the image lacks it
    and the flavor's packages, installed in the build VM (local builds get them natively, in
    the layer), then cloud-init pinned to the cloud's own datasource."""
    commands = ["set -eu", "export DEBIAN_FRONTEND=noninteractive"]
    packages = list(
        dict.fromkeys((*cloud_init_packages(cell), *IMAGE_PACKAGES, *cell.flavor.packages))
    )
    if packages:
        commands += [
            "apt-get update -q",
            "apt-get install -y -q --no-install-recommends " + " ".join(packages),
        ]
    config = cloud_init_config(cell).replace("\n", "\\n")
    commands.append(f"printf '{config}' > {DATASOURCE_CFG}")
    python = cell.flavor.python
    if python is not None:
        # What has no wheel for the image's Python is compiled here; the compiler goes after.
        compilers = [p for p in SOURCE_BUILD_PACKAGES if p not in packages] if python.build else []
        requirements = " ".join(shlex.quote(r) for r in python.packages)
        if compilers:
            commands.append("apt-get install -y -q --no-install-recommends " + " ".join(compilers))
        commands += [
            f"python3 -m venv {shlex.quote(python.venv)}",
            f"{shlex.quote(python.venv)}/bin/pip install --no-cache-dir -q {requirements}",
        ]
        if compilers:
            commands += [
                "apt-mark auto -q " + " ".join(compilers),
                "apt-get autoremove -y -q",
            ]
    return commands


def _steps(project: Project, cell: Cell, caching: bool) -> list[dict[str, Any]]:
    """The build's provisioners. With a step-caching cloud, every step between the host step
    and cleanup is numbered: it runs unless the build resumes after it, and a hook on this
    machine then saves the disk (imageforge.stages.stephook)."""
    if getattr(cell.cloud_settings, "communicator", "ssh") == "none":
        return []  # nothing can run in the VM: the image is a copy of its source
    steps = [_step(project, "host", Provisioner(script=HOST_PASSTHROUGH), cell)]
    if clouds.get(cell.cloud).installs_packages_in_vm:
        attributes = {
            "inline": package_commands(cell),
            "execute_command": EXECUTE,
            "environment_vars": _env(cell, Provisioner(script="packages")),
        }
        steps.append(
            {
                "section": "packages",
                "attributes": hcl.attributes(attributes, indent=4),
            }
        )
    schema = json.dumps(userdata.schema(), sort_keys=True, separators=(",", ":"))
    library = Provisioner(script=FIRSTBOOT_LIBRARY, env={"IMAGEFORGE_USER_DATA_SCHEMA": schema})
    cached = [
        ("guard", Provisioner(script=METADATA_GUARD)),
        ("firstboot", library),
        *(("provision", step) for step in cell.flavor.provisioners),
    ]
    for number, (section, step) in enumerate(cached, 1):
        steps.append(_step(project, section, step, cell, number if caching else None))
    steps.append(_step(project, "identity", Provisioner(script=BUILD_ID_STEP), cell))
    steps += [_step(project, "cleanup", step, cell) for step in cell.flavor.cleanup]
    return steps


def _step(
    project: Project, section: str, step: Provisioner, cell: Cell, number: int | None = None
) -> dict[str, Any]:
    execute: Raw = hcl.string(EXECUTE)
    if number is not None:  # skipped when the build resumes after it; the disk synced after
        resume_after = Raw("${var.resume_after}")
        tail = " ]; then exit 0; fi; " + EXECUTE_SYNCED
        execute = hcl.template(f"if [ {number} -le ", resume_after, tail)
    attributes = {
        "script": step.script,
        "execute_command": execute,
        # The build id only where a step can never come from the step cache.
        "environment_vars": _env(cell, step, build_id=section in ("host", "identity", "cleanup")),
    }
    text = hcl.attributes(attributes, indent=4)
    script = hashlib.sha256((project.root / step.script).read_bytes()).hexdigest()
    rendered: dict[str, Any] = {"section": section, "attributes": text}
    rendered["cached_by"] = f"{text}\0{script}"
    if number is not None:
        rendered["cached"] = StepDefinition(number, step.script, rendered["cached_by"])
        rendered["hook"] = hcl.value([hcl.template(Raw("${var.step_hook}"), f" {number}")])
    return rendered


def _env(cell: Cell, step: Provisioner, build_id: bool = True) -> list[Any]:
    ours = {
        "IMAGEFORGE_FLAVOR": cell.flavor_name,
        "IMAGEFORGE_CLOUD": cell.cloud,
        "IMAGEFORGE_OS": cell.os,
        "IMAGE_USER": cell.flavor.user,
        "IMAGE_PORTS": " ".join(str(p) for p in cell.flavor.ports),
    }
    if cell.flavor.desktop is not None:
        ours["IMAGEFORGE_DESKTOP"] = cell.flavor.desktop.model_dump_json()
    if cell.flavor.aiida is not None:
        ours["IMAGEFORGE_AIIDA"] = cell.flavor.aiida.model_dump_json()
    if cell.flavor.python is not None:
        ours["IMAGEFORGE_VENV"] = cell.flavor.python.venv
    merged = {**ours, **cell.flavor.env, **step.env}
    env: list[Any] = [f"{key}={value}" for key, value in merged.items()]
    if build_id:
        env.append(Raw('"IMAGEFORGE_BUILD_ID=${var.build_id}"'))
    env.extend(Raw(f'"{name}=${{var.{name}}}"') for name in PROXY_VARS)
    return env
