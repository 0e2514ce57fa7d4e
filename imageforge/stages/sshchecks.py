"""Checks over SSH, wherever the machine runs: wait for a login, a running system, then testinfra.

The verify stage gets a machine from QEMU (local builds) or from a cloud (a verification
instance), and hands its SSH endpoint here. Every check shares one SSH connection
(ControlMaster); the verification key never leaves the scratch directory.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenacity import RetryError, Retrying, retry_if_result, stop_after_attempt, wait_fixed

from imageforge import log
from imageforge.errors import CommandError, ImageforgeError
from imageforge.process import reap, runner
from imageforge.records import junit as junit_xml

LOGIN_RETRY_SECONDS = 2.0
STARTUP = re.compile(r"Startup finished in (.+?) \(kernel\) \+ (.+?) \(userspace\)")


@dataclass(frozen=True)
class Session:
    """SSH to user@host:port with one private key, over one shared connection."""

    host: str
    port: int
    user: str
    config: Path

    def argv(self, command: str) -> list[str]:
        return ["ssh", "-F", str(self.config), "-p", str(self.port), self.login, command]

    @property
    def login(self) -> str:
        return f"{self.user}@{self.host}"

    @property
    def url(self) -> str:
        """The host as testinfra's --hosts takes it."""
        return f"ssh://{self.user}@{self.host}:{self.port}"

    def run(self, command: str) -> runner.CommandResult:
        return runner.run(self.argv(command), stream=False, check=False)


@contextlib.contextmanager
def session(host: str, port: int, user: str, private_key: Path, scratch: Path) -> Iterator[Session]:
    """A Session whose shared connection is closed, and its socket removed, on the way out."""
    sockets = reap.claim(Path(tempfile.mkdtemp(prefix="imageforge-ssh-")))
    config = scratch / "ssh_config"
    config.write_text(
        "Host *\n"
        f"  IdentityFile {private_key}\n  IdentitiesOnly yes\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
        "  ConnectTimeout 10\n"
        # One SSH connection for every check: each command of a check is a new session on it.
        # Its socket's path must stay short (sun_path is 108 bytes), hence a directory of its own.
        f"  ControlMaster auto\n  ControlPath {sockets}/%C\n  ControlPersist 600\n"
    )
    ssh = Session(host, port, user, config)
    try:
        yield ssh
    finally:
        stop = ["ssh", "-F", str(config), "-p", str(port), "-O", "exit", ssh.login]
        runner.run(stop, stream=False, check=False)
        shutil.rmtree(sockets, ignore_errors=True)


def wait_for_login(ssh: Session, attempts: int = 30) -> None:
    """The banner comes before cloud-init has installed the key: retry until a login works."""
    retrying = Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait_fixed(LOGIN_RETRY_SECONDS),
        retry=retry_if_result(lambda ok: not ok),
    )
    try:
        retrying(lambda: ssh.run("true").returncode == 0)
    except RetryError:
        raise ImageforgeError(
            f"could not log in as {ssh.user} on {ssh.host}:{ssh.port} with the verification key"
        ) from None


def startup(ssh: Session, logfile: Path) -> dict[str, float]:
    """Wait until systemd has finished booting; log systemd-analyze and return its times."""
    command = (
        "systemctl is-system-running --wait; systemd-analyze; systemd-analyze critical-chain; "
        "systemd-analyze blame | head -n 25; sudo cloud-init analyze show | tail -n 12"
    )
    result = ssh.run(command)
    logfile.write_text(result.output + "\n")
    match = STARTUP.search(result.output)
    if not match:
        return {}
    return {
        "kernel_seconds": timespan_seconds(match.group(1)),
        "userspace_seconds": timespan_seconds(match.group(2)),
    }


def timespan_seconds(text: str) -> float:
    """systemd's time span ('1min 2.345s', '850ms', '4.2s') in seconds."""
    units = {"h": 3600.0, "min": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)\s*(h|min|ms|us|s)", text):
        total += float(number) * units[unit]
    return round(total, 3)


def run_suites(
    ssh: Session,
    suites: list[str],
    *,
    project_root: Path,
    env: dict[str, str],
    junit: Path,
    logfile: Path,
    secrets: list[str],
) -> dict[str, Any]:
    """Run the testinfra suites against the session's host; the JUnit outcome."""
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-c",
        "tests/infra/pytest.ini",
        "--rootdir",
        "tests/infra",
        *suites,
        f"--hosts={ssh.url}",
        f"--ssh-config={ssh.config}",
        f"--junitxml={junit}",
        "-q",
        "--durations=5",
    ]
    try:
        runner.run(
            argv,
            env={"PYTHONUNBUFFERED": "1", **env},
            cwd=project_root,
            logfile=logfile,
            prefix="verify",
            secrets=secrets,
            what="testinfra",
        )
    except CommandError as exc:
        if not junit.is_file():
            raise
        log.warn(f"testinfra reported failures (exit code {exc.returncode})")
    return junit_xml.summary(junit)
