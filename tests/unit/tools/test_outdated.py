"""`invoke outdated` against a real package archive the test makes: packages built with
dpkg-deb, indexes and Release files by apt-ftparchive, served as file: URIs and fetched by the
real apt-get. No network."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from debian.debian_support import Version
from invoke.context import Context
from invoke.exceptions import Exit

from imageforge.clouds.local import recipe
from imageforge.stages import sbom
from imageforge.tasks.outdated import outdated
from imageforge.tools import aptarchive
from imageforge.tools import outdated as checks
from imageforge.tools.aptarchive import Candidate
from tests.records import make_record

from ..conftest import ROOT, write

pytestmark = pytest.mark.skipif(
    not shutil.which("apt-ftparchive") or not shutil.which("apt-get"),
    reason="needs apt-get and apt-ftparchive (apt-utils, scripts/setup.sh)",
)
SUITE = "trixie"
CVE = "CVE-2026-12345"
OLD_CVE = "CVE-2025-0001"  # fixed in the installed version already
IMAGES_YML = """\
flavors:
  web:
    packages: [hello]
  calm:
    packages: [tool]
  never-built:
    packages: [tool]
matrix:
  clouds: [local]
"""
# name, version, pocket, changelog entries (version, text), doc: "own", "link" or "none"
PACKAGES = [
    ("hello", "1.0-1", "", [("1.0-1", f"Fix {OLD_CVE}.")], "own"),
    ("hello", "1.0-1+deb13u1", "-security", [("1.0-1+deb13u1", f"Fix {CVE}.")], "own"),
    ("hello", "2.0-1~bpo13+1", "-backports", [("2.0-1~bpo13+1", "CVE-2026-99999")], "own"),
    ("libhello1", "1.0-1", "", [], "link"),
    ("libhello1", "1.0-1+deb13u1", "-security", [("1.0-1+deb13u1", f"Fix {CVE}.")], "link"),
    ("nodoc", "3.0-1", "", [], "none"),
    ("nodoc", "3.0-2", "-security", [], "none"),
    ("tool", "2.0-1", "", [], "own"),
    ("tool", "2.0-1+deb13u1", "-updates", [("2.0-1+deb13u1", "A bug, no CVE.")], "own"),
    ("epochy", "1:1.0-1", "", [], "own"),
    ("epochy", "9.0-1", "-security", [("9.0-1", "CVE-2026-77777")], "own"),
]
INSTALLED = {
    "web": [
        ("hello", "1.0-1"),
        ("libhello1", "1.0-1"),
        ("nodoc", "3.0-1"),
        ("tool", "2.0-1"),
        ("epochy", "1:1.0-1"),
        ("not-in-the-archive", "1.0"),
    ],
    "calm": [("tool", "2.0-1"), ("epochy", "1:1.0-1")],
}


def changelog(name: str, entries: list[tuple[str, str]]) -> bytes:
    """A changelog.Debian, newest entry first, always ending with the initial release."""
    blocks = [*entries, ("0.9-1", f"Initial release; {OLD_CVE} never applied.")]
    text = "".join(
        f"{name} ({version}) {SUITE}; urgency=medium\n\n  * {change}\n\n"
        f" -- Tester <test@example.org>  Mon, 01 Jun 2026 00:00:00 +0000\n\n"
        for version, change in blocks
    )
    return gzip.compress(text.encode(), mtime=0)


def build_deb(work: Path, pool: Path, package: tuple[str, str, str, list[tuple[str, str]], str]):
    name, version, _, entries, doc = package
    tree = work / f"{name}-{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    source = "Source: hello\n" if name == "libhello1" else ""
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\n{source}Architecture: amd64\n"
        "Maintainer: Tester <test@example.org>\nDescription: a test package\n"
    )
    docs = tree / "usr/share/doc"
    docs.mkdir(parents=True)
    if doc == "own":
        (docs / name).mkdir()
        (docs / name / "changelog.Debian.gz").write_bytes(changelog(name, entries))
    elif doc == "link":  # the doc directory links to hello's, shipped in this same .deb
        (docs / "hello").mkdir()
        (docs / "hello" / "changelog.Debian.gz").write_bytes(changelog("hello", entries))
        os.symlink("hello", docs / name)
    pool.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(pool)],
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The archive (trixie, -updates, -security and -backports) and an /etc/apt-like directory
    whose sources.list names it."""
    root = tmp_path_factory.mktemp("archive")
    work = tmp_path_factory.mktemp("debs")
    pockets = sorted({pocket for _, _, pocket, _, _ in PACKAGES} | {""})
    for package in PACKAGES:
        build_deb(work, root / "pool" / (SUITE + package[2]), package)
    for pocket in pockets:
        suite = SUITE + pocket
        index = root / "dists" / suite / "main" / "binary-amd64"
        index.mkdir(parents=True)

        def ftparchive(*args: str) -> str:
            return subprocess.run(
                ["apt-ftparchive", *args], cwd=root, check=True, capture_output=True, text=True
            ).stdout

        (index / "Packages").write_text(ftparchive("packages", f"pool/{suite}"))
        release = ftparchive(
            "-o", f"APT::FTPArchive::Release::Suite={suite}",
            "-o", f"APT::FTPArchive::Release::Codename={SUITE}",
            "release", f"dists/{suite}",
        )  # fmt: skip
        (root / "dists" / suite / "Release").write_text(release)
    apt = tmp_path_factory.mktemp("etc-apt")
    lines = [f"deb [trusted=yes] {root.as_uri()} {SUITE}{pocket} main" for pocket in pockets]
    (apt / "sources.list").write_text("\n".join(lines) + "\n")
    return apt


@pytest.fixture
def project(scratch: Path, archive: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project with a verified build of web and of calm, each with its SBOM."""
    monkeypatch.setenv("IMAGEFORGE_APT_SOURCES", str(archive))
    write(scratch, IMAGES_YML)
    for number, (flavor, installed) in enumerate(INSTALLED.items()):
        build_id = f"20260601-00000{number}-abcdef0-00000{number}"
        record = make_record(scratch / "artifacts", flavor, build_id=build_id, os="debian-13")
        packages = [sbom.Package("deb", name, version, "amd64") for name, version in installed]
        text = sbom.document(
            packages, flavor=flavor, build_id=build_id, timestamp=dt.datetime.now(dt.UTC)
        )
        (record.directory / sbom.FILE).write_text(text)
    return scratch


def run(capsys: pytest.CaptureFixture[str], **options: str) -> tuple[int, str, str]:
    """The task's exit code, stdout and stderr."""
    capsys.readouterr()
    try:
        outdated(Context(), **options)
        code = 0
    except Exit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_a_security_update_is_listed_with_its_cve_and_exits_100(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, format="json", image="web")
    assert code == checks.SECURITY_PENDING == 100
    document = json.loads(out)
    assert document["security_pending"] is True
    [cell] = document["cells"]
    assert (cell["flavor"], cell["cloud"], cell["unchecked"]) == ("web", "local", None)
    assert cell["build"] == "20260601-000000-abcdef0-000000"
    packages = {p["name"]: p for p in cell["packages"]}
    # backports (hello 2.0) are ignored; epochy 1:1.0-1 is newer than -security's 9.0-1
    assert set(packages) == {"hello", "libhello1", "nodoc", "tool"}
    assert packages["hello"] == {
        "name": "hello",
        "installed": "1.0-1",
        "candidate": "1.0-1+deb13u1",
        "security": True,
        "cves": [CVE],
    }
    assert packages["libhello1"]["cves"] == [CVE]  # through the doc directory's link
    assert packages["nodoc"]["security"] is True and packages["nodoc"]["cves"] is None
    assert packages["tool"] == {
        "name": "tool",
        "installed": "2.0-1",
        "candidate": "2.0-1+deb13u1",
        "security": False,
        "cves": None,
    }
    assert "Traceback" not in err


def test_the_new_debs_go_into_the_shared_deb_cache_and_are_reused(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, format="json", image="web")
    cache = recipe.deb_cache(SUITE).directory
    cached = sorted(p.name for p in cache.glob("*.deb"))
    assert cached == [
        "hello_1.0-1+deb13u1_amd64.deb",
        "libhello1_1.0-1+deb13u1_amd64.deb",
        "nodoc_3.0-2_amd64.deb",
    ]
    inode = (cache / cached[0]).stat().st_ino
    run(capsys, format="json", image="web")
    assert (cache / cached[0]).stat().st_ino == inode
    assert not list(cache.glob(".outdated-*"))


def test_only_a_non_security_update_exits_0(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, format="json", image="calm")
    assert code == 0
    [cell] = json.loads(out)["cells"]
    assert [(p["name"], p["security"]) for p in cell["packages"]] == [("tool", False)]


def test_github_lists_the_cells_to_rebuild_and_the_table_names_the_cve(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, format="github")
    assert code == 100
    include = json.loads(out)["include"]
    assert [(c["image"], c["cloud"]) for c in include] == [("web", "local")]
    assert {"name", "os", "publish"} <= set(include[0])
    assert "never-built on local: not checked: no verified build" in err
    code, out, _ = run(capsys)
    assert code == 100
    assert CVE in out and "hello" in out and "not checked: no verified build" in out
    assert "unknown" in out  # nodoc's CVEs


def test_unchecked_cells_are_listed_not_skipped(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / "artifacts" / "calm" / "20260601-000001-abcdef0-000001" / sbom.FILE).unlink()
    code, out, _ = run(capsys, format="json", cloud="local")
    cells = {c["flavor"]: c for c in json.loads(out)["cells"]}
    assert code == 100
    assert cells["calm"]["unchecked"] == f"build 20260601-000001-abcdef0-000001 has no {sbom.FILE}"
    assert cells["never-built"] == {
        "flavor": "never-built",
        "cloud": "local",
        "build": None,
        "packages": [],
        "unchecked": "no verified build",
    }


def test_a_bad_format_is_one_line_and_exits_2(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, format="yaml")
    assert code == 2
    assert out == ""
    assert err.strip().splitlines() == [
        "error: unknown format 'yaml'; allowed: table, json, github"
    ]


def test_through_the_invoke_command_line(project: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "-r", str(ROOT), "outdated", "--format", "github"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 100, done.stderr
    assert json.loads(done.stdout)["include"][0]["image"] == "web"
    bad = subprocess.run(
        [sys.executable, "-m", "invoke", "-r", str(ROOT), "outdated", "--format", "xml"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_epochs_and_pockets_compare_by_debian_rules() -> None:
    def candidate(version: str, pocket: str) -> Candidate:
        return Candidate("p", Version(version), "amd64", pocket, "", "p")

    installed = [checks.Installed("p", "1:1.0-1", "amd64")]
    older = {"p": [candidate("9.0-1", "security"), candidate("1:1.0-1", "release")]}
    assert checks.compare(installed, older) == []
    newer = {"p": [candidate("1:1.0-1+deb13u1", "security"), candidate("1:1.0-2", "updates")]}
    [(_, best, security)] = checks.compare(installed, newer)
    assert (str(best.version), security) == ("1:1.0-2", True)


def test_backports_and_other_suites_are_not_sources() -> None:
    lines = [
        "deb http://mirror.invalid/debian trixie main",
        "deb [signed-by=/k.gpg] http://mirror.invalid/debian trixie-updates main",
        "deb http://mirror.invalid/debian-security trixie-security main",
        "deb http://mirror.invalid/debian trixie-backports main",
        "deb http://mirror.invalid/debian bookworm main",
    ]
    assert aptarchive.pocket_sources(lines, SUITE) == lines[:3]
    assert Candidate("a", Version("1:2.0-1"), "all", "release", "", "a").deb_name == (
        "a_1%3a2.0-1_all.deb"
    )


@pytest.mark.parametrize("text", ["[]", '{"components": ["x", 7]}', '{"components": {}}', "{"])
def test_a_verified_build_that_cannot_be_checked_exits_1_never_0(
    project: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    (project / "artifacts" / "calm" / "20260601-000001-abcdef0-000001" / sbom.FILE).write_text(text)
    code, out, err = run(capsys, format="json", image="calm")
    assert code == checks.CHECK_FAILED == 1
    [cell] = json.loads(out)["cells"]
    assert cell["build"] and cell["unchecked"] and cell["packages"] == []
    assert "Traceback" not in err and "internal error" not in err
