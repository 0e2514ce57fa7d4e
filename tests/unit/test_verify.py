"""verify's own steps, with a fake runner (the VM side is tested in tests/integration)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imageforge import runner, verify
from imageforge.errors import ImageforgeError
from imageforge.runner import CommandResult
from tests.fakes.runner import FakeRunner


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeRunner:
    monkeypatch.setattr(verify, "LOGIN_RETRY_SECONDS", 0)
    fake = FakeRunner()
    monkeypatch.setattr(runner, "run", fake)
    return fake


def test_login_is_retried_until_the_key_is_installed(fake: FakeRunner) -> None:
    codes = iter([255, 255, 0])
    fake.on("ssh", answer=lambda argv, kwargs: CommandResult(argv, next(codes), ""))
    verify._wait_for_login(Path("ssh_config"), "debian", 2222)
    logins = fake.ran("ssh")
    assert len(logins) == 3 and logins[0][-1] == "true" and "2222" in logins[0]


def test_login_gives_up_with_one_line_after_its_attempts(fake: FakeRunner) -> None:
    fake.on("ssh", answer=CommandResult(["ssh"], 255, "Permission denied"))
    with pytest.raises(ImageforgeError, match=r"could not log in as debian on 127.0.0.1:2222"):
        verify._wait_for_login(Path("ssh_config"), "debian", 2222, attempts=4)
    assert len(fake.ran("ssh")) == 4
