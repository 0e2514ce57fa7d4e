"""The Invoke task tree: one collection per concern, assembled for tasks.py."""

from invoke import Collection

from imageforge.tasks import cluster, images, lifecycle, registry, report, sharing, vagrant

namespace = Collection()
for module in (images, lifecycle, sharing, cluster, registry, report, vagrant):
    for task in module.TASKS:
        namespace.add_task(task)
