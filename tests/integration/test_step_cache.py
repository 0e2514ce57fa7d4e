"""The step cache and --on-error=keep for real: a build that fails in its last step names it,
keeps its VM to log into over SSH, and `--release` leaves nothing behind; fixed, it resumes from
the cached disk of the step before and verifies; a changed earlier step runs again with
everything after it. One flavor of three tiny steps, as each build is a VM boot."""

from __future__ import annotations

import json
import re
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from imageforge.stages.stepcache import StepCache

from .conftest import copy_project, invoke, processes_mentioning, temp_leftovers

pytestmark = pytest.mark.integration

FLAVOR = "stepped"
IMAGES = f"""
flavors:
  {FLAVOR}:
    provisioners:
      - provisioners/common/10-base.sh
      - provisioners/test/20-two.sh
      - provisioners/test/30-three.py
matrix:
  clouds: [local]
"""
FAILING = (
    "#!/usr/bin/python3\nimport sys\n"
    "print('about to fail in Python', sys.version_info[:2], flush=True)\n"
    "raise SystemExit(3)\n"
)
# Fixed, it also proves the resumed disk holds what the cached step before it wrote.
FIXED = (
    "#!/usr/bin/python3\nimport os, sys\n"
    "if not os.path.exists('/var/lib/imageforge-test/two'):\n"
    "    sys.exit('imageforge-test: the cached step two left nothing')\n"
    "print('imageforge-test: three ran')\n"
)


def records(project: Path) -> list[dict]:
    found = sorted((project / "artifacts" / FLAVOR).glob("*/build.json"))
    return sorted((json.loads(p.read_text()) for p in found), key=lambda r: r["started_at"])


def sources(record: dict) -> list[tuple[str, str]]:
    return [(Path(s["script"]).name, s["source"]) for s in record["steps"]]


def step_cache(base_cache: Path) -> Path:
    return base_cache / "steps"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_project(tmp_path_factory.mktemp("steps"), IMAGES)
    tests = root / "provisioners" / "test"
    tests.mkdir()
    # Unique to this run: its keys are new, so nothing comes from an earlier run's cache.
    (tests / "20-two.sh").write_text(
        "#!/bin/sh\nset -e\necho 'imageforge-test: two ran'\n"
        f"mkdir -p /var/lib/imageforge-test\necho '{root}' > /var/lib/imageforge-test/two\n"
    )
    (tests / "30-three.py").write_text(FAILING)
    return root


@pytest.fixture(scope="module")
def failed(project: Path) -> tuple[Path, object]:
    return project, invoke(project, "build", "--image", FLAVOR, "--on-error=keep")


def test_a_failing_step_is_named_its_vm_kept_then_released_and_the_steps_before_it_cached(
    failed, base_cache: Path
) -> None:
    project, result = failed
    assert result.returncode == 1
    assert "provisioner provisioners/test/30-three.py failed with exit code 3" in result.stderr
    assert "about to fail in Python (3, 13)" in result.stderr
    [record] = records(project)
    assert record["status"] == "failed" and record["binding"] is None
    directory = project / "artifacts" / FLAVOR / record["id"]
    log = (directory / "build.log").read_text()
    assert "imageforge-test: two ran" in log
    # --on-error=keep: the VM stays; the printed command logs into it, as a user would.
    [command] = re.findall(r"^\s+(ssh -i .+)$", result.stderr, re.MULTILINE)
    argv = shlex.split(command)
    key = Path(argv[argv.index("-i") + 1])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.parent.stat().st_mode) == 0o700  # the private scratch
    inside = subprocess.run(
        [*argv, "-o", "BatchMode=yes", "cat /etc/hostname; ls /var/lib/imageforge-test"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert inside.returncode == 0 and "two" in inside.stdout.split(), inside.stderr
    assert "about to fail in Python" in (directory / "failed-step.log").read_text()
    assert (
        "Script exited with non-zero exit status: 3" in (directory / "failed-step.log").read_text()
    )
    assert "systemd" in (directory / "journal.log").read_text()
    assert "loaded units listed" in (directory / "failed-units.txt").read_text()
    for name in ("failed-step.log", "journal.log", "failed-units.txt"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
    assert processes_mentioning(record["id"])  # QEMU, kept
    released = invoke(project, "build", "--release", record["id"])
    assert released.returncode == 0, released.stderr
    assert f"released the VM kept from build {record['id']}" in released.stderr
    kept = ["build.json", "build.log", "failed-step.log", "failed-units.txt", "journal.log",
            "packer", "serial.log"]  # fmt: skip
    assert sorted(p.name for p in directory.iterdir()) == kept
    assert processes_mentioning(str(project)) == []
    assert processes_mentioning(record["id"]) == []
    assert not key.exists()
    assert temp_leftovers(record["id"]) == []
    # Guard, first-boot library, base (shared with earlier runs, so perhaps from the cache)
    # and 20-two (new to this run) are cached; the failed step is not.
    names = ["05-metadata-guard.sh", "06-firstboot.py", "10-base.sh", "20-two.sh"]
    assert [name for name, _ in sources(record)] == names
    assert sources(record)[-1] == ("20-two.sh", "ran")
    cache = StepCache(step_cache(base_cache), 0)
    keys = [step["key"] for step in record["steps"]]
    for index, key in enumerate(keys):  # one chain, in the record's order, on the layer
        entry = cache.get(key)
        assert entry is not None and entry.parent == (keys[index - 1] if index else ""), entry
        assert stat.S_IMODE(cache.disk(key).stat().st_mode) == 0o600
    assert cache.get(keys[0]).backing == record["base_image"]["path"]
    assert stat.S_IMODE(step_cache(base_cache).stat().st_mode) == 0o700
    assert not list(step_cache(base_cache).glob(".partial-*"))


def test_fixed_it_resumes_after_the_cached_steps_and_verifies(failed, base_cache: Path) -> None:
    project, _ = failed
    (project / "provisioners" / "test" / "30-three.py").write_text(FIXED)
    result = invoke(project, "build", "--image", FLAVOR)
    assert result.returncode == 0, result.stderr[-3000:]
    record = records(project)[-1]
    assert record["status"] == "verified" and record["verification"]["failed"] == 0
    assert sources(record) == [
        ("05-metadata-guard.sh", "cache"),
        ("06-firstboot.py", "cache"),
        ("10-base.sh", "cache"),
        ("20-two.sh", "cache"),
        ("30-three.py", "ran"),
    ]
    log = (project / "artifacts" / FLAVOR / record["id"] / "build.log").read_text()
    assert "imageforge-test: two ran" not in log and "imageforge-test: three ran" in log
    assert "step 4/5 provisioners/test/20-two.sh: from the step cache" in result.stderr
    # The artifact stands alone (the cache's chain flattened into it) and is bound as usual.
    image = project / "artifacts" / FLAVOR / record["id"] / "image" / f"{FLAVOR}.qcow2"
    info = json.loads(subprocess.check_output(["qemu-img", "info", "--output=json", image]))
    assert "backing-filename" not in info
    assert record["binding"]["artifacts"][f"image/{FLAVOR}.qcow2"]


def test_a_changed_earlier_step_runs_again_with_all_after_it(failed) -> None:
    project, _ = failed
    two = project / "provisioners" / "test" / "20-two.sh"
    two.write_text(two.read_text() + "echo 'imageforge-test: two changed'\n")
    result = invoke(project, "build", "--image", FLAVOR, "--no-verify")
    assert result.returncode == 0, result.stderr[-3000:]
    record = records(project)[-1]
    after = [("10-base.sh", "cache"), ("20-two.sh", "ran"), ("30-three.py", "ran")]
    assert sources(record)[2:] == after
    log = (project / "artifacts" / FLAVOR / record["id"] / "build.log").read_text()
    assert "imageforge-test: two changed" in log and "imageforge-test: three ran" in log
