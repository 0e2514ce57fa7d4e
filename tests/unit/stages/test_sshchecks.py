"""Checks over SSH, with a fake runner (the VM side is tested in tests/integration)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imageforge.errors import ImageforgeError
from imageforge.process import runner
from imageforge.process.runner import CommandResult
from imageforge.stages import sshchecks
from tests.fakes.runner import FakeRunner

SESSION = sshchecks.Session("127.0.0.1", 2222, "debian", Path("ssh_config"))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeRunner:
    monkeypatch.setattr(sshchecks, "LOGIN_RETRY_SECONDS", 0)
    fake = FakeRunner()
    monkeypatch.setattr(runner, "run", fake)
    return fake


def test_login_is_retried_until_the_key_is_installed(fake: FakeRunner) -> None:
    codes = iter([255, 255, 0])
    fake.on("ssh", answer=lambda argv, kwargs: CommandResult(argv, next(codes), ""))
    sshchecks.wait_for_login(SESSION)
    logins = fake.ran("ssh")
    assert len(logins) == 3 and logins[0][-1] == "true" and "2222" in logins[0]


def test_login_gives_up_with_one_line_after_its_attempts(fake: FakeRunner) -> None:
    fake.on("ssh", answer=CommandResult(["ssh"], 255, "Permission denied"))
    with pytest.raises(ImageforgeError, match=r"could not log in as debian on 127.0.0.1:2222"):
        sshchecks.wait_for_login(SESSION, attempts=4)
    assert len(fake.ran("ssh")) == 4
