"""Every way a run can end: a signal cleans up and exits 128+n; a second one kills at once;
SIGKILL of imageforge still takes its children (and theirs) along."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imageforge.process import signals

from .processes import alive

ROOT = Path(__file__).resolve().parents[3]

# A task as invoke runs it: friendly around a body that runs a command (which ignores SIGINT,
# as a busy Packer would for a while) and cleans up in `finally`.
TASK = """
import sys
from pathlib import Path
from invoke import Exit
from imageforge.process import runner
from imageforge.tasks.common import friendly

out, grace = Path(sys.argv[1]), float(sys.argv[2])
CHILD = (
    "import os, signal, subprocess, sys, time\\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\\n"
    "grandchild = subprocess.Popen(['sleep', '1000'])\\n"
    "open(sys.argv[1], 'w').write(f'{os.getpid()} {grandchild.pid}')\\n"
    "time.sleep(1000)\\n"
)

@friendly
def task():
    try:
        runner.run([sys.executable, "-c", CHILD, out / "pids"], stream=False, grace=grace)
    finally:
        (out / "cleaned").write_text("yes")

try:
    task()
except Exit as exc:
    sys.exit(exc.code)
"""


def start(tmp_path: Path, arg: object, body: str = TASK) -> tuple[subprocess.Popen[str], list[int]]:
    script = tmp_path / "task.py"
    script.write_text(body)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), str(arg)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a second signal kills the task's own group, never pytest
    )
    return proc, wait_for_pids(tmp_path / "pids", proc)


def wait_for_pids(path: Path, proc: subprocess.Popen[str]) -> list[int]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if path.is_file() and len(path.read_text().split()) == 2:
            return [int(p) for p in path.read_text().split()]
        if proc.poll() is not None:
            raise AssertionError(f"the task ended early: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the task's command did not start")


def gone_soon(pids: list[int], seconds: float = 2.0) -> bool:
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(alive(p) for p in pids)


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)]
)
def test_a_signal_cleans_up_and_exits_128_plus_its_number(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    proc, pids = start(tmp_path, 0.5)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == code, stderr
    assert gone_soon(pids), "the command or its child outlived the task"
    assert (tmp_path / "cleaned").read_text() == "yes"
    assert "Traceback" not in stderr
    assert f"stopped by {sig.name}" in stderr


def test_a_second_signal_kills_everything_at_once(tmp_path: Path) -> None:
    proc, pids = start(tmp_path, 60)  # the command ignores SIGINT: cleanup would wait 60s
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proc.poll() is None, "the grace period should still be running"
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=10)
    assert time.monotonic() - started < 5
    assert proc.returncode == -signal.SIGKILL
    assert "second SIGTERM: killing imageforge" in stderr
    assert gone_soon(pids), "the command or its child outlived the second signal"


PARENT = """
import sys
from pathlib import Path
from imageforge.process import runner

out = Path(sys.argv[1])
CHILD = (
    "import os, subprocess, sys, time\\n"
    "grandchild = subprocess.Popen(['sleep', '1000'])\\n"
    "open(sys.argv[1], 'w').write(f'{os.getpid()} {grandchild.pid}')\\n"
    "time.sleep(1000)\\n"
)
runner.run(
    [sys.executable, "-c", CHILD, out / "pids"], stream=False, die_with_parent=sys.argv[2] == "1"
)
"""


def test_children_die_when_imageforge_is_killed_with_sigkill(tmp_path: Path) -> None:
    proc, pids = start(tmp_path, 1, PARENT)
    proc.kill()
    proc.wait()
    # The command by its parent-death signal, its own child by the watchdog.
    assert gone_soon(pids, 1.5), [p for p in pids if alive(p)]


def test_a_daemon_may_outlive_imageforge(tmp_path: Path) -> None:
    proc, pids = start(tmp_path, 0, PARENT)
    try:
        proc.kill()
        proc.wait()
        time.sleep(1)
        assert all(alive(p) for p in pids)
    finally:
        os.killpg(pids[0], signal.SIGKILL)


def test_exit_code_follows_the_first_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signals, "_received", [signal.SIGHUP, signal.SIGTERM])
    assert signals.exit_code(1) == 129
    monkeypatch.setattr(signals, "_received", [])
    assert signals.exit_code(7) == 7
