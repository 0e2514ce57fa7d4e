"""The build registry (SQLite beside the artifacts) and `invoke history`, `show`, `diff`."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from imageforge.records import builddiff, registry, state
from tests.records import make_record

from ..conftest import write

IMAGES_YML = "flavors:\n  slurm-node: {}\n  other: {}\nmatrix:\n  clouds: [local, aws]\n"
OLD = "20260101-000000-abcdef0-000001"
NEW = "20260102-000000-abcdef0-000002"


def invoke(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=project, capture_output=True, text=True
    )


@pytest.fixture
def project(scratch: Path) -> Path:
    write(scratch, IMAGES_YML)
    (scratch / "tasks.py").write_text((Path(__file__).parents[3] / "tasks.py").read_text())
    return scratch


def rows(project: Path) -> dict[str, str]:
    with sqlite3.connect(project / "artifacts" / registry.FILENAME) as connection:
        return dict(connection.execute("SELECT id, status FROM builds"))


def test_every_transition_is_a_row_and_failures_are_kept(project: Path) -> None:
    artifacts = project / "artifacts"
    record = make_record(artifacts, build_id=OLD, status="building")
    assert rows(project) == {OLD: "building"}
    make_record(artifacts, build_id=NEW, status="failed")
    make_record(
        artifacts, "slurm-node", "aws", "20260103-000000-abcdef0-000003", status="interrupted"
    )
    assert rows(project) == {
        OLD: "building",
        NEW: "failed",
        "20260103-000000-abcdef0-000003": "interrupted",
    }
    state.abandoned(record, "interrupted", "stopped")
    assert rows(project)[OLD] == "interrupted"


def test_a_lost_registry_is_rebuilt_from_build_json(project: Path) -> None:
    artifacts = project / "artifacts"
    make_record(artifacts, build_id=OLD)
    make_record(artifacts, build_id=NEW, status="failed")
    (artifacts / registry.FILENAME).unlink()
    found = registry.builds(project, flavor="slurm-node")
    assert [r.id for r in found] == [NEW, OLD]  # newest first
    assert found[0].directory == artifacts / "slurm-node" / NEW


def test_a_corrupt_registry_is_one_error_naming_the_fix(project: Path) -> None:
    make_record(project / "artifacts", build_id=OLD)
    (project / "artifacts" / registry.FILENAME).write_bytes(b"not a database" * 100)
    done = invoke(project, "history")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert "registry.sqlite3" in done.stderr and "delete the file" in done.stderr
    assert "Traceback" not in done.stderr


def test_history_filters_and_lists_newest_first(project: Path) -> None:
    artifacts = project / "artifacts"
    make_record(artifacts, build_id=OLD)
    make_record(artifacts, build_id=NEW, status="failed")
    make_record(artifacts, "other", "local", "20260103-000000-abcdef0-000003")
    done = invoke(project, "history", "--image", "slurm-node")
    assert done.returncode == 0, done.stderr
    assert done.stdout.index(NEW) < done.stdout.index(OLD)
    assert "000003" not in done.stdout and "failed" in done.stdout
    bad = invoke(project, "history", "--image", "slurm-nod")
    assert bad.returncode == 2 and "did you mean 'slurm-node'" in bad.stderr
    limit = invoke(project, "history", "--limit", "0")
    assert limit.returncode == 2 and "--limit" in limit.stderr


def test_show_prints_one_build_and_names_the_nearest_id(project: Path) -> None:
    make_record(project / "artifacts", build_id=OLD, os="debian-13")
    done = invoke(project, "show", OLD)
    assert done.returncode == 0, done.stderr
    assert f"build {OLD}" in done.stdout and "verified" in done.stdout
    assert "\nos             debian-13\n" in done.stdout
    assert "3 passed, 0 failed" in done.stdout
    missing = invoke(project, "show", OLD[:-1] + "9")
    assert missing.returncode == 2 and f"did you mean '{OLD}'" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_diff_names_packages_added_removed_and_changed(project: Path) -> None:
    artifacts = project / "artifacts"
    old = make_record(
        artifacts, build_id=OLD, packages={"bash": "5.2-1", "curl": "7.88-1", "gone": "1"}
    )
    new = make_record(
        artifacts, build_id=NEW, packages={"bash": "5.2-2", "curl": "7.88-1", "tree": "2.1"}
    )
    result = builddiff.diff(old, new)
    assert result.packages.added == {"tree": "2.1"}
    assert result.packages.removed == {"gone": "1"}
    assert result.packages.changed == {"bash": ("5.2-1", "5.2-2")}
    done = invoke(project, "diff", OLD, NEW, "--format", "json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["packages"]["changed"] == {"bash": {"old": "5.2-1", "new": "5.2-2"}}
    text = invoke(project, "diff", OLD, NEW).stdout
    assert "  + tree 2.1" in text and "  - gone 1" in text and "  ~ bash 5.2-1 → 5.2-2" in text


def test_diff_shows_rendered_file_changes_without_the_build_ids(project: Path) -> None:
    artifacts = project / "artifacts"
    old = make_record(artifacts, build_id=OLD)
    new = make_record(artifacts, build_id=NEW)
    for record, size in ((old, 8), (new, 10)):
        (record.directory / "packer").mkdir()
        (record.directory / "packer" / "build.pkr.hcl").write_text(
            f'build_id = "{record.id}"\ndisk_size = {size}\n'
        )
    result = builddiff.diff(old, new)
    [unified] = result.files.values()
    assert "-disk_size = 8" in unified and "+disk_size = 10" in unified
    changed = [line for line in unified.splitlines()[2:] if line[:1] in "+-"]
    assert changed == ["-disk_size = 8", "+disk_size = 10"]  # each build's own id is no change


def test_diff_format_is_checked(project: Path) -> None:
    make_record(project / "artifacts", build_id=OLD)
    done = invoke(project, "diff", OLD, OLD, "--format", "yaml")
    assert done.returncode == 2 and "allowed: text, json" in done.stderr


def test_diff_names_the_images_yml_settings_that_changed(project: Path) -> None:
    artifacts = project / "artifacts"
    flavor = {"packages": ["slurmd"], "user": "debian", "desktop": None}
    old = make_record(artifacts, build_id=OLD, settings={"flavor": flavor, "cloud": {"cpus": 2}})
    new = make_record(
        artifacts,
        build_id=NEW,
        settings={"flavor": {**flavor, "packages": ["slurmd", "tree"]}, "cloud": {"cpus": 2}},
    )
    fields = builddiff.diff(old, new).fields
    assert fields == {"flavor.packages": ('["slurmd"]', '["slurmd", "tree"]')}


def test_diff_names_a_layer_of_the_same_recipe_with_other_bytes(project: Path) -> None:
    """Layers are reproducible: the same recipe hash with another sha256 is worth seeing."""
    artifacts = project / "artifacts"
    layer = {"recipe_hash": "ab" * 32, "sha256": "11" * 32, "path": "/cache/layers/x"}
    old = make_record(artifacts, build_id=OLD, base_image=layer)
    new = make_record(artifacts, build_id=NEW, base_image={**layer, "sha256": "22" * 32})
    assert builddiff.diff(old, new).fields == {"base_image.sha256": ("11" * 32, "22" * 32)}


def test_settings_missing_from_an_older_record_are_a_note_not_a_change(project: Path) -> None:
    artifacts = project / "artifacts"
    old = make_record(artifacts, build_id=OLD)
    new = make_record(artifacts, build_id=NEW, settings={"flavor": {"user": "debian"}})
    result = builddiff.diff(old, new)
    assert result.fields == {}
    assert f"images.yml settings not recorded for {OLD}: not compared" in result.notes
    assert not [note for note in result.notes if NEW in note and "settings" in note]


def test_diff_reports_a_change_of_base_os(project: Path) -> None:
    artifacts = project / "artifacts"
    make_record(artifacts, build_id=OLD, os="debian-12")
    make_record(artifacts, build_id=NEW, os="debian-13")
    done = invoke(project, "diff", OLD, NEW, "--format", "json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["fields"] == {"os": {"old": "debian-12", "new": "debian-13"}}
    assert data["notes"] == [f"rendered Packer files not kept for {OLD}, {NEW}: not compared",
                             f"images.yml settings not recorded for {OLD}, {NEW}: not compared"]  # fmt: skip
    assert "  os: debian-12 → debian-13" in invoke(project, "diff", OLD, NEW).stdout


def test_diff_of_builds_on_the_same_os_reports_no_os_change(project: Path) -> None:
    artifacts = project / "artifacts"
    old = make_record(artifacts, build_id=OLD, os="debian-13")
    new = make_record(artifacts, build_id=NEW, os="debian-13")
    result = builddiff.diff(old, new)
    assert "os" not in result.fields and not [n for n in result.notes if "OS" in n]


def test_the_os_of_a_record_from_before_it_was_kept_comes_from_its_settings(
    project: Path,
) -> None:
    artifacts = project / "artifacts"
    chosen = {"local": "debian-12", "aws": "ubuntu-24.04", "gcp": "ubuntu-24.04"}
    old = make_record(
        artifacts, "slurm-node", "aws", OLD, settings={"flavor": {"os": chosen}, "cloud": {}}
    )
    new = make_record(
        artifacts,
        "slurm-node",
        "aws",
        NEW,
        os="debian-13",
        settings={"flavor": {"os": {**chosen, "aws": "debian-13"}}, "cloud": {}},
    )
    assert old.os == "" and builddiff.base_os(old) == "ubuntu-24.04"
    fields = builddiff.diff(old, new).fields
    assert fields == {
        "os": ("ubuntu-24.04", "debian-13"),
        "flavor.os.aws": ("ubuntu-24.04", "debian-13"),
    }


def test_a_record_that_says_nothing_of_its_os_is_a_note_not_a_change(project: Path) -> None:
    artifacts = project / "artifacts"
    old = make_record(artifacts, build_id=OLD)
    new = make_record(artifacts, build_id=NEW, os="debian-13")
    result = builddiff.diff(old, new)
    assert "os" not in result.fields
    assert f"base OS not recorded for {OLD}: not compared" in result.notes


def test_history_and_show_print_hostile_record_text_as_plain_characters(project: Path) -> None:
    """A provisioner's output (guest-controlled) ends up in a record's error: Rich markup in it
    must not crash or restyle `history`, and terminal control sequences must not reach the
    terminal raw from `show`."""
    hostile = "step [/] failed [bold red]x[/] \x1b[2J\x1b]0;owned\x07 done\x9b31m"
    record = make_record(
        project / "artifacts", build_id=OLD, status="building", git_commit="[/]\x1b[5m"
    )
    state.abandoned(record, "failed", hostile)
    done = invoke(project, "history")
    assert done.returncode == 0, done.stderr
    assert OLD in done.stdout and "failed" in done.stdout
    assert "[/]\\x1b" in done.stdout and "\x1b" not in done.stdout
    shown = invoke(project, "show", OLD)
    assert shown.returncode == 0, shown.stderr
    assert not any(ch in shown.stdout for ch in "\x1b\x07\x9b")
    assert "step [/] failed [bold red]x[/] \\x1b[2J\\x1b]0;owned\\x07 done\\x9b31m" in shown.stdout
