"""The one runner: output tail on failure, secrets masked, the process group stopped."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from imageforge import runner
from imageforge.errors import CommandError, Interrupted


def test_failure_carries_command_code_and_tail(tmp_path: Path) -> None:
    script = "import sys\nfor i in range(40): print('line', i)\nsys.exit(3)"
    with pytest.raises(CommandError) as caught:
        runner.run([sys.executable, "-c", script], stream=False, logfile=tmp_path / "log")
    assert caught.value.returncode == 3
    assert caught.value.tail[-1] == "line 39"
    assert len(caught.value.tail) == runner.TAIL_LINES
    assert "line 0" in (tmp_path / "log").read_text()


def test_secrets_are_masked_in_output_and_log(tmp_path: Path) -> None:
    result = runner.run(
        [sys.executable, "-c", "print('token=hunter2')"],
        stream=False,
        logfile=tmp_path / "log",
        secrets=["hunter2"],
    )
    assert result.output == "token=***"
    assert "hunter2" not in (tmp_path / "log").read_text()


def test_interrupt_kills_the_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    # The leader starts a child that ignores SIGINT, as a stubborn VM would.
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )

    def interrupt_soon() -> None:
        while not pidfile.exists():
            time.sleep(0.05)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_soon, daemon=True).start()
    with pytest.raises(Interrupted):
        runner.run([sys.executable, "-c", script], stream=False, grace=1)
    child = int(pidfile.read_text())
    time.sleep(0.2)
    assert not alive(child)


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody has reaped yet."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_missing_binary_is_a_command_error() -> None:
    with pytest.raises(CommandError, match="command not found"):
        runner.run(["imageforge-no-such-tool"], stream=False)
