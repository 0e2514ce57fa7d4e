"""The Invoke task tree: one collection per concern, assembled for tasks.py."""

from invoke.collection import Collection
from invoke.exceptions import Exit, ParseError
from invoke.program import Program

from imageforge.tasks import (
    attest,
    cache,
    cluster,
    images,
    lifecycle,
    outdated,
    registry,
    report,
    sharing,
    vagrant,
)

namespace = Collection()
for module in (
    images,
    lifecycle,
    sharing,
    cluster,
    registry,
    report,
    outdated,
    vagrant,
    cache,
    attest,
):
    for task in module.TASKS:
        namespace.add_task(task)


def _usage_errors_exit_2() -> None:
    """A task's usage error (an unknown flag, a missing value) exits 2, as every other usage
    error of imageforge does; Invoke itself exits 1. Invoke reads the task arguments after it
    has loaded tasks.py, which imports this package, so the change holds for this run."""
    parse_tasks = Program.parse_tasks
    if getattr(parse_tasks, "exits_2", False):
        return

    def parse_tasks_exiting_2(self: Program) -> None:
        try:
            parse_tasks(self)
        except ParseError as exc:
            raise Exit(f"error: {exc}", code=2) from None

    parse_tasks_exiting_2.exits_2 = True  # type: ignore[attr-defined]
    Program.parse_tasks = parse_tasks_exiting_2  # type: ignore[method-assign]


_usage_errors_exit_2()
