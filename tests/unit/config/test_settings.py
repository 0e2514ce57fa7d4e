"""The IMAGEFORGE_* environment, read and checked in one place."""

from __future__ import annotations

import pytest

from imageforge.config import settings
from imageforge.errors import ConfigError


def test_nothing_set_gives_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for field in settings.Settings.model_fields:
        monkeypatch.delenv(settings.name(field), raising=False)
    current = settings.current()
    assert current.debug is False and current.packer == "packer"
    assert current.cache_dir is None and current.extra_ca_certs is None
    assert current.verify_ssh_from == current.verify_ssh_via == current.gcp_endpoint == ""


@pytest.mark.parametrize(("value", "on"), [("", False), ("0", False), ("1", True), ("yes", True)])
def test_debug_is_on_when_set_and_not_zero(monkeypatch, value: str, on: bool) -> None:
    monkeypatch.setenv("IMAGEFORGE_DEBUG", value)
    assert settings.current().debug is on


def test_a_change_of_the_environment_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEFORGE_PACKER", "/opt/packer-1.11/packer")
    assert settings.current().packer == "/opt/packer-1.11/packer"
    monkeypatch.setenv("IMAGEFORGE_PACKER", "packer")
    assert settings.current().packer == "packer"
    assert settings.current() is settings.current()  # read once per state of the environment


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("IMAGEFORGE_VERIFY_SSH_FROM", "my laptop", "'my laptop' is not a CIDR such as"),
        ("IMAGEFORGE_VERIFY_SSH_VIA", "127.0.0.1", "'127.0.0.1' is not host:port"),
        ("IMAGEFORGE_VERIFY_SSH_VIA", "h:0", "'h:0' is not host:port"),
        ("IMAGEFORGE_GCP_ENDPOINT", "compute.local", "'compute.local' is not an http://"),
    ],
)
def test_a_bad_value_is_one_error_naming_the_variable(monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        settings.current()
    assert str(caught.value).startswith(f"${variable}: {message}")
    assert "\n" not in str(caught.value) and caught.value.exit_code == 2


def test_an_empty_extra_ca_setting_means_none_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEFORGE_EXTRA_CA_CERTS", "")
    assert settings.current().extra_ca_certs == ""
