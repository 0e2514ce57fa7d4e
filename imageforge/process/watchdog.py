"""Children die with imageforge, however it ends, even by SIGKILL.

Every command runner starts leads a process group of its own. The kernel's parent-death signal
(PR_SET_PDEATHSIG, set in the child before it runs the command) kills that leader when the
thread that started it dies; it does not reach the leader's own children, such as the QEMU that
Packer's plugin starts. For those, a small watchdog process, started once on the first command,
reads the group ids of the running commands from a pipe. When the pipe closes (imageforge has
exited, whatever the cause) it kills every group still on its list.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import IO

PR_SET_PDEATHSIG = 1
WATCHDOG = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
groups = set()
for line in sys.stdin:
    op, pgid = line[:1], int(line[1:])
    (groups.add if op == "+" else groups.discard)(pgid)
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""

_pipe: IO[str] | None = None
_watchdog: subprocess.Popen[str] | None = None


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    return None


# Looked up once here, so the child between fork and exec only calls it.
_prctl = _load_prctl()


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that gives the child SIGKILL when this thread (its parent) dies."""
    if _prctl is None:
        return None
    prctl, parent = _prctl, os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody will tell us
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def watch(pgid: int) -> None:
    """Have the watchdog kill process group pgid if imageforge dies before unwatch(pgid)."""
    _send(f"+{pgid}\n")


def unwatch(pgid: int) -> None:
    """The group is stopped (or meant to outlive us): the watchdog forgets it."""
    _send(f"-{pgid}\n")


def _send(line: str) -> None:
    global _pipe, _watchdog
    if _pipe is None:
        # Its own session: Ctrl-C on the terminal must not stop it before it is needed.
        _watchdog = subprocess.Popen(
            [sys.executable, "-c", WATCHDOG],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        _pipe = _watchdog.stdin
    with contextlib.suppress(OSError, ValueError):  # a dead watchdog must not fail a run
        assert _pipe is not None
        _pipe.write(line)
        _pipe.flush()
