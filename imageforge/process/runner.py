"""The one way imageforge runs external commands (packer, qemu, qemu-img, mmdebstrap, ...).

Commands are argument lists, never shell strings. Output is streamed to the console and to a
log file, secrets are masked, Ctrl-C reaches the whole process group, and a failure raises one
error type that carries the command, its exit code and the tail of its output. Every command
dies with imageforge, even when imageforge is killed with SIGKILL (see watchdog), unless it is
started with die_with_parent=False (a cluster's VMs, which outlive `invoke cluster up`).
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from imageforge import log
from imageforge.errors import CommandError, Interrupted
from imageforge.process import watchdog

TAIL_LINES = 25
GRACE_SECONDS = 20.0
# Process groups of the commands running now, for a second signal to kill at once.
_running_groups: set[int] = set()


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
    die_with_parent: bool = True,
    leaves_running: bool = False,
) -> CommandResult:
    """Run argv to completion, streaming its combined output; raise CommandError on failure.

    On Ctrl-C or SIGTERM the process group gets SIGINT, then SIGKILL after `grace` seconds,
    and Interrupted is raised. die_with_parent=False lets what the command leaves running
    (a daemon) outlive imageforge. leaves_running: what the command starts may outlive it and
    hold its output open (Packer's QEMU, kept by -on-error=abort), so the command's own exit
    ends the output.
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
            preexec_fn=watchdog.die_with_parent() if die_with_parent else None,
        )
    except FileNotFoundError as exc:
        raise CommandError(args, 127, [f"{args[0]}: command not found"], what=what) from exc
    expired = threading.Event()
    timer = threading.Timer(timeout or 0, _expire, (proc, grace, expired)) if timeout else None
    with _open_log(logfile) as logf, _tracked(proc.pid, die_with_parent), _running(timer):
        try:
            if stdin is not None:
                assert proc.stdin is not None
                proc.stdin.write(stdin)
                proc.stdin.close()
            for raw in _output(proc, leaves_running):
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
            returncode = proc.wait()
            if expired.is_set():  # stopped by the timer, output or not
                raise CommandError(args, -1, list(tail), what=f"{what or args[0]} (timed out)")
        except (KeyboardInterrupt, Interrupted) as exc:
            stop_group(proc, grace=grace)
            cause, signum = "interrupted", int(signal.SIGINT)
            if isinstance(exc, Interrupted):
                cause, signum = exc.message, exc.signum
            raise Interrupted(f"{cause} while running {what or args[0]}", signum=signum) from exc
        except BaseException:
            stop_group(proc, grace=grace)
            raise
    if check and returncode != 0:
        raise CommandError(args, returncode, list(tail), what=what)
    return CommandResult(args, returncode, "\n".join(lines))


def _output(proc: subprocess.Popen[str], leaves_running: bool) -> Iterator[str]:
    """The command's output lines, until the end of its output or, if what it started may hold
    that open, until the command has exited and a second has passed without a line (5 s at
    most: what is left running may write on)."""
    assert proc.stdout is not None
    if not leaves_running:
        yield from proc.stdout
        return
    lines: queue.Queue[str | None] = queue.Queue()
    stdout = proc.stdout

    def pump() -> None:
        for raw in stdout:
            lines.put(raw)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    exited: float | None = None  # when the command exited: then a second's quiet, 5 s at most
    last = time.monotonic()
    while True:
        try:
            raw = lines.get(timeout=0.2)
        except queue.Empty:
            raw = ""
        now = time.monotonic()
        if raw is None:
            return
        if raw:
            last = now
            yield raw
        if exited is None and proc.poll() is not None:
            exited = now
        if exited is not None and (now - last > 1.0 or now - exited > 5.0):
            return


def _expire(proc: subprocess.Popen[str], grace: float, expired: threading.Event) -> None:
    """The timeout: the command is stopped whether or not it still writes anything."""
    expired.set()
    stop_group(proc, grace=grace)


@contextlib.contextmanager
def _running(timer: threading.Timer | None) -> Iterator[None]:
    """A timer that runs while the command does, and never after."""
    if timer is None:
        yield
        return
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def output(argv: Sequence[str | os.PathLike[str]], **kwargs: object) -> str:
    """Run a short command quietly and return its output."""
    return run(argv, stream=False, **kwargs).output  # type: ignore[arg-type]


def stop_group(
    proc: subprocess.Popen[str] | subprocess.Popen[bytes],
    *,
    grace: float = GRACE_SECONDS,
    first: signal.Signals = signal.SIGINT,
) -> None:
    """Stop a process started in its own session: `first`, then SIGKILL for the whole group.

    The SIGKILL comes in every case, even when a signal interrupts the grace period.
    """
    pgid = proc.pid
    try:
        if proc.poll() is None:
            _signal_group(pgid, first)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
    finally:
        # Children may outlive the leader (packer's qemu); the group goes in every case.
        _signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def kill_running() -> None:
    """SIGKILL every process group a command of this process leads now (a second signal)."""
    for pgid in list(_running_groups):
        _signal_group(pgid, signal.SIGKILL)


@contextlib.contextmanager
def _tracked(pgid: int, die_with_parent: bool) -> Iterator[None]:
    """Known to kill_running while it runs, and to the watchdog if it must die with us."""
    _running_groups.add(pgid)
    if die_with_parent:
        watchdog.watch(pgid)
    try:
        yield
    finally:
        _running_groups.discard(pgid)
        if die_with_parent:
            watchdog.unwatch(pgid)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@contextlib.contextmanager
def _open_log(logfile: Path | None) -> Iterator[IO[str] | None]:
    if logfile is None:
        yield None
        return
    with open(private_log(logfile), "a", encoding="utf-8") as handle:
        yield handle


def private_log(path: Path) -> int:
    """A log opened for appending, made 0600 if new: commands' output can hold secrets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)


@contextlib.contextmanager
def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    logfile: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    die_with_parent: bool = True,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a long-running process (a VM, a server) and stop its whole group on the way out.

    It gets SIGKILL when the thread that started it ends: start it from the thread that
    stays (the main thread), or pass die_with_parent=False.
    """
    args = [os.fspath(a) for a in argv]
    log.debug(f"$ {' '.join(args)} &")
    with open(private_log(logfile), "ab") as handle:
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            env={**os.environ, **env} if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=watchdog.die_with_parent() if die_with_parent else None,
        )
    with _tracked(proc.pid, die_with_parent):
        try:
            yield proc
        finally:
            stop_group(proc, grace=10, first=signal.SIGTERM)
