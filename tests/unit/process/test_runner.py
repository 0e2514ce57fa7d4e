"""The one runner: output tail on failure, secrets masked, the process group stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from imageforge.errors import CommandError, Interrupted
from imageforge.process import runner

from .processes import alive


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


def test_missing_binary_is_a_command_error() -> None:
    with pytest.raises(CommandError, match="command not found"):
        runner.run(["imageforge-no-such-tool"], stream=False)


def test_a_signal_during_the_grace_period_still_kills_the_group() -> None:
    ignoring = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", ignoring], start_new_session=True)
    time.sleep(0.3)

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted("stopped by SIGTERM", signum=signal.SIGTERM)

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        with pytest.raises(Interrupted):
            runner.stop_group(proc, grace=30)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert proc.wait(timeout=5) == -signal.SIGKILL


def test_kill_running_kills_every_running_command() -> None:
    failures: list[CommandError] = []

    def run() -> None:
        try:
            runner.run(["sleep", "30"], stream=False)
        except CommandError as exc:
            failures.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 5
    while not runner._running_groups and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    runner.kill_running()
    thread.join(timeout=5)
    assert time.monotonic() - started < 3
    assert [f.returncode for f in failures] == [-signal.SIGKILL]
    assert not runner._running_groups


def test_command_logs_are_private_from_their_first_line(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "build.log"
    runner.run(["sh", "-c", f"stat -c %a {log}"], logfile=log, stream=False)
    assert log.read_text().strip() == "600"  # as the command itself saw it, while running
    with runner.spawn(["sh", "-c", "echo started"], logfile=tmp_path / "qemu.log") as proc:
        proc.wait(timeout=10)
    assert (tmp_path / "qemu.log").stat().st_mode & 0o777 == 0o600


def test_a_command_that_goes_silent_still_times_out(tmp_path: Path) -> None:
    """The timeout holds without output: a silent command is stopped, with its group."""
    marker = tmp_path / "child"
    script = f"echo started; (sleep 60; touch {marker}) & sleep 60"
    started = time.monotonic()
    with pytest.raises(CommandError) as caught:
        runner.run(["sh", "-c", script], stream=False, timeout=1, grace=1)
    assert time.monotonic() - started < 10
    assert "(timed out) failed" in str(caught.value) and caught.value.tail == ["started"]
    time.sleep(0.5)
    assert not marker.exists()


def test_a_command_that_ends_in_time_is_not_stopped() -> None:
    result = runner.run(["sh", "-c", "sleep 0.2; echo done"], stream=False, timeout=5)
    assert result.returncode == 0 and result.output == "done"


def test_output_ends_with_the_command_when_what_it_left_running_holds_it_open() -> None:
    """Packer with -on-error=abort exits and leaves QEMU holding its output: the command's
    exit ends the run (without leaves_running, it would wait for the sleeper)."""
    started = time.monotonic()
    result = runner.run(
        ["sh", "-c", "sleep 120 & echo $!; exit 3"], stream=False, check=False, leaves_running=True
    )
    sleeper = int(result.output.strip())
    try:
        assert result.returncode == 3
        assert time.monotonic() - started < 30
    finally:
        os.kill(sleeper, signal.SIGKILL)
