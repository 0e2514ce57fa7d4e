"""Boot a built image the way an instance of it starts: an overlay, a NoCloud seed with the given
user-data and a fresh key, SSH (and any other ports) forwarded on 127.0.0.1 only."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from imageforge.clouds.local import seed_user_data
from imageforge.process import buildsecrets, qcow2, qemu

USER = "debian"


class Guest:
    """A booted VM and an SSH command runner for it."""

    def __init__(self, vm: qemu.VirtualMachine, key: Path) -> None:
        self.vm = vm
        self.key = key

    def ssh(self, command: str, *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = ["ssh", "-i", str(self.key), "-p", str(self.vm.ssh_port), "-o", "BatchMode=yes"]
        argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        argv += ["-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", f"{USER}@127.0.0.1", command]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)

    def output(self, command: str) -> str:
        result = self.ssh(command)
        assert result.returncode == 0, f"{command}: {result.stderr[-500:]}"
        return result.stdout

    def wait_for_login(self, timeout: float = 300) -> None:
        self.vm.wait_for_ssh(timeout)
        for _ in range(60):
            if self.ssh("true", timeout=30).returncode == 0:
                return
        raise AssertionError(f"no login with the instance key\n{self.vm.console_tail()}")


def gzipped_multipart(login: str, blocks: dict[str, Any]) -> bytes:
    """login's cloud-config and blocks' in a gzipped MIME multipart, after a script part."""
    import gzip
    import json
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText

    import yaml

    ours = "#cloud-config\n" + yaml.safe_dump(json.loads(json.dumps(blocks)))
    message = MIMEMultipart()
    message.attach(MIMEText("#!/bin/sh\necho imageforge-test: script part\n", "x-shellscript"))
    message.attach(MIMEText(login, "cloud-config"))
    message.attach(MIMEText(ours, "cloud-config"))
    return gzip.compress(message.as_bytes())


@contextmanager
def booted(
    image: Path,
    scratch: Path,
    *,
    instance_id: str,
    user_data: dict[str, Any],
    forwards: dict[int, int] | None = None,
    guest_commands: tuple[tuple[str, str], ...] = (),
    multipart: bool = False,
) -> Iterator[Guest]:
    """A running instance of image (never written: it runs on an overlay in scratch). With
    multipart, the user-data is what several tools together make: a gzipped MIME multipart of
    a shell script, the login key's cloud-config and user_data's own cloud-config."""
    scratch.mkdir(parents=True, exist_ok=True)
    key = buildsecrets.ssh_keypair(scratch / "ssh", f"imageforge-test-{instance_id}")
    text = seed_user_data(key.public, None if multipart else user_data)
    seed = qemu.make_seed(
        scratch / "seed.iso",
        user_data=gzipped_multipart(text, user_data) if multipart else text,
        meta_data=f"instance-id: {instance_id}\nlocal-hostname: {instance_id}\n",
    )
    vm = qemu.VirtualMachine(
        disk=qcow2.overlay(image, scratch / "overlay.qcow2"),
        serial_log=scratch / "serial.log",
        seed=seed,
        memory_mb=2048,
        restrict_network=True,
        forwards=forwards or {},
        guest_commands=guest_commands,
    )
    with vm:
        guest = Guest(vm, key.private)
        guest.wait_for_login()
        yield guest
