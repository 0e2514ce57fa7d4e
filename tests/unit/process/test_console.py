"""The console copier: QEMU's serial output reaches the log line by line, never with a secret,
in a file only its owner reads; the secrets stay in memory for the process that booted the VM."""

from __future__ import annotations

import os
import time
from pathlib import Path

from imageforge.process import console

SECRET = "Ab3dE6gH"


def test_secrets_never_reach_the_log_even_split_across_writes(tmp_path: Path) -> None:
    log = tmp_path / "verify-serial.log"
    copier = console.ConsoleCopier(tmp_path / "serial", log)
    assert log.stat().st_mode & 0o777 == 0o600
    # as QEMU's pipe chardev does: both FIFOs opened read-write, output written to .out
    writer = os.open(copier.ends[1], os.O_RDWR)
    pieces = [
        b"boot\r\nimageforge-secret: vnc_pass",
        b"word=Ab3d",
        b"E6gH\nimageforge-desk",
        b"top: ok\n",
    ]
    for piece in pieces:
        os.write(writer, piece)
        time.sleep(0.2)
        assert SECRET not in log.read_text()  # at no moment, not only at the end
    os.write(writer, b"login: ")  # a prompt without a newline: kept until the end
    os.close(writer)
    copier.close()
    assert log.read_bytes().decode() == (
        "boot\r\nimageforge-secret: vnc_password=[redacted]\nimageforge-desktop: ok\nlogin: "
    )
    assert copier.secrets == {"vnc_password": SECRET}
    assert not copier.ends[0].exists() and not copier.ends[1].exists()


def test_close_returns_when_qemu_never_opened_its_end(tmp_path: Path) -> None:
    copier = console.ConsoleCopier(tmp_path / "serial", tmp_path / "serial.log")
    started = time.monotonic()
    copier.close(timeout=5)
    assert time.monotonic() - started < 3
    assert (tmp_path / "serial.log").read_text() == ""


def test_a_planted_link_at_the_log_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    log = tmp_path / "serial.log"
    log.symlink_to(victim)
    console.private_file(log)
    assert not log.is_symlink() and victim.read_text() == "keep"
    assert log.stat().st_mode & 0o777 == 0o600


def test_redact_replaces_each_value() -> None:
    text = "x imageforge-secret: jupyter_token=abc.DEF-1 y\nimageforge-secret: a=b\n"
    assert console.redact(text) == (
        "x imageforge-secret: jupyter_token=[redacted] y\nimageforge-secret: a=[redacted]\n"
    )
