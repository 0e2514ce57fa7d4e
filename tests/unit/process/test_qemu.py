"""Waiting for a guest's SSH: a banner, a timeout, or a VM that died first."""

from __future__ import annotations

import socket
import subprocess
import threading
import time

import pytest

from imageforge.errors import ImageforgeError
from imageforge.process import qemu


def test_wait_for_ssh_returns_the_banner_once_it_comes() -> None:
    port = qemu.free_port()

    def serve_later() -> None:
        time.sleep(1.5)  # the first attempts find nothing
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((qemu.LOCALHOST, port))
            server.listen()
            conn, _ = server.accept()
            with conn:
                conn.sendall(b"SSH-2.0-test\r\n")

    threading.Thread(target=serve_later, daemon=True).start()
    assert qemu.wait_for_ssh(port, 10) == "SSH-2.0-test"


def test_wait_for_ssh_gives_up_after_its_timeout() -> None:
    port = qemu.free_port()
    started = time.monotonic()
    with pytest.raises(ImageforgeError, match=rf"^no SSH on 127.0.0.1:{port} after 2s$"):
        qemu.wait_for_ssh(port, 2)
    assert 1.5 < time.monotonic() - started < 5


def test_wait_for_ssh_stops_at_once_when_the_vm_exits() -> None:
    proc = subprocess.Popen(["sh", "-c", "exit 3"])
    proc.wait()
    started = time.monotonic()
    with pytest.raises(ImageforgeError, match=r"the VM exited \(code 3\) before SSH came up"):
        qemu.wait_for_ssh(qemu.free_port(), 60, proc=proc)  # type: ignore[arg-type]
    assert time.monotonic() - started < 2
