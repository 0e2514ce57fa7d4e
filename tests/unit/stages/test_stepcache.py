"""The step cache: keys that change from the changed step on, chains that are whole or not
there, eviction that takes what stands on an entry with it, and nothing left half made."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import hcl2
import pytest

from imageforge import config
from imageforge.config import matrix
from imageforge.packer import PackerVersion
from imageforge.stages import render, steps
from imageforge.stages.stepcache import CacheBusy, Entry, StepCache, step_keys

from ..conftest import write

MiB = 2**20


def test_a_changed_step_changes_its_key_and_every_later_one_only() -> None:
    before = step_keys("layer", ["a", "b", "c", "d"])
    after = step_keys("layer", ["a", "b", "C", "d"])
    assert before[:2] == after[:2] and all(
        x != y for x, y in zip(before[2:], after[2:], strict=True)
    )
    assert step_keys("other layer", ["a", "b", "c", "d"])[0] != before[0]
    assert len(set(before)) == 4


def layer(tmp_path: Path) -> Path:
    path = tmp_path / "layer.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "64M"], check=True)
    return path


def add(cache: StepCache, key: str, parent: str, backing: Path, data: int = 0) -> Entry:
    """An entry whose disk holds `data` MiB written by its step."""
    partial = cache.partial(key)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, partial],
        check=True,
    )
    if data:
        pattern = f"write -P 0x5a 0 {data}M"
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", pattern, partial], check=True, stdout=-3)
    entry = Entry(key, parent, str(backing), "f", 1, "s.sh", time.time(), 0)
    return cache.add(entry, partial)


def test_resume_point_is_the_longest_whole_prefix(tmp_path: Path) -> None:
    cache = StepCache(tmp_path / "steps", 10 * MiB)
    base = layer(tmp_path)
    keys = step_keys("start", ["a", "b", "c"])
    first = add(cache, keys[0], "", base)
    add(cache, keys[1], keys[0], cache.disk(keys[0]))
    assert cache.resume_point(keys) == 2
    assert cache.resume_point(step_keys("start", ["a", "x", "c"])) == 1
    assert cache.resume_point(step_keys("else", ["a", "b", "c"])) == 0
    # Files private to the user, like the build VM's own disk.
    assert stat.S_IMODE((tmp_path / "steps").stat().st_mode) == 0o700
    for path in (tmp_path / "steps").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # A chain with a missing link is no chain: neither the entry nor what stands on it counts.
    cache.disk(first.key).unlink()
    assert cache.resume_point(keys) == 0 and cache.entries() == []
    base.unlink()
    assert cache.get(keys[0]) is None


def test_an_interrupted_add_leaves_no_entry_and_tidy_removes_its_copy(tmp_path: Path) -> None:
    cache = StepCache(tmp_path / "steps", 10 * MiB)
    base = layer(tmp_path)
    [key] = step_keys("start", ["a"])
    dead = tmp_path / "steps" / f".partial-{key}-999999999.qcow2"  # its writer is gone
    cache.partial(key)  # the directory
    dead.write_bytes(b"half a copy")
    mine = cache.partial(key)  # this process still writes it
    mine.write_bytes(b"being written")
    (tmp_path / "steps" / f"{key}.qcow2").write_bytes(b"a disk without its description")
    assert cache.get(key) is None and cache.resume_point([key]) == 0
    removed = cache.tidy()
    assert sorted(removed) == sorted([dead.name, f"{key}.qcow2"])
    assert mine.exists()
    mine.unlink()
    add(cache, key, "", base)
    assert cache.tidy() == [] and cache.resume_point([key]) == 1


def test_eviction_drops_the_oldest_with_what_stands_on_it(tmp_path: Path) -> None:
    base = layer(tmp_path)
    cache = StepCache(tmp_path / "steps", 5 * MiB)
    old = step_keys("old", ["a", "b"])
    new = step_keys("new", ["a"])
    add(cache, old[0], "", base, data=2)
    add(cache, old[1], old[0], cache.disk(old[0]), data=2)
    add(cache, new[0], "", base, data=2)
    past = time.time() - 3600
    for key in old:
        os.utime(tmp_path / "steps" / f"{key}.json", (past, past))
    cache.used(old[1])  # using the newest step of a chain does not protect its parent
    assert cache.size() > 5 * MiB
    dropped = {e.key for e in cache.evict()}
    # old[0] was used longest ago: it goes, and old[1], which stands on it, with it.
    assert dropped == set(old)
    assert [e.key for e in cache.entries()] == new
    assert cache.size() <= 5 * MiB


def test_clear_waits_for_no_build_and_then_empties_the_cache(tmp_path: Path) -> None:
    cache = StepCache(tmp_path / "steps", 10 * MiB)
    [key] = step_keys("start", ["a"])
    add(cache, key, "", layer(tmp_path), data=1)
    with cache.reading(), pytest.raises(CacheBusy), cache.exclusive():
        pass
    with cache.exclusive():
        assert cache.clear() >= MiB
    assert cache.entries() == [] and [p.name for p in (tmp_path / "steps").iterdir()] == [".lock"]


@pytest.fixture
def project(scratch: Path) -> config.Project:
    for name in ("10-one.sh", "20-two.sh"):
        (scratch / "provisioners" / name).write_text(f"#!/bin/sh\necho {name}\n")
    flavor = "flavors:\n  f:\n    provisioners: [provisioners/10-one.sh, provisioners/20-two.sh]\n"
    write(scratch, flavor)
    return config.load(scratch / "images.yml")


def rendered(project: config.Project, cloud: str, out: Path) -> render.Rendered:
    cell = matrix.find(project, "f", cloud)
    return render.render(project, cell, PackerVersion(1, 6, 6), out)


def test_local_steps_are_numbered_guarded_and_saved_after(project: config.Project) -> None:
    result = rendered(project, "local", project.root / "out")
    scripts = [s.script for s in result.steps]
    assert scripts == [render.METADATA_GUARD, render.FIRSTBOOT_LIBRARY, *_flavor_scripts()]
    text = (result.directory / "build.pkr.hcl").read_text()
    options = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False)
    build = hcl2.loads(text, serialization_options=options)["build"][0]
    kinds = [next(iter(p)) for p in build["provisioner"]]
    # file, host step, then each cached step followed by its hook, the build id, cleanup.
    assert kinds == ["file", "shell", *["shell", "shell-local"] * 4, "shell", "shell"]
    hooks = [p["shell-local"]["inline"] for p in build["provisioner"] if "shell-local" in p]
    assert hooks == [[f"${{var.step_hook}} {n}"] for n in range(1, 5)]
    shells = [p["shell"] for p in build["provisioner"] if "shell" in p]
    for number, shell in enumerate(shells[1:5], 1):
        command = shell["execute_command"]
        assert command.startswith(f"if [ {number} -le ${{var.resume_after}} ]; then exit 0; fi;")
        assert command.endswith("{{ .Path }} && sync")
    assert shells[-2]["script"] == render.BUILD_ID_STEP
    for unguarded in (shells[0], shells[-2], shells[-1]):  # host, build id, cleanup: always
        assert unguarded["execute_command"] == render.EXECUTE
        assert "IMAGEFORGE_BUILD_ID=${var.build_id}" in unguarded["environment_vars"]
    for cached in shells[1:5]:  # what a cached step writes cannot depend on the build
        assert not any(v.startswith("IMAGEFORGE_BUILD_ID") for v in cached["environment_vars"])


def _flavor_scripts() -> list[str]:
    return ["provisioners/10-one.sh", "provisioners/20-two.sh"]


@pytest.mark.parametrize("cloud", ["aws", "gcp", "openstack"])
def test_cloud_builds_have_no_step_cache(project: config.Project, cloud: str) -> None:
    result = rendered(project, cloud, project.root / cloud)
    assert result.steps == ()
    assert "shell-local" not in (result.directory / "build.pkr.hcl").read_text()
    assert "resume_after" not in (result.directory / "build.pkr.hcl").read_text()


def test_a_changed_script_moves_its_key_and_the_later_ones(project: config.Project) -> None:
    layer = {"sha256": "1" * 64, "path": "/layer.qcow2"}

    def keys() -> tuple[str, ...]:
        out = project.root / "out"
        plan = steps.plan("f", rendered(project, "local", out), layer, fresh=False)
        assert plan is not None
        return plan.keys

    before = keys()
    assert keys() == before  # stable
    (project.root / "provisioners" / "20-two.sh").write_text("#!/bin/sh\necho changed\n")
    after = keys()
    assert after[:3] == before[:3] and after[3] != before[3]
    (project.root / "provisioners" / "10-one.sh").write_text("#!/bin/sh\necho changed\n")
    assert keys()[2] != after[2] and keys()[:2] == before[:2]
    # The host step comes before every cached step: changing it changes them all.
    host = project.root / render.HOST_PASSTHROUGH
    host.write_text(host.read_text() + "\n# changed\n")
    assert all(x != y for x, y in zip(keys(), after, strict=True))


def test_a_limit_of_zero_turns_the_cache_off(
    project: config.Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEFORGE_STEP_CACHE_GB", "0")
    layer = {"sha256": "1" * 64, "path": "/layer.qcow2"}
    assert (
        steps.plan("f", rendered(project, "local", project.root / "o"), layer, fresh=False) is None
    )
