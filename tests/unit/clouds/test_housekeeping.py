"""The sweep rule for a build instance kept by --on-error=keep: its expiry decides, read
strictly from a tag anyone with access to the account could have set."""

from __future__ import annotations

import time

import pytest

from imageforge.clouds.housekeeping import KEEP_KEY, kept_until, still_needed

OLD = "2020-01-01T00:00:00Z"


def tagged(value: str) -> dict[str, str]:
    return {KEEP_KEY: value}


@pytest.mark.parametrize(
    "value",
    ["", "²", "١٢٣", " 123", "123 ", "+123", "-5", "1e9", "0x10", "99999999999999", "12.5"],
)
def test_a_malformed_expiry_is_no_expiry(value: str) -> None:
    assert kept_until(tagged(value)) is None
    # and sweep falls back to its usual rules: old, not building, so it goes
    assert still_needed("b1", OLD, 120, {}, tagged(value)) == ""


def test_an_expiry_more_than_a_week_ahead_is_not_trusted() -> None:
    far = str(int(time.time()) + 8 * 24 * 3600)
    assert kept_until(tagged(far)) is None
    assert still_needed("b1", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), 120, {},
                        tagged(far)).startswith("only 0 minutes old")  # fmt: skip


def test_the_expiry_keeps_until_it_passes_whatever_the_age() -> None:
    soon = int(time.time()) + 3600
    assert kept_until(tagged(str(soon))) == soon
    assert still_needed("b1", OLD, 120, {}, tagged(str(soon))).startswith(
        "kept by --on-error=keep until"
    )
    young = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    assert still_needed("b1", young, 120, {}, tagged(str(int(time.time()) - 1))) == ""


def test_a_build_still_running_here_is_never_swept_even_past_its_expiry() -> None:
    expired = tagged(str(int(time.time()) - 60))
    assert still_needed("b1", OLD, 0, {"b1": "building"}, expired) == (
        "build b1 is still building here"
    )
