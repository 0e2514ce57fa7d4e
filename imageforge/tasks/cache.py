"""The step cache of local builds: what it holds, and emptying it."""

from __future__ import annotations

import time

from invoke.context import Context
from invoke.tasks import task
from rich.table import Table

from imageforge import log
from imageforge.stages import steps
from imageforge.stages.stepcache import age
from imageforge.tasks.common import friendly, out

HELP = {"clear": "remove every cached step (refused while a build uses the cache)"}


@task(name="cache", help=HELP)
@friendly
def cache_(c: Context, clear: bool = False) -> None:
    """Show the step cache of local builds (each step's disk, by flavor), or empty it."""
    store = steps.cache()
    if clear:
        with store.exclusive():
            freed = store.clear()
        log.info(f"step cache emptied: {freed / 2**20:.0f} MiB freed ({store.root})")
        return
    entries = store.entries()
    total = sum(e.size for e in entries)
    limit = store.limit_bytes / 2**30
    table = Table(title=f"step cache {store.root}: {total / 2**20:.0f} MiB of {limit:g} GiB")
    for column in ("flavor", "step", "script", "key", "MiB", "made", "used"):
        table.add_column(column)
    for entry in sorted(entries, key=lambda e: (e.flavor, e.index)):
        table.add_row(
            entry.flavor,
            str(entry.index),
            entry.script,
            entry.key[:12],
            f"{entry.size / 2**20:.0f}",
            _ago(age(entry)),
            _ago(time.time() - store.last_used(entry)),
        )
    out.print(table)


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return "just now"


TASKS = [cache_]
