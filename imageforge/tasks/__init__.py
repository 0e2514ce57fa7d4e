"""The Invoke task tree: one collection per concern, assembled for tasks.py."""

from invoke import Collection

from imageforge.tasks import images

namespace = Collection()
for module in (images,):
    for task in module.TASKS:
        namespace.add_task(task)
