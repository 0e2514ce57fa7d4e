"""Every error reaches the user as one line and an exit code, never as a traceback."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from invoke import Exit
from invoke.exceptions import ParseError, UnexpectedExit
from invoke.runners import Result

from imageforge.errors import ConfigError, Interrupted
from imageforge.process import reap
from imageforge.tasks import common

ROOT = Path(__file__).resolve().parents[3]


def test_os_errors_name_the_file_and_exit_2() -> None:
    denied = PermissionError(errno.EACCES, os.strerror(errno.EACCES), "images.yml")
    assert common.describe(denied) == ("images.yml: Permission denied", 2)
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert common.describe(full) == ("No space left on device", 2)
    moved = OSError(errno.EXDEV, os.strerror(errno.EXDEV), "a", None, "b")
    assert common.describe(moved) == ("a → b: Invalid cross-device link", 2)


def test_decoding_parse_and_command_errors_are_one_line_and_exit_2() -> None:
    bad = UnicodeDecodeError("utf-8", b"ab\xff", 2, 3, "invalid start byte")
    assert common.describe(bad) == ("cannot read text: not utf-8 (invalid start byte at byte 2)", 2)
    assert common.describe(ParseError("No idea what '--nope' is!")) == (
        "No idea what '--nope' is!",
        2,
    )
    failed = UnexpectedExit(Result(command="make", exited=3))
    assert common.describe(failed) == ("'make' failed with exit code 3", 2)


def test_a_bug_is_one_line_with_a_hint_and_exit_1() -> None:
    message, code = common.describe(KeyError("flavors\nsecond line"))
    assert code == 1
    assert "\n" not in message
    assert message.startswith("internal error: KeyError: ")
    assert "IMAGEFORGE_DEBUG=1" in message


def test_interrupts_keep_their_signal_code() -> None:
    assert common.describe(KeyboardInterrupt()) == ("interrupted", 130)
    assert common.describe(Interrupted("stopped by SIGTERM", signum=15)) == (
        "stopped by SIGTERM",
        143,
    )


def test_friendly_turns_exceptions_into_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    @common.friendly
    def broken() -> None:
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), "images.yml")

    with pytest.raises(Exit) as caught:
        broken()
    assert caught.value.code == 2
    assert "error: images.yml: Is a directory" in capsys.readouterr().err


def test_integer_options_are_checked() -> None:
    assert common.integer("3", "--keep", minimum=1) == 3
    with pytest.raises(ConfigError, match="--keep must be an integer, not 'abc'"):
        common.integer("abc", "--keep")
    with pytest.raises(ConfigError, match="--keep must be at least 1, not 0"):
        common.integer("0", "--keep", minimum=1)


def invoke(project: Path, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, "TMPDIR": str(project / "tmp"), "IMAGEFORGE_DEBUG": ""},
        **kwargs,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "tasks.py", tmp_path / "tasks.py")
    (tmp_path / "tmp").mkdir()
    return tmp_path


def assert_one_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and "images.yml" in lines[0]
    assert all(word in lines[0].lower() for word in words), lines


def test_a_directory_in_place_of_images_yml(project: Path) -> None:
    (project / "images.yml").mkdir()
    assert_one_line(invoke(project, "list"), "directory")


def test_a_symlink_loop_in_place_of_images_yml(project: Path) -> None:
    (project / "images.yml").symlink_to("images.yml")
    assert_one_line(invoke(project, "list"), "symlink loop")


def test_symlink_loops_are_user_errors() -> None:
    assert common.describe(RuntimeError("Symlink loop from 'images.yml'")) == (
        "Symlink loop from 'images.yml'",
        2,
    )


def test_an_unreadable_images_yml(project: Path) -> None:
    (project / "images.yml").write_text("flavors: {}\n")
    (project / "images.yml").chmod(0)
    prefix: list[str] = []
    if os.getuid() == 0:  # root reads anything: run the task without that capability
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    result = subprocess.run(
        [*prefix, sys.executable, "-m", "invoke", "list"],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, "TMPDIR": str(project / "tmp"), "IMAGEFORGE_DEBUG": ""},
    )
    assert_one_line(result, "permission denied")


def test_tasks_reap_scratch_directories_of_dead_runs(project: Path) -> None:
    proc = subprocess.Popen(["sleep", "60"])
    token = reap.process_token(proc.pid)
    proc.kill()
    proc.wait()
    left = project / "tmp" / "imageforge-b1-x"
    left.mkdir()
    (left / reap.OWNER_FILE).write_text(str(token))
    (project / "images.yml").mkdir()  # even when the config is bad
    result = invoke(project, "list")
    assert result.returncode == 2
    assert not left.exists()
    assert "removed what a killed run left" in result.stderr


def test_list_into_a_pipe_shows_whole_names_on_stdout(project: Path) -> None:
    """A CI log or a file gets the matrix whole: no name is cut at 80 columns."""
    shutil.copy(ROOT / "images.yml", project / "images.yml")
    for name in ("provisioners", "tests/infra"):
        shutil.copytree(ROOT / name, project / name)
    result = invoke(project, "list")
    assert result.returncode == 0, result.stderr
    for name in ("quantum-mobile", "training-desktop", "slurm-node", "googlecompute"):
        assert name in result.stdout, result.stdout
    assert "…" not in result.stdout and "quantum-mobile" not in result.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("build", "--bogus"), "error: No idea what '--bogus' is!"),
        (
            ("build", "--image"),
            "error: Flag <Argument: image (i)> needed value and was not given one!",
        ),
        (("no-such-task",), "error: No idea what 'no-such-task' is!"),
    ],
)
def test_a_usage_error_of_a_task_exits_2_in_one_line(project: Path, args, said: str) -> None:
    result = invoke(project, *args)
    assert (result.returncode, result.stderr.strip()) == (2, said)
