"""The one way imageforge runs external commands (packer, qemu, qemu-img, mmdebstrap, ...).

Commands are argument lists, never shell strings. Output is streamed to the console and to a
log file, secrets are masked, Ctrl-C reaches the whole process group, and a failure raises one
error type that carries the command, its exit code and the tail of its output.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from imageforge import log
from imageforge.errors import CommandError, Interrupted

TAIL_LINES = 25
GRACE_SECONDS = 20.0


@dataclass(frozen=True)
class CommandResult:
    """What a finished command left behind."""

    argv: list[str]
    returncode: int
    output: str


def redact(text: str, secrets: Sequence[str]) -> str:
    """Mask every secret in text."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    logfile: Path | None = None,
    prefix: str | None = None,
    stream: bool = True,
    check: bool = True,
    secrets: Sequence[str] = (),
    what: str = "",
    on_line: Callable[[str], None] | None = None,
    stdin: str | None = None,
    timeout: float | None = None,
    grace: float = GRACE_SECONDS,
) -> CommandResult:
    """Run argv to completion, streaming its combined output; raise CommandError on failure.

    On Ctrl-C or SIGTERM the process group gets SIGINT, then SIGKILL after `grace` seconds,
    and Interrupted is raised.
    """
    args = [os.fspath(a) for a in argv]
    full_env = {**os.environ, **env} if env is not None else None
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    lines: list[str] = []
    log.debug(f"$ {' '.join(args)}")
    try:
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise CommandError(args, 127, [f"{args[0]}: command not found"], what=what) from exc
    deadline = time.monotonic() + timeout if timeout else None
    with _open_log(logfile) as logf:
        try:
            if stdin is not None:
                assert proc.stdin is not None
                proc.stdin.write(stdin)
                proc.stdin.close()
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = redact(raw.rstrip("\n"), secrets)
                lines.append(line)
                tail.append(line)
                if logf:
                    logf.write(line + "\n")
                    logf.flush()
                if stream:
                    log.output(line, prefix)
                if on_line:
                    on_line(line)
                if deadline and time.monotonic() > deadline:
                    stop_group(proc, grace=grace)
                    raise CommandError(args, -1, list(tail), what=f"{what or args[0]} (timed out)")
            returncode = proc.wait()
        except (KeyboardInterrupt, Interrupted) as exc:
            stop_group(proc, grace=grace)
            raise Interrupted(f"interrupted while running {what or args[0]}") from exc
        except BaseException:
            stop_group(proc, grace=grace)
            raise
    if check and returncode != 0:
        raise CommandError(args, returncode, list(tail), what=what)
    return CommandResult(args, returncode, "\n".join(lines))


def output(argv: Sequence[str | os.PathLike[str]], **kwargs: object) -> str:
    """Run a short command quietly and return its output."""
    return run(argv, stream=False, **kwargs).output  # type: ignore[arg-type]


def stop_group(proc: subprocess.Popen[str], *, grace: float = GRACE_SECONDS) -> None:
    """Stop a process started in its own session: SIGINT, then SIGKILL for the whole group."""
    pgid = proc.pid
    if proc.poll() is None:
        _signal_group(pgid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    # Children may outlive the leader (packer's qemu); the group goes in every case.
    _signal_group(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@contextlib.contextmanager
def _open_log(logfile: Path | None) -> Iterator[IO[str] | None]:
    if logfile is None:
        yield None
        return
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with logfile.open("a", encoding="utf-8") as handle:
        yield handle


@contextlib.contextmanager
def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    logfile: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a long-running process (a VM, a server) and stop its whole group on the way out."""
    args = [os.fspath(a) for a in argv]
    log.debug(f"$ {' '.join(args)} &")
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with logfile.open("ab") as handle:
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            env={**os.environ, **env} if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        _signal_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
