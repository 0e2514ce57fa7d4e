"""SIGINT, SIGTERM and SIGHUP, handled in one place for every task.

The first signal raises Interrupted in the main thread, so that every `finally` and context
manager runs: VMs stop, Packer gets its grace period to delete what it made in a cloud, scratch
directories go and the build's record is marked interrupted. A second signal waits for none of
that: every process group imageforge started, and imageforge itself, are killed at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from imageforge.errors import Interrupted
from imageforge.process import runner

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_received: list[int] = []


def received() -> int | None:
    """The first signal received while handled() was in force, if any."""
    return _received[0] if _received else None


def exit_code(default: int) -> int:
    """128 + the first signal received (130 SIGINT, 143 SIGTERM, 129 SIGHUP), else default."""
    first = received()
    return 128 + first if first is not None else default


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Handle the signals while the block runs (outside the main thread: leave them alone)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in HANDLED}
    _received.clear()
    for sig in HANDLED:
        signal.signal(sig, _on_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    name = signal.Signals(signum).name
    if len(_received) > 1:
        kill_everything(name)
    # Written directly: the handler may run while the console is in the middle of a line.
    _say(f"{name}: stopping and cleaning up; {name} again kills everything at once")
    raise Interrupted(f"stopped by {name}", signum=signum)


def kill_everything(reason: str) -> None:
    """SIGKILL every command's process group, then this process (and its group if it leads it)."""
    _say(f"second {reason}: killing imageforge and every process it started")
    for sig in HANDLED:
        signal.signal(sig, signal.SIG_DFL)
    runner.kill_running()
    # Only a group of our own: from a script without job control, the group is the script's.
    if os.getpgrp() == os.getpid():
        os.killpg(0, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _say(line: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"\n{line}\n".encode())
