"""Reaping at start-up: scratch directories of dead owners go (keys included), live ones stay."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from imageforge.process import reap
from imageforge.records import state


def dead_token() -> str:
    """The owner token of a process that has exited."""
    proc = subprocess.Popen(["sleep", "60"])
    token = reap.process_token(proc.pid)
    proc.kill()
    proc.wait()
    assert token is not None
    return token


def owned_dir(parent: Path, name: str, token: str | None) -> Path:
    path = parent / name
    (path / "ssh").mkdir(parents=True)
    (path / "ssh" / "id_ed25519").write_text("PRIVATE KEY")
    if token is not None:
        (path / reap.OWNER_FILE).write_text(token)
    return path


def test_scratch_dirs_name_their_owner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with reap.scratch("imageforge-test-") as path:
        assert path.parent == tmp_path
        assert path.stat().st_mode & 0o777 == 0o700
        token = (path / reap.OWNER_FILE).read_text()
        assert token == reap.process_token(os.getpid())
        assert reap.owner_alive(token)
    assert not path.exists()


def test_a_reaper_reading_while_the_owner_file_is_written_leaves_the_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Another run's reaper may look in the moment the file exists but is still empty."""
    write_text = Path.write_text
    seen: list[list[Path]] = []

    def racing(path: Path, data: str, *args, **kwargs) -> int:
        path.touch()  # the file exists, empty, as an open(..., "w") leaves it
        seen.append(reap.reap_scratch(tmp_path))
        return write_text(path, data, *args, **kwargs)

    path = Path(tempfile.mkdtemp(prefix="imageforge-race-", dir=tmp_path))
    monkeypatch.setattr(Path, "write_text", racing)
    reap.claim(path)
    monkeypatch.undo()
    assert seen == [[]] and path.is_dir()
    assert reap.owner_alive((path / reap.OWNER_FILE).read_text())
    assert sorted(p.name for p in path.iterdir()) == [reap.OWNER_FILE]


def test_only_directories_of_dead_owners_are_removed(tmp_path: Path) -> None:
    mine = reap.process_token(os.getpid())
    assert mine is not None
    pid, _ = mine.split()
    dead = owned_dir(tmp_path, "imageforge-b1-dead", dead_token())
    reused = owned_dir(tmp_path, "imageforge-b2-reused", f"{pid} 1")  # our pid, another start
    live = owned_dir(tmp_path, "imageforge-b3-live", mine)
    unowned = owned_dir(tmp_path, "imageforge-b4-unowned", None)
    other = owned_dir(tmp_path, "something-else", dead_token())
    removed = reap.reap_scratch(tmp_path)
    assert sorted(removed) == sorted([dead, reused])
    assert not dead.exists() and not reused.exists()
    assert live.is_dir() and unowned.is_dir() and other.is_dir()


def test_the_key_of_a_run_killed_with_sigkill_is_removed_by_the_next(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from imageforge.process import reap\n"
        "path = reap.scratch_dir('imageforge-killed-')\n"
        "(path / 'id_ed25519').write_text('PRIVATE KEY')\n"
        "print(path, flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    path = Path(proc.stdout.readline().strip())
    assert (path / "id_ed25519").is_file()
    assert reap.reap_scratch(tmp_path) == []  # its owner still runs
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert reap.reap_scratch(tmp_path) == [path]
    assert not path.exists()


def test_a_garbled_owner_file_counts_as_dead() -> None:
    assert not reap.owner_alive("")
    assert not reap.owner_alive("not a pid")


def test_pid_only_tokens_fall_back_to_kill_0() -> None:
    assert reap.owner_alive(str(os.getpid()))
    proc = subprocess.Popen(["true"])
    proc.wait()
    time.sleep(0.05)
    assert not reap.owner_alive(str(proc.pid))


def test_reap_also_marks_stale_records(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = []
    monkeypatch.setattr(state, "reap_stale", lambda root: calls.append(root) or ["b7"])
    monkeypatch.setattr(reap, "reap_scratch", lambda: [])
    assert reap.reap(tmp_path) == ["build b7 left in `building`"]
    assert calls == [tmp_path]


def test_scratch_prefixes_are_ones_the_reaper_looks_at() -> None:
    with pytest.raises(ValueError, match="imageforge-"):
        reap.scratch_dir("other-")
