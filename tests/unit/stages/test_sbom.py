"""The SBOM: dpkg-query and pip output become CycloneDX 1.5 components with package URLs."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from packageurl import PackageURL

from imageforge import __version__
from imageforge.process.runner import CommandResult
from imageforge.stages import sbom
from tests.records import make_record

DPKG = (
    "ii \tlibc6\t1:2.36-9+deb12u4~bpo1\tamd64\tglibc\n"
    "ii \tslurmd\t22.05.8-4+deb12u3\tamd64\tslurm-wlm (22.05.8-4+deb12u3)\n"
    "ii \tpython3-yaml\t6.0-3+b2\tamd64\tpyyaml (6.0-3)\n"
    "ii \tmunge\t0.5.15-2\tamd64\t\n"
    "ii \ttzdata\t2024a-0+deb12u1\tall\t\n"
    "rc \told-removed\t1.0-1\tamd64\t\n"  # removed, only its configuration files left
    "garbage line\n"
)
PIP = json.dumps(
    [
        {"name": "aiida-core", "version": "2.5.1"},
        {"name": "Jinja2", "version": "3.1.3"},
        {"name": "odd", "version": "1.0+local.7"},
        {"name": "", "version": "1"},
    ]
)
WHEN = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def test_dpkg_output_gives_installed_packages_with_source_names() -> None:
    packages = sbom.parse_dpkg(DPKG)
    assert [p.name for p in packages] == ["libc6", "slurmd", "python3-yaml", "munge", "tzdata"]
    libc = packages[0]
    assert (libc.version, libc.arch, libc.source) == ("1:2.36-9+deb12u4~bpo1", "amd64", "glibc")
    assert packages[1].source == "slurm-wlm"  # "slurm-wlm (22.05.8-4+deb12u3)"
    assert packages[3].source == "munge"  # empty Source: the package is its own source


def test_pip_json_gives_distributions_of_one_environment() -> None:
    packages = sbom.parse_pip(PIP, "/opt/venv")
    assert [(p.name, p.version) for p in packages] == [
        ("aiida-core", "2.5.1"),
        ("Jinja2", "3.1.3"),
        ("odd", "1.0+local.7"),
    ]
    assert {p.environment for p in packages} == {"/opt/venv"} and packages[0].kind == "pypi"
    with pytest.raises(ValueError):
        sbom.parse_pip("Traceback (most recent call last):", "python3")


@pytest.mark.parametrize(
    ("version", "encoded"),
    [
        ("1:2.36-9+deb12u4~bpo1", "1:2.36-9%2Bdeb12u4~bpo1"),
        ("2:9.0.1378-2", "2:9.0.1378-2"),
        ("0.5.15-2", "0.5.15-2"),
        ("1.2~rc1+dfsg-3", "1.2~rc1%2Bdfsg-3"),
    ],
)
def test_deb_purls_encode_versions_as_the_purl_spec_says(version: str, encoded: str) -> None:
    """'+' is percent-encoded; '~' is not (a punctuation character), nor is ':' — the purl
    spec says the colon MUST NOT be encoded, whether a separator or not."""
    url = sbom.purl(sbom.Package("deb", "libc6", version, "amd64")).to_string()
    assert url == f"pkg:deb/debian/libc6@{encoded}?arch=amd64"
    assert PackageURL.from_string(url).version == version
    # A reader given the epoch's colon encoded (as some tools write it) reads the same version.
    epoch, _, rest = encoded.rpartition(":")
    if epoch:
        assert PackageURL.from_string(url.replace(encoded, f"{epoch}%3A{rest}")).version == version


def test_pypi_purls_use_the_normalized_name() -> None:
    url = sbom.purl(sbom.Package("pypi", "Jinja2_Extra", "3.1.3+local"))
    assert url.to_string() == "pkg:pypi/jinja2-extra@3.1.3%2Blocal"
    assert sbom.purl(sbom.Package("deb", "x", "1", "all"), "ubuntu").namespace == "ubuntu"


def _document() -> dict[str, Any]:
    packages = (
        sbom.parse_dpkg(DPKG) + sbom.parse_pip(PIP, "/opt/venv") + sbom.parse_pip(PIP, "python3")
    )
    text = sbom.document(
        packages,
        flavor="slurm-node",
        build_id="20260101-000000-abcdef0-000000",
        timestamp=WHEN,
        properties={"cloud": "local"},
    )
    return json.loads(text)


def test_the_document_has_cyclonedx_1_5_required_fields_and_metadata() -> None:
    doc = _document()
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"] == "1.5"
    assert doc["serialNumber"].startswith("urn:uuid:") and doc["version"] == 1
    metadata = doc["metadata"]
    assert metadata["timestamp"].startswith("2026-01-02T03:04:05")
    assert metadata["component"]["name"] == "slurm-node"
    assert metadata["component"]["version"] == "20260101-000000-abcdef0-000000"
    assert {"name": "imageforge:cloud", "value": "local"} in metadata["component"]["properties"]
    [tool] = metadata["tools"]["components"]
    assert (tool["name"], tool["version"]) == ("imageforge", __version__)
    purls = {c["purl"] for c in doc["components"]}
    assert "pkg:deb/debian/libc6@1:2.36-9%2Bdeb12u4~bpo1?arch=amd64" in purls
    assert "pkg:deb/debian/slurmd@22.05.8-4%2Bdeb12u3?arch=amd64" in purls
    assert "pkg:pypi/aiida-core@2.5.1" in purls
    # The same distribution in two environments: two components, each bom-ref unique.
    refs = [c["bom-ref"] for c in doc["components"]]
    assert len(refs) == len(set(refs)) == 5 + 3 + 3
    assert sbom.counts(doc) == {"deb": 5, "pypi": 6}
    slurmd = next(c for c in doc["components"] if c["name"] == "slurmd")
    assert {"name": "imageforge:deb:source", "value": "slurm-wlm"} in slurmd["properties"]


def test_the_document_validates_against_the_cyclonedx_1_5_json_schema() -> None:
    pytest.importorskip("jsonschema")
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    validator = JsonStrictValidator(SchemaVersion.V1_5)
    assert validator.validate_str(json.dumps(_document())) is None
    broken = {**_document(), "specVersion": "1.5", "components": [{"name": "x"}]}
    assert validator.validate_str(json.dumps(broken)) is not None  # the schema is really used


class FakeGuest:
    """A guest answering the capture's commands: dpkg, a venv search and Python environments."""

    def __init__(self, python: dict[str, str], dpkg: tuple[int, str] = (0, DPKG)) -> None:
        self.python = python  # interpreter → its pip-list JSON; absent: the command fails
        self.dpkg = dpkg
        self.commands: list[str] = []

    def run(self, command: str) -> CommandResult:
        self.commands.append(command)
        if command.startswith("dpkg-query"):
            return CommandResult([], *self.dpkg)
        if command.startswith("find "):
            return CommandResult([], 0, "/opt/venv/pyvenv.cfg\n/srv/tool/pyvenv.cfg\n")
        python = command.split(" -I ")[0]
        if python in self.python:
            return CommandResult([], 0, self.python[python])
        return CommandResult([], 127, "sh: 1: python: not found")


def _cell(venv: str | None = "/opt/venv") -> Any:
    python = SimpleNamespace(venv=venv) if venv else None
    return SimpleNamespace(os="debian-12", flavor=SimpleNamespace(python=python))


def test_capture_reads_every_environment_and_writes_the_file(tmp_path: Path) -> None:
    record = make_record(tmp_path, status="built")
    guest = FakeGuest({"/opt/venv/bin/python": PIP})  # no system python, /srv/tool broken
    assert sbom.capture(guest, _cell(), record) == {"sbom": sbom.FILE}
    doc = json.loads((record.directory / sbom.FILE).read_text())
    assert sbom.counts(doc) == {"deb": 5, "pypi": 3}
    read = [c.split(" -I ")[0] for c in guest.commands[2:]]
    assert read == ["python3", "/opt/venv/bin/python", "/srv/tool/bin/python"]


def test_a_guest_without_python_still_gets_its_debs(tmp_path: Path) -> None:
    record = make_record(tmp_path, status="built")
    assert sbom.capture(FakeGuest({}), _cell(None), record) == {"sbom": sbom.FILE}
    doc = json.loads((record.directory / sbom.FILE).read_text())
    assert sbom.counts(doc) == {"deb": 5}


@pytest.mark.parametrize("dpkg", [(127, "sh: dpkg-query: not found"), (0, "")])
def test_no_package_list_means_no_sbom_and_a_warning_not_a_failure(
    tmp_path: Path, dpkg: tuple[int, str], capsys: pytest.CaptureFixture[str]
) -> None:
    record = make_record(tmp_path, status="built")
    assert sbom.capture(FakeGuest({}, dpkg), _cell(), record) == {}
    assert not (record.directory / sbom.FILE).exists()
    assert "no SBOM" in capsys.readouterr().err


def test_environments_are_each_read_once() -> None:
    found = "/opt/venv/pyvenv.cfg\n\n/home/max/.venv/pyvenv.cfg\n"
    assert sbom.environments("/opt/venv/", found) == ["python3", "/opt/venv", "/home/max/.venv"]
    assert sbom.environments(None, "") == ["python3"]
