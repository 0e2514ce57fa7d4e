"""The software bill of materials of a built image, read from inside the booted guest.

Verification asks the guest for its distribution packages (dpkg-query) and the distributions
of every Python environment it has (the system python and each virtual environment, read with
importlib.metadata, so no pip is needed), and writes them as one CycloneDX 1.5 JSON document,
`sbom.cdx.json`, in the build directory. Components carry package URLs:
`pkg:deb/debian/<name>@<version>?arch=<arch>` and `pkg:pypi/<name>@<version>`.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cyclonedx.model import Property
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.tool import ToolRepository
from cyclonedx.output.json import JsonV1Dot5
from packageurl import PackageURL

from imageforge import __version__, log
from imageforge.errors import Interrupted

if TYPE_CHECKING:
    from imageforge.config.matrix import Cell
    from imageforge.process.runner import CommandResult
    from imageforge.records.record import BuildRecord

FILE = "sbom.cdx.json"
SYSTEM_PYTHON = "python3"
# Installed packages only (status 'i'; not 'rc', removed with its config files left).
DPKG_QUERY = (
    "dpkg-query -W -f '${db:Status-Abbrev}\\t${Package}\\t${Version}\\t${Architecture}"
    "\\t${Source}\\n'"
)
# What `pip list --format json` prints, without needing pip: every distribution on sys.path
# (the first of a name wins, as on import).
PYTHON_LIST = """\
import importlib.metadata as m, json
seen = {}
for d in m.distributions():
    name = d.metadata.get("Name")
    if name:
        seen.setdefault(name.lower(), {"name": name, "version": d.version})
print(json.dumps(sorted(seen.values(), key=lambda p: p["name"].lower())))
"""
# Where else virtual environments live in an image (each has a pyvenv.cfg).
VENV_SEARCH = "find /opt /srv /usr/local /home /var/lib -maxdepth 4 -name pyvenv.cfg"


@dataclass(frozen=True)
class Package:
    """One installed package: a deb, or a Python distribution of one environment."""

    kind: str  # "deb" or "pypi"
    name: str
    version: str
    arch: str = ""
    source: str = ""
    environment: str = ""  # the Python environment (a venv path, or "python3")


class Shell(Protocol):
    """What capture needs of an SSH session."""

    def run(self, command: str) -> CommandResult: ...


def parse_dpkg(text: str) -> list[Package]:
    """Installed packages from DPKG_QUERY's output (status, name, version, arch, source)."""
    found = []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) != 5 or len(fields[0]) < 2 or fields[0][1] != "i":
            continue
        _, name, version, arch, source = fields
        if name and version:
            source_name = source.split(" ", 1)[0] or name  # "glibc (2.36-9)" → "glibc"
            found.append(Package("deb", name, version, arch, source_name))
    return found


def parse_pip(text: str, environment: str) -> list[Package]:
    """Distributions from `pip list --format json` (or PYTHON_LIST) output."""
    entries = json.loads(text)
    if not isinstance(entries, list):
        raise ValueError("not a list of distributions")
    return [
        Package("pypi", str(e["name"]), str(e["version"]), environment=environment)
        for e in entries
        if isinstance(e, dict) and e.get("name") and e.get("version")
    ]


def purl(package: Package, distro: str = "debian") -> PackageURL:
    """The package URL: pkg:deb/<distro>/name@version?arch=… or pkg:pypi/name@version."""
    if package.kind == "deb":
        qualifiers = {"arch": package.arch} if package.arch else None
        return PackageURL("deb", distro, package.name, package.version, qualifiers)
    return PackageURL("pypi", None, package.name, package.version)


def package_urls(path: Path) -> list[PackageURL]:
    """The package URLs of an SBOM (sorted, each once): what provenance and `outdated` read.
    Not a CycloneDX document with a components list, or a bad package URL: ValueError."""
    document = json.loads(path.read_text())
    components = document.get("components") if isinstance(document, dict) else None
    if not isinstance(components, list):
        raise ValueError("not a CycloneDX SBOM: no components list")
    texts = {c.get("purl") for c in components if isinstance(c, dict)}
    return [PackageURL.from_string(t) for t in sorted(t for t in texts if isinstance(t, str))]


def document(
    packages: Iterable[Package],
    *,
    flavor: str,
    build_id: str,
    timestamp: dt.datetime,
    distro: str = "debian",
    properties: dict[str, str] | None = None,
) -> str:
    """The CycloneDX 1.5 JSON document of an image (flavor, build id) and its packages."""
    image = Component(
        type=ComponentType.OPERATING_SYSTEM,
        name=flavor,
        version=build_id,
        bom_ref=f"image:{flavor}@{build_id}",
        properties=[
            Property(name=f"imageforge:{k}", value=v) for k, v in (properties or {}).items()
        ],
    )
    tool = Component(type=ComponentType.APPLICATION, name="imageforge", version=__version__)
    bom = Bom(
        metadata=BomMetaData(
            timestamp=timestamp, component=image, tools=ToolRepository(components=[tool])
        )
    )
    for package in packages:
        bom.components.add(_component(package, distro))
    bom.register_dependency(image, bom.components)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the library's notes on optional fields
        return JsonV1Dot5(bom).output_as_string(indent=2)


def _component(package: Package, distro: str) -> Component:
    url = purl(package, distro)
    properties = []
    if package.source and package.source != package.name:
        properties.append(Property(name="imageforge:deb:source", value=package.source))
    if package.environment:
        properties.append(Property(name="imageforge:python:environment", value=package.environment))
    ref = url.to_string() + (f"#{package.environment}" if package.environment else "")
    return Component(
        type=ComponentType.LIBRARY,
        name=package.name,
        version=package.version,
        purl=url,
        bom_ref=ref,
        properties=properties,
    )


def counts(sbom: dict[str, Any]) -> dict[str, int]:
    """Components per purl type ({"deb": 412, "pypi": 37}) of a loaded document."""
    found: dict[str, int] = {}
    for component in sbom.get("components", []):
        kind = str(component.get("purl", "")).removeprefix("pkg:").split("/", 1)[0] or "other"
        found[kind] = found.get(kind, 0) + 1
    return found


def environments(declared: str | None, found: str) -> list[str]:
    """The Python environments to read: the system python, the flavor's venv, and every venv
    found (pyvenv.cfg paths in VENV_SEARCH's output), each once."""
    venvs = [declared] if declared else []
    venvs += [str(Path(line.strip()).parent) for line in found.splitlines() if line.strip()]
    return [SYSTEM_PYTHON, *dict.fromkeys(v.rstrip("/") for v in venvs)]


def _python(environment: str) -> str:
    python = SYSTEM_PYTHON if environment == SYSTEM_PYTHON else f"{environment}/bin/python"
    return f"{shlex.quote(python)} -I -c {shlex.quote(PYTHON_LIST)} 2>/dev/null"


def read_guest(ssh: Shell, declared_venv: str | None) -> list[Package]:
    """Every package the guest has; raises ValueError when dpkg-query gives nothing."""
    result = ssh.run(DPKG_QUERY + " 2>/dev/null")
    packages = parse_dpkg(result.output) if result.returncode == 0 else []
    if not packages:
        raise ValueError(f"dpkg-query gave no packages (exit code {result.returncode})")
    for environment in environments(declared_venv, ssh.run(VENV_SEARCH + " 2>/dev/null").output):
        listed = ssh.run(_python(environment))
        try:
            packages += parse_pip(listed.output, environment) if listed.returncode == 0 else []
        except (ValueError, KeyError):
            log.warn(f"SBOM: could not read the Python environment {environment}")
        if listed.returncode != 0 and environment == declared_venv:
            log.warn(f"SBOM: the flavor's Python environment {environment} did not answer")
    return packages


def capture(ssh: Shell, cell: Cell, record: BuildRecord) -> dict[str, str]:
    """Write the guest's SBOM into the build directory: {"sbom": FILE}, or {} with a warning
    when it could not be read (verification goes on either way)."""
    try:
        packages = read_guest(ssh, cell.flavor.python.venv if cell.flavor.python else None)
        text = document(
            packages,
            flavor=record.flavor,
            build_id=record.id,
            timestamp=dt.datetime.now(dt.UTC),
            distro=cell.os.split("-", 1)[0],
            properties={"cloud": record.cloud, "git-commit": record.git_commit},
        )
        (record.directory / FILE).write_text(text + "\n")
    except (KeyboardInterrupt, Interrupted):
        raise
    except Exception as exc:
        log.warn(f"no SBOM: {(str(exc) or type(exc).__name__).splitlines()[0]}")
        return {}
    debs = sum(p.kind == "deb" for p in packages)
    log.info(f"SBOM: {debs} deb and {len(packages) - debs} pypi components in {FILE}")
    return {"sbom": FILE}
