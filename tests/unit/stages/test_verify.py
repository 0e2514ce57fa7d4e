"""The verify stage on a cloud build, with a fake launcher and the SSH side stubbed: the
instance is torn down on every exit, SSH goes where it should, and copies follow success only."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imageforge import clouds, config
from imageforge.clouds import Instance
from imageforge.clouds.common import LaunchRequest
from imageforge.config import matrix, settings
from imageforge.errors import ImageforgeError, Interrupted
from imageforge.process import qemu
from imageforge.records import state
from imageforge.stages import sshchecks, verify
from tests.records import make_record

from ..conftest import write

IDS = {"eu-west-1": "ami-0123456789abcdef0"}
PASSED = {"passed": 9, "failed": 0, "errors": 0, "skipped": 0, "failures": []}


class FakeCloud:
    """A Launcher and Distributor that remember what they were asked and how they ended."""

    name = "aws"

    def __init__(self) -> None:
        self.launched: list[dict[str, Any]] = []
        self.ended: list[str] = []
        self.distributed: list[str] = []

    def ssh_username(self, os_name: str) -> str:
        return "admin"

    @contextlib.contextmanager
    def launch(self, request: LaunchRequest) -> Iterator[Instance]:
        self.launched.append(dict(vars(request)))
        try:
            yield Instance("i-1", "203.0.113.9", "eu-west-1")
        except BaseException as exc:
            self.ended.append(type(exc).__name__)
            raise
        self.ended.append("ok")

    def distribute(self, project: Any, record: state.BuildRecord) -> dict[str, str]:
        self.distributed.append(record.status)
        return {"eu-central-1": "ami-0fedcba9876543210"}


@pytest.fixture
def cloud(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCloud:
    fake = FakeCloud()
    monkeypatch.setattr(clouds, "get", lambda name: fake)
    monkeypatch.setattr(clouds, "capability", lambda name, kind: fake)
    monkeypatch.setattr(sshchecks, "wait_for_login", lambda ssh: None)
    monkeypatch.setattr(sshchecks, "startup", lambda ssh, logfile: {"kernel_seconds": 1.0})
    monkeypatch.setattr(sshchecks, "session", _session)
    write(scratch, "flavors:\n  a: {}\nmatrix:\n  clouds: [aws]\n")
    return fake


@contextlib.contextmanager
def _session(host: str, port: int, user: str, key: Path, scratch: Path):
    yield sshchecks.Session(host, port, user, scratch / "ssh_config")


def run(scratch: Path, suites_result: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    project = config.load(scratch / "images.yml")
    cell = matrix.find(project, "a", "aws")
    record = make_record(
        scratch / "artifacts",
        "a",
        "aws",
        artifact_ids=IDS,
        status="built",
        files={"manifest.json": b"{}"},
    )
    reached: list[tuple[str, int]] = []
    monkeypatch.setattr(qemu, "wait_for_ssh", lambda port, t, host: reached.append((host, port)))

    def suites(ssh: sshchecks.Session, *args: Any, **kwargs: Any) -> dict[str, Any]:
        reached.append((ssh.url, 0))
        if isinstance(suites_result, BaseException):
            raise suites_result
        return dict(suites_result)

    monkeypatch.setattr(sshchecks, "run_suites", suites)
    return project, cell, record, reached


def test_a_passing_cloud_verification_binds_the_ids_then_copies(
    scratch: Path, cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(settings.name("verify_ssh_from"), "198.51.100.7/32")
    project, cell, record, reached = run(scratch, PASSED, monkeypatch)
    done = verify.verify(project, cell, record)
    assert done.verified and done.binding is not None and done.binding.image_ids == IDS
    assert done.copies == {"eu-central-1": "ami-0fedcba9876543210"}
    assert cloud.distributed == ["verified"] and cloud.ended == ["ok"]
    [launch] = cloud.launched
    assert launch["ssh_from"] == "198.51.100.7/32"
    assert launch["public_key"].startswith("ssh-ed25519 ")
    assert launch["public_key"] in launch["user_data"]
    assert reached == [("203.0.113.9", 22), ("ssh://admin@203.0.113.9:22", 0)]
    assert done.verification["instance"] == {"id": "i-1", "where": "eu-west-1"}


def test_ssh_can_go_through_a_forwarded_port(
    scratch: Path, cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(settings.name("verify_ssh_via"), "127.0.0.1:2299")
    project, cell, record, reached = run(scratch, PASSED, monkeypatch)
    verify.verify(project, cell, record)
    assert reached[0] == ("127.0.0.1", 2299)


@pytest.mark.parametrize(
    ("result", "status", "ended"),
    [
        ({**PASSED, "failed": 1, "failures": ["test_x"]}, "failed", "ok"),
        (Interrupted("SIGTERM"), "interrupted", "Interrupted"),
        (KeyboardInterrupt(), "interrupted", "KeyboardInterrupt"),
        (ImageforgeError("no SSH"), "failed", "ImageforgeError"),
    ],
    ids=["checks fail", "signal", "ctrl-c", "error"],
)
def test_the_instance_goes_on_every_exit_and_nothing_unverified_is_copied(
    scratch: Path,
    cloud: FakeCloud,
    monkeypatch: pytest.MonkeyPatch,
    result: Any,
    status: str,
    ended: str,
) -> None:
    project, cell, record, _ = run(scratch, result, monkeypatch)
    with pytest.raises((ImageforgeError, Interrupted, KeyboardInterrupt)):
        verify.verify(project, cell, record)
    assert cloud.ended == [ended] and cloud.distributed == []
    after = state.load(record.directory)
    assert after.status == status and after.copies == {} and after.binding is None


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            settings.name("verify_ssh_from"),
            "my laptop",
            r"\$IMAGEFORGE_VERIFY_SSH_FROM: 'my laptop' is not a CIDR",
        ),
        (
            settings.name("verify_ssh_via"),
            "127.0.0.1",
            r"\$IMAGEFORGE_VERIFY_SSH_VIA: '127.0.0.1' is not host:port",
        ),
        (settings.name("verify_ssh_via"), "h:99999", r"'h:99999' is not host:port"),
    ],
)
def test_bad_ssh_settings_are_one_clear_error_before_anything_is_launched(
    scratch: Path,
    cloud: FakeCloud,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    value: str,
    message: str,
) -> None:
    monkeypatch.setenv(name, value)
    project, cell, record, _ = run(scratch, PASSED, monkeypatch)
    with pytest.raises(ImageforgeError, match=message):
        verify.verify(project, cell, record)
    assert cloud.launched == []
