"""What every task shares: loading images.yml, signals, and errors as one line and an exit code."""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from invoke.exceptions import Exit, ParseError, UnexpectedExit
from rich.console import Console

from imageforge import config, log
from imageforge.config import matrix
from imageforge.errors import ConfigError, ImageforgeError, Interrupted
from imageforge.process import reap, signals
from imageforge.records import state

# stdout: what a task is asked for (a table, a list); not a terminal (a pipe, a file, a CI log):
# wide enough that no name is cut.
out = Console(highlight=False, soft_wrap=True)
if not out.is_terminal:
    out = Console(highlight=False, soft_wrap=True, width=160)

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_CONFIG = "images.yml"
USER_ERROR = 2  # what the user can fix: a file, a permission, a value
INTERNAL_ERROR = 1
_reaped: set[Path] = set()


def friendly(func: F) -> F:
    """Run a task body with signals handled (see signals); every error becomes one message and
    an exit code. Tracebacks only with IMAGEFORGE_DEBUG=1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with signals.handled(), state.one_command():
            try:
                return func(*args, **kwargs)
            except Exit:
                raise
            except (KeyboardInterrupt, Exception) as exc:
                message, code = describe(exc)
                if log.debug_enabled():
                    traceback.print_exc()
                log.error(message)
                raise Exit(code=code) from None

    return wrapper  # type: ignore[return-value]


def describe(exc: BaseException) -> tuple[str, int]:
    """The line a user sees for an exception, and the exit code."""
    if isinstance(exc, KeyboardInterrupt | Interrupted):
        default = exc.exit_code if isinstance(exc, Interrupted) else 130
        return str(exc) or "interrupted", signals.exit_code(default)
    if isinstance(exc, ImageforgeError):
        return str(exc), exc.exit_code
    if isinstance(exc, UnicodeDecodeError):
        where = f" at byte {exc.start}" if exc.start else ""
        return f"cannot read text: not {exc.encoding} ({exc.reason}{where})", USER_ERROR
    if isinstance(exc, OSError):
        return _os_error(exc), USER_ERROR
    if isinstance(exc, RuntimeError) and str(exc).startswith("Symlink loop"):
        return str(exc), USER_ERROR  # Path.resolve before Python 3.13: an OSError in disguise
    if isinstance(exc, ParseError):
        return str(exc), USER_ERROR
    if isinstance(exc, UnexpectedExit):
        result = exc.result
        return f"{result.command!r} failed with exit code {result.exited}", USER_ERROR
    first = (str(exc).strip().splitlines() or [""])[0]
    return (
        f"internal error: {type(exc).__name__}: {first}; "
        "run with IMAGEFORGE_DEBUG=1 for the traceback",
        INTERNAL_ERROR,
    )


def _os_error(exc: OSError) -> str:
    """'images.yml: Permission denied', from an OSError with or without file names."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is None:
        return reason
    where = str(exc.filename)
    if exc.filename2 is not None:
        where += f" → {exc.filename2}"
    return f"{where}: {reason}"


def integer(value: Any, option: str, *, minimum: int | None = None) -> int:
    """A command-line integer (declare the task argument as a string), or a one-line error."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{option} must be an integer, not {value!r}") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{option} must be at least {minimum}, not {number}")
    return number


def project(path: str | None) -> config.Project:
    """Load images.yml; first, once per project, reap what a killed earlier run left."""
    config_path = Path(path or DEFAULT_CONFIG)
    root = config_path.absolute().parent
    if root not in _reaped:
        _reaped.add(root)
        reap.reap(root)
    return matrix.load(config_path)
