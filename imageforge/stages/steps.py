"""A local build's steps against the step cache: where it resumes, and what each step did.

The plan is made after render (the steps' definitions) and the layer (their start). The build
hands it to Packer as variables: the disk to start from, how many steps to skip, and the hook
that saves each later step's disk (imageforge.stages.stephook).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imageforge import log
from imageforge.clouds.local import QMP_SOCKET, recipe
from imageforge.config import settings
from imageforge.config.matrix import Cell
from imageforge.process import qemu
from imageforge.records import state
from imageforge.stages.render import Rendered
from imageforge.stages.stepcache import CacheBusy, StepCache, step_keys

SUBDIR = "steps"


@dataclass(frozen=True)
class StepPlan:
    cache: StepCache
    flavor: str
    scripts: tuple[str, ...]
    keys: tuple[str, ...]
    resume_after: int
    start_backing: Path  # the disk the build VM's overlay stands on

    def packer_env(self, scratch: Path, disk: Path) -> dict[str, str]:
        """PKR_VAR_* for the build, with the plan written where the hook reads it."""
        plan = scratch / "steps.json"
        steps = [{"script": s, "key": k} for s, k in zip(self.scripts, self.keys, strict=True)]
        plan.write_text(
            json.dumps(
                {
                    "cache": str(self.cache.root),
                    "limit": self.cache.limit_bytes,
                    "socket": str(scratch / QMP_SOCKET),
                    "disk": str(disk),
                    "flavor": self.flavor,
                    "resume_after": self.resume_after,
                    "start_backing": str(self.start_backing),
                    "steps": steps,
                }
            )
        )
        hook = [sys.executable, "-m", "imageforge.stages.stephook", str(plan)]
        env = {
            "PKR_VAR_step_hook": shlex.join(hook),
            "PKR_VAR_resume_after": str(self.resume_after),
        }
        if self.resume_after:
            env["PKR_VAR_base_image"] = str(self.start_backing)
            env["PKR_VAR_base_image_checksum"] = f"sha256:{state.sha256(self.start_backing)}"
        return env

    def record(self, completed: int) -> list[dict[str, Any]]:
        """The first `completed` steps, each with its key and where its disk came from."""
        return [
            {
                "index": index,
                "script": script,
                "key": key,
                "source": "cache" if index <= self.resume_after else "ran",
            }
            for index, (script, key) in enumerate(zip(self.scripts, self.keys, strict=True), 1)
            if index <= completed
        ]


def cache() -> StepCache:
    """This user's step cache, with its size limit ($IMAGEFORGE_STEP_CACHE_GB)."""
    limit = int(settings.current().step_cache_gb * 2**30)
    return StepCache(recipe.cache_dir() / SUBDIR, limit)


@contextlib.contextmanager
def reading(wanted: bool = True) -> Iterator[bool]:
    """Hold the step cache for a build that wants it (nothing is evicted meanwhile); whether
    it is usable. A cache that cannot be opened (its directory unwritable, say) costs the
    cache only."""
    store = cache()
    stack = contextlib.ExitStack()
    usable = wanted and store.limit_bytes > 0
    if usable:
        try:
            stack.enter_context(store.reading())
        except OSError as exc:
            log.info(f"step cache {store.root} unusable ({exc}); this build saves no steps")
            usable = False
    with stack:
        yield usable


def plan(cell: Cell, rendered: Rendered, layer: dict[str, Any], *, fresh: bool) -> StepPlan | None:
    """The build's plan, made while reading() is held; None when nothing is cached (a cloud).
    fresh (--force, --refresh) starts from the layer; a step already cached keeps its entry."""
    store = cache()
    if not rendered.steps:
        return None
    # What decides the disk before the first step: the layer, the source and host step, and
    # the CPU the steps run on (a step may build for it): the accelerator chooses it.
    accelerator = qemu.probe_accelerator(cell.cloud_settings.accelerator)
    start = f"{layer['sha256']}\0{rendered.start}\0{accelerator}"
    keys = step_keys(
        hashlib.sha256(start.encode()).hexdigest(), [s.definition for s in rendered.steps]
    )
    resume_after = 0 if fresh else store.resume_point(keys)
    backing = store.disk(keys[resume_after - 1]) if resume_after else Path(layer["path"])
    for key in keys[:resume_after]:
        store.used(key)
    scripts = tuple(s.script for s in rendered.steps)
    return StepPlan(store, cell.flavor_name, scripts, tuple(keys), resume_after, backing)


def announce(plan: StepPlan) -> None:
    for index, script in enumerate(plan.scripts, 1):
        where = "from the step cache" if index <= plan.resume_after else "runs"
        log.info(f"step {index}/{len(plan.scripts)} {script}: {where}")


def evict(plan: StepPlan) -> None:
    """Keep the cache within its limit, oldest use first (not while another build reads)."""
    try:
        with plan.cache.exclusive():
            plan.cache.tidy()
            for entry in plan.cache.evict():
                log.info(f"step cache: dropped {entry.flavor} step {entry.index} {entry.script}")
    except CacheBusy:
        log.info("step cache: another build is using it; not trimmed this time")
    except OSError as exc:  # the build's result stands; only the trimming failed
        log.info(f"step cache: not trimmed ({exc})")
