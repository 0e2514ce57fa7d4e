"""The build report: one self-contained HTML file that shows a build at a glance, every value
escaped; rendered for real by headless Chromium where it is installed."""

from __future__ import annotations

import datetime as dt
import io
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from imageforge import config
from imageforge.errors import ConfigError
from imageforge.records import registry, state
from imageforge.records.state import BuildRecord
from imageforge.stages import sbom
from imageforge.tools import report
from tests.records import make_record

from ..conftest import ROOT, write

CHROMIUM = Path("/usr/bin/chromium")
HOSTILE_TEST = "test_name[<script>alert('x')</script>]"
HOSTILE_VERSION = "1.9.5 <img src=x onerror=alert(1)>"
IMAGES_YML = """\
flavors:
  slurm-node:
    packages: [slurmd, munge, not-in-the-image]
matrix:
  clouds: [local]
"""


def render_png(html: Path, png: Path, profile: Path) -> None:
    """A screenshot of a page by headless Chromium: no network, no first-run work, a fresh
    profile, 1280×2000."""
    subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--window-size=1280,2000",
            f"--screenshot={png}",
            html.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )


def is_a_rendering(png: Path) -> bool:
    """A real page, not a blank: 1280×2000 with many colours and no single one filling it."""
    with Image.open(png) as image:
        pixels = image.convert("RGB")
        colours = pixels.getcolors(maxcolors=1 << 20) or []
        most = max(count for count, _ in colours)
        return pixels.size == (1280, 2000) and len(colours) > 50 and most < 0.95 * 1280 * 2000


def ocr(png: Path) -> str:
    return subprocess.run(
        ["tesseract", str(png), "-"], capture_output=True, text=True, check=True
    ).stdout


def _junit(path: Path) -> None:
    suite = ET.Element("testsuite", name="pytest", tests="4", failures="1", errors="0", skipped="1")
    cases = [
        ("test_common", "test_no_host_keys", "0.42", None),
        ("test_slurm", HOSTILE_TEST, "1.25", ("failure", "assert '<b>bold</b>' == 'x'\nmore")),
        ("test_slurm", "test_munge_is_running", "7.50", None),
        ("test_slurm", "test_gpu", "0.01", ("skipped", "no GPU")),
    ]
    for classname, name, seconds, child in cases:
        case = ET.SubElement(suite, "testcase", classname=classname, name=name, time=seconds)
        if child:
            ET.SubElement(case, child[0], message=child[1])
    root = ET.Element("testsuites")
    root.append(suite)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def _screenshot(path: Path) -> None:
    image = Image.new("RGB", (320, 200), (40, 70, 120))
    ImageDraw.Draw(image).rectangle((0, 180, 320, 200), fill=(220, 220, 220))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())


def synthetic_build(project: Path) -> BuildRecord:
    """A failed build with its JUnit XML (1 failure), an SBOM and a desktop screenshot."""
    record = make_record(
        project / "artifacts",
        status="built",
        git_commit="265c2efe4ee579681c282eec8b652f021bc8327d",
        packer_version=HOSTILE_VERSION,
    )
    _junit(record.directory / report.JUNIT)
    packages = sbom.parse_dpkg(
        "ii \tslurmd\t22.05.8-4+deb12u3\tamd64\tslurm-wlm\nii \tmunge\t0.5.15-2\tamd64\t\n"
        "ii \tlibc6\t1:2.36-9+deb12u4\tamd64\tglibc\n"
    ) + sbom.parse_pip('[{"name": "pip", "version": "23.0.1"}]', "python3")
    text = sbom.document(
        packages, flavor="slurm-node", build_id=record.id, timestamp=dt.datetime.now(dt.UTC)
    )
    (record.directory / sbom.FILE).write_text(text)
    _screenshot(record.directory / report.SCREENSHOT)
    outcome = {
        "passed": 2,
        "failed": 1,
        "errors": 0,
        "skipped": 1,
        "failures": [f"test_slurm::{HOSTILE_TEST}"],
        "junit": report.JUNIT,
        "sbom": sbom.FILE,
        "boot": {"to_login_seconds": 11.5, "kernel_seconds": 1.2, "userspace_seconds": 6.3},
    }
    return state.verification_done(record, outcome, 42.5)


@pytest.fixture
def built(scratch: Path) -> tuple[BuildRecord, str]:
    write(scratch, IMAGES_YML)
    record = synthetic_build(scratch)
    flavor = config.load(scratch / "images.yml").images.flavors["slurm-node"]
    path = report.write(record, scratch / "templates", flavor=flavor)
    assert path == record.directory / "report.html"
    return record, path.read_text()


def test_the_report_shows_status_stages_failures_and_sbom_counts(built) -> None:
    record, html = built
    assert record.status == "failed"
    assert '<div class="status">failed</div>' in html
    for stage, seconds in (("packer", "1.0 s"), ("verify", "42.5 s")):
        assert re.search(rf'class="name">{stage}</div>.*?class="secs">{seconds}<', html, re.S)
    assert "test_name[&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;]" in html
    assert "assert &#39;&lt;b&gt;bold&lt;/b&gt;&#39; == &#39;x&#39;" in html  # first line only
    assert "more" not in html.split("Failures")[1].split("Slowest")[0]
    assert "3 <small>deb</small>" in html and "1 <small>pypi</small>" in html
    assert "2 passed" in html and "1 failed" in html and "1 skipped" in html
    assert "test_slurm::test_munge_is_running" in html.split("Slowest")[1]  # the slowest first
    assert "<code>22.05.8-4+deb12u3</code>" in html  # slurmd, declared by the flavor
    assert "not-in-the-image" in html and ">missing<" in html
    assert "265c2efe4ee5" in html and "data:image/png;base64," in html


def test_every_value_is_escaped_and_the_file_is_self_contained(built) -> None:
    _, html = built
    assert "<script" not in html and "<img src=x" not in html
    assert "1.9.5 &lt;img src=x onerror=alert(1)&gt;" in html
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert "http://" not in html and "https://" not in html
    assert "<link" not in html and "@import" not in html and "url(" not in html


def test_a_build_without_tests_sbom_or_screenshot_says_so(scratch: Path) -> None:
    record = make_record(scratch / "artifacts", status="built")
    html = report.render(scratch / "templates", report.context(record))
    assert "no SBOM" in html and "no test results" in html and "not published" in html
    assert "data:image/png" not in html


def test_publications_copies_and_imports_are_listed(scratch: Path) -> None:
    record = make_record(scratch / "artifacts", status="verified")
    record = state.published(record, "openstack", "shared", [], {"members": ["p-1"]})
    record = state.imported(record, "openstack", "img-42")
    html = report.render(scratch / "templates", report.context(record))
    assert "openstack" in html and "published" in html and "sharing: shared" in html
    assert "img-42" in html and "imported" in html and "1 <small>place</small>" in html


def test_an_unknown_build_is_one_line_with_the_nearest_id(scratch: Path) -> None:
    record = make_record(scratch / "artifacts")
    assert registry.find(scratch, record.id).id == record.id
    with pytest.raises(ConfigError, match=rf"did you mean '{record.id}'\?") as caught:
        registry.find(scratch, record.id[:-1])
    assert caught.value.exit_code == 2 and "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="recent: none"):
        registry.find(scratch / "elsewhere", "../x")


def test_invoke_report_writes_the_file_or_exits_2(scratch: Path) -> None:
    write(scratch, IMAGES_YML)
    shutil.copy(ROOT / "tasks.py", scratch / "tasks.py")
    record = synthetic_build(scratch)
    out = scratch / "out.html"
    argv = [sys.executable, "-m", "invoke", "report", record.id, "--output", str(out)]
    done = subprocess.run(argv, cwd=scratch, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.is_file() and "slurm-node" in out.read_text()
    argv[4] = record.id[:-2]
    done = subprocess.run(argv, cwd=scratch, capture_output=True, text=True)
    assert done.returncode == 2 and "did you mean" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs /usr/bin/chromium (setup.sh installs it)")
def test_chromium_renders_the_report_readably(built, tmp_path: Path) -> None:
    record, _ = built
    png = record.directory / "report.png"
    render_png(record.directory / "report.html", png, tmp_path / "profile")
    assert is_a_rendering(png)
    if shutil.which("tesseract"):
        text = ocr(png).lower()
        assert "failed" in text and "slurm-node" in text
