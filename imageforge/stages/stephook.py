"""The step cache's hook in a local build: Packer runs it on this machine after each step.

    python3 -m imageforge.stages.stephook PLAN N

copies the build VM's disk as step N left it into the step cache (imageforge.process.qmp), or
does nothing for a step that came from the cache. PLAN is the build's plan (a JSON file in
its private scratch directory, written by imageforge.stages.steps). A copy that fails costs
the cache, never the build: the hook says so, and later steps of the build are not saved.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

from imageforge.process import qcow2, qmp
from imageforge.stages.stepcache import Entry, StepCache

BROKEN = "step-cache-broken"


def save(plan_path: Path, index: int) -> str:
    """Save step index's disk; the line to print. Never raises: the cache is an optimisation,
    and whatever goes wrong here (a full disk, a vanished monitor) costs it, not the build."""
    broken = plan_path.parent / BROKEN
    partial: Path | None = None
    label = f"step {index}"
    try:
        plan = json.loads(plan_path.read_text())
        step = plan["steps"][index - 1]
        label = f"step {index}/{len(plan['steps'])} {step['script']}"
        if index <= plan["resume_after"]:
            return f"imageforge: {label}: from the step cache"
        if broken.exists():
            return f"imageforge: {label}: not saved (an earlier step was not)"
        cache = StepCache(Path(plan["cache"]), plan["limit"])
        first = index == plan["resume_after"] + 1
        parent = "" if index == 1 else plan["steps"][index - 2]["key"]
        backing = Path(plan["start_backing"]) if first else cache.disk(parent)
        partial = cache.partial(step["key"])
        started = time.monotonic()
        qcow2.overlay(backing, partial, size=qcow2.virtual_size(Path(plan["disk"])))
        qmp.backup(Path(plan["socket"]), Path(plan["disk"]), partial, first=first)
        made = Entry(
            step["key"], parent, str(backing), plan["flavor"], index, step["script"], time.time(), 0
        )
        entry = cache.add(made, partial)
    except Exception as exc:  # see above
        if partial is not None:
            partial.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            broken.touch()
        return f"imageforge: {label}: not saved in the step cache: {exc}"
    if entry is None:  # what stands on the cached one was made from its disk, not this one
        with contextlib.suppress(OSError):
            broken.touch()
        return f"imageforge: {label}: already in the step cache (kept; later steps not saved)"
    size = f"{entry.size / 2**20:.0f} MiB"
    seconds = time.monotonic() - started
    return f"imageforge: {label}: saved in the step cache ({size}, {seconds:.1f}s)"


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python3 -m imageforge.stages.stephook PLAN N", file=sys.stderr)
        return 2
    print(save(Path(argv[0]), int(argv[1])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
