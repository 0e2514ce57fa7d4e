"""The error types imageforge shows to users: a message, an optional hint and an exit code."""

from __future__ import annotations

import signal


class ImageforgeError(Exception):
    """An error a user can act on; shown as one message, never as a traceback."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class ConfigError(ImageforgeError):
    """images.yml (or a command-line choice) is invalid."""

    exit_code = 2


class CommandError(ImageforgeError):
    """An external command failed; carries the command, its exit code and its output tail."""

    def __init__(
        self, argv: list[str], returncode: int, tail: list[str], *, what: str = ""
    ) -> None:
        self.argv = argv
        self.returncode = returncode
        while tail and not tail[-1].strip():
            tail = tail[:-1]
        self.tail = tail
        shown = what or " ".join(argv[:3])
        lines = "\n".join(f"    {line}" for line in tail)
        message = f"{shown} failed with exit code {returncode}"
        if tail:
            message += f"; last lines of its output:\n{lines}"
        super().__init__(message)


class Interrupted(ImageforgeError):
    """The run was stopped by a signal (Ctrl-C, SIGTERM, SIGHUP); exits with 128 + its number."""

    def __init__(self, message: str, *, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
