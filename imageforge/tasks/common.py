"""What every task shares: loading images.yml, and turning errors into messages and exit codes."""

from __future__ import annotations

import functools
import signal
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from invoke import Exit

from imageforge import config, log
from imageforge.errors import ImageforgeError, Interrupted

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_CONFIG = "images.yml"


def _on_sigterm(signum: int, frame: object) -> None:
    raise Interrupted("stopped by SIGTERM")


def friendly(func: F) -> F:
    """Run a task body: user errors become one message and an exit code; tracebacks only
    with IMAGEFORGE_DEBUG=1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            log.error("interrupted")
            raise Exit(code=130) from None
        except ImageforgeError as exc:
            if log.debug_enabled():
                traceback.print_exc()
            log.error(str(exc))
            raise Exit(code=exc.exit_code) from None
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper  # type: ignore[return-value]


def project(path: str | None) -> config.Project:
    return config.load(Path(path or DEFAULT_CONFIG))
