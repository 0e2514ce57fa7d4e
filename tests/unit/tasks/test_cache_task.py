"""`invoke cache`: what the step cache holds, and --clear, refused while a build uses it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from imageforge.stages import steps
from imageforge.stages.stepcache import Entry, step_keys

from ..conftest import ROOT, write


def invoke(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=project, capture_output=True, text=True
    )


def cached_step(project: Path) -> Entry:
    store = steps.cache()
    layer = project / "layer.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", layer, "64M"], check=True)
    [key] = step_keys("start", ["a"])
    partial = store.partial(key)
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", layer, partial]
    subprocess.run(argv, check=True)
    entry = Entry(key, "", str(layer), "slurm-node", 3, "provisioners/x.sh", time.time(), 0)
    return store.add(entry, partial)


def test_cache_lists_then_clears(scratch: Path) -> None:
    write(scratch, "flavors:\n  a: {}\n")
    (scratch / "tasks.py").write_text((ROOT / "tasks.py").read_text())
    entry = cached_step(scratch)
    shown = invoke(scratch, "cache")
    assert shown.returncode == 0, shown.stderr
    assert "slurm-node" in shown.stdout and entry.key[:12] in shown.stdout
    assert "provisioners/x.sh" in shown.stdout
    with steps.cache().reading():  # a build is using it
        busy = invoke(scratch, "cache", "--clear")
    assert busy.returncode != 0 and "a build is using the step cache" in busy.stderr
    assert steps.cache().get(entry.key) is not None
    cleared = invoke(scratch, "cache", "--clear")
    assert cleared.returncode == 0, cleared.stderr
    assert "step cache emptied" in cleared.stderr
    assert steps.cache().entries() == []
