"""Console output: nested, timed steps (like mkosi's complete_step) and streamed tool output."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from rich.console import Console
from rich.markup import escape

from imageforge.config import settings

console = Console(stderr=True, highlight=False, soft_wrap=True)
_depth = 0


def debug_enabled() -> bool:
    """Whether --debug (IMAGEFORGE_DEBUG=1) asked for tracebacks and command lines."""
    try:
        return settings.current().debug
    except Exception:  # a bad setting elsewhere is reported by whoever needs it
        return False


def _indent() -> str:
    return "  " * _depth


def info(message: str) -> None:
    console.print(f"{_indent()}{escape(message)}")


def warn(message: str) -> None:
    console.print(f"{_indent()}[yellow]warning:[/] {escape(message)}")


def error(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}")


def debug(message: str) -> None:
    if debug_enabled():
        console.print(f"{_indent()}[dim]{escape(message)}[/]")


def output(line: str, prefix: str | None = None) -> None:
    """One line of a tool's output, indented under the current step."""
    tag = f"[cyan]{escape(prefix)}[/] " if prefix else ""
    console.print(f"{_indent()}  {tag}[dim]{escape(line)}[/]")


@contextlib.contextmanager
def step(title: str) -> Iterator[dict[str, float]]:
    """A nested, timed step; yields a dict whose 'seconds' is filled in on exit."""
    global _depth
    timing: dict[str, float] = {}
    console.print(f"{_indent()}[bold]▶ {escape(title)}[/]")
    start = time.monotonic()
    _depth += 1
    ok = False
    try:
        yield timing
        ok = True
    finally:
        _depth -= 1
        timing["seconds"] = round(time.monotonic() - start, 2)
        mark = "[green]✓[/]" if ok else "[red]✗[/]"
        console.print(f"{_indent()}{mark} {escape(title)} [dim]({timing['seconds']:.1f}s)[/]")
