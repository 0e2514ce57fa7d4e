"""A fake of imageforge.process.runner.run, in the style of invoke's MockContext: scripted answers per
command prefix, and a list of every command run, so orchestration is tested in milliseconds."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imageforge.process.runner import CommandResult

Answer = (
    str | CommandResult | BaseException | Callable[[list[str], dict[str, Any]], str | CommandResult]
)


@dataclass
class FakeRunner:
    """Answers commands whose argv starts with a scripted prefix; anything else fails the test."""

    answers: list[tuple[tuple[str, ...], Answer]] = field(default_factory=list)
    calls: list[list[str]] = field(default_factory=list)

    def on(self, *prefix: str, answer: Answer = "") -> FakeRunner:
        self.answers.append((prefix, answer))
        return self

    def ran(self, *prefix: str) -> list[list[str]]:
        """The commands run so far that start with prefix (program names without their path)."""
        return [argv for argv in self.calls if _matches(argv, prefix)]

    def __call__(self, argv: Sequence[str | os.PathLike[str]], **kwargs: Any) -> CommandResult:
        args = [os.fspath(a) for a in argv]
        self.calls.append(args)
        for prefix, answer in self.answers:
            if _matches(args, prefix):
                if isinstance(answer, BaseException):
                    raise answer
                output = answer(args, kwargs) if callable(answer) else answer
                if isinstance(output, CommandResult):  # an exit code of its own (check=False)
                    return output
                return CommandResult(args, 0, output)
        raise AssertionError(f"unexpected command: {args}")


def _matches(argv: list[str], prefix: tuple[str, ...]) -> bool:
    program = [Path(argv[0]).name, *argv[1:]] if argv else []
    return program[: len(prefix)] == list(prefix)
