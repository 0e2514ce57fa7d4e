"""The step cache: keys that change from the changed step on, chains that are whole or not
there, eviction that takes what stands on an entry with it, and nothing left half made."""

from __future__ import annotations

import json
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
from imageforge.process import qemu
from imageforge.stages import render, stephook, steps
from imageforge.stages.stepcache import CacheBusy, Entry, StepCache, step_keys

from ..conftest import write

MiB = 2**20
FLAVOR_SCRIPTS = ["provisioners/10-one.sh", "provisioners/20-two.sh"]


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


def test_eviction_drops_the_least_recently_used_chain_first(tmp_path: Path) -> None:
    base = layer(tmp_path)
    cache = StepCache(tmp_path / "steps", 3 * MiB)
    old = step_keys("old", ["a", "b"])
    new = step_keys("new", ["a"])
    add(cache, old[0], "", base, data=2)
    add(cache, old[1], old[0], cache.disk(old[0]), data=2)
    add(cache, new[0], "", base, data=2)
    past = time.time() - 3600
    for key in old:
        os.utime(tmp_path / "steps" / f"{key}.json", (past, past))
    assert cache.size() > 3 * MiB
    dropped = {e.key for e in cache.evict()}
    # The old chain goes, its last step first; the new one, used since, stays.
    assert dropped == set(old)
    assert [e.key for e in cache.entries()] == new
    assert cache.size() <= 3 * MiB
    # Using a chain's last step keeps its first: a chain is as recent as its latest use.
    cache.limit_bytes = 5 * MiB  # room for one chain of two steps
    add(cache, old[0], "", base, data=2)
    add(cache, old[1], old[0], cache.disk(old[0]), data=2)
    os.utime(tmp_path / "steps" / f"{old[0]}.json", (past, past))
    assert {e.key for e in cache.evict()} == set(new)


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
def project(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> config.Project:
    monkeypatch.setattr(qemu, "probe_accelerator", lambda requested="auto": "tcg")
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
    assert scripts == [render.METADATA_GUARD, render.FIRSTBOOT_LIBRARY, *FLAVOR_SCRIPTS]
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
        cell = matrix.find(project, "f", "local")
        plan = steps.plan(cell, rendered(project, "local", out), layer, fresh=False)
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
    with steps.reading() as usable:
        assert usable
    monkeypatch.setenv("IMAGEFORGE_STEP_CACHE_GB", "0")
    with steps.reading() as usable:
        assert not usable
    with steps.reading(wanted=False) as usable:  # a cloud build
        assert not usable


def test_an_entry_is_never_replaced_and_stale_children_go(tmp_path: Path) -> None:
    """What stands on an entry was made from its disk: a second copy of the same step (a
    --force build) is dropped, and a parent made anew drops children left from the old one."""
    cache = StepCache(tmp_path / "steps", 100 * MiB)
    base = layer(tmp_path)
    keys = step_keys("start", ["a", "b"])
    first = add(cache, keys[0], "", base)
    add(cache, keys[1], keys[0], cache.disk(keys[0]))
    again = cache.partial(keys[0])
    again.write_bytes(b"another copy")
    assert cache.add(first, again) is None and not again.exists()
    assert cache.resume_point(keys) == 2
    # The parent's description lost (a crash between its renames): its child is stale.
    (tmp_path / "steps" / f"{keys[0]}.json").unlink()
    assert cache.resume_point(keys) == 0
    add(cache, keys[0], "", base)
    assert cache.resume_point(keys) == 1
    assert not (tmp_path / "steps" / f"{keys[1]}.json").exists()


def test_eviction_takes_a_chains_last_steps_first(tmp_path: Path) -> None:
    base = layer(tmp_path)
    cache = StepCache(tmp_path / "steps", 3 * MiB)
    keys = step_keys("start", ["a", "b"])
    add(cache, keys[0], "", base, data=2)
    add(cache, keys[1], keys[0], cache.disk(keys[0]), data=2)
    past = time.time() - 3600
    os.utime(tmp_path / "steps" / f"{keys[1]}.json", (past, past))  # used long ago
    assert {e.key for e in cache.evict()} == {keys[1]}
    assert cache.resume_point(keys) == 1


def test_the_hook_never_fails_the_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A copy that cannot be made costs the cache: the hook says so, exits 0, and saves no
    later step (which would stand on the missing one)."""
    base = layer(tmp_path)
    keys = step_keys("start", ["a", "b"])
    plan = tmp_path / "steps.json"
    plan.write_text(
        json.dumps(
            {
                "cache": str(tmp_path / "steps"),
                "limit": 10 * MiB,
                "socket": str(tmp_path / "no-monitor.sock"),
                "disk": str(base),
                "flavor": "f",
                "resume_after": 0,
                "start_backing": str(base),
                "steps": [{"script": "a.sh", "key": keys[0]}, {"script": "b.sh", "key": keys[1]}],
            }
        )
    )
    assert stephook.main([str(plan), "1"]) == 0
    assert "not saved in the step cache" in capsys.readouterr().out
    assert "not saved (an earlier step was not)" in stephook.save(plan, 2)
    assert not list((tmp_path / "steps").glob(".partial-*"))
    assert "not saved in the step cache" in stephook.save(tmp_path / "missing.json", 1)
