"""verify: boot the built image from a throwaway overlay and run testinfra against it over SSH.

The artifact is never written: the VM runs on a copy-on-write overlay, gets a fresh key the way
clouds give one (a cloud-init NoCloud seed), has no network but SSH forwarded on 127.0.0.1,
and everything temporary is removed afterwards.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tenacity import RetryError, Retrying, retry_if_result, stop_after_attempt, wait_fixed

from imageforge import buildsecrets, locks, log, qemu, reap, runner, state
from imageforge.clouds.local import seed_user_data
from imageforge.config import Project
from imageforge.errors import CommandError, ImageforgeError, Interrupted
from imageforge.matrix import Cell
from imageforge.state import BuildRecord

COMMON_SUITE = "tests/infra/test_common.py"
SSH_TIMEOUT = 300.0
JUNIT = "verify.junit.xml"
BOOT_LOG = "verify-boot.log"
LOGIN_RETRY_SECONDS = 2.0


def verify(project: Project, cell: Cell, record: BuildRecord) -> BuildRecord:
    """Run the common hygiene suite and the flavor's suite; return the record with the outcome,
    verified (and bound to the artifacts' digests) only if every check passed."""
    if record.cloud != "local":
        raise ImageforgeError(
            f"verification boots local builds; {record.id} is a {record.cloud} build"
        )
    image = record.directory / "image" / f"{record.flavor}.qcow2"
    if not image.is_file() or record.status == "building":
        raise ImageforgeError(f"build {record.id} is {record.status} and has no image to verify")
    suites = [COMMON_SUITE] + ([cell.flavor.tests] if cell.flavor.tests else [])
    with (
        locks.cell(project.root, record.flavor, record.cloud, f"verify {record.id}"),
        log.step(f"verify {record.flavor} build {record.id}") as timing,
    ):
        state.bind(record)  # refuses artifacts that changed since the build
        scratch = reap.claim(Path(tempfile.mkdtemp(prefix=f"imageforge-verify-{record.id}-")))
        try:
            outcome = _boot_and_test(project, cell, record, image, suites, scratch)
        except (KeyboardInterrupt, Interrupted):
            state.abandoned(record, "interrupted", "verification stopped by the user")
            raise
        except BaseException as exc:
            reason = (str(exc) or type(exc).__name__).splitlines()[0]
            state.abandoned(record, "failed", f"verification could not run: {reason}")
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    record = state.verification_done(record, outcome, round(timing["seconds"], 1))
    (record.directory / "verify-summary.txt").write_text(_summary_text(record))
    if not record.verified:
        raise ImageforgeError(
            f"build {record.id} failed verification: {', '.join(outcome['failures'])}",
            hint=f"see {record.directory / 'verify.log'}",
        )
    log.info(f"verified: {outcome['passed']} checks passed")
    return record


def _boot_and_test(
    project: Project, cell: Cell, record: BuildRecord, image: Path, suites: list[str], scratch: Path
) -> dict[str, Any]:
    local = project.images.clouds.local
    overlay = qemu.overlay(image, scratch / "overlay.qcow2")
    key = buildsecrets.ssh_keypair(scratch / "ssh", f"imageforge-verify-{record.id}")
    instance_id = f"imageforge-verify-{record.id}"
    seed = qemu.make_seed(
        scratch / "seed.iso",
        user_data=seed_user_data(key.public, cell.flavor.verify_user_data),
        meta_data=f"instance-id: {instance_id}\nlocal-hostname: debian\n",
    )
    user = "debian"
    # The flavor's other ports, for suites that use them as a client would (e.g. VNC).
    forwards = {port: qemu.free_port() for port in cell.flavor.ports if port != 22}
    vm = qemu.VirtualMachine(
        forwards=forwards,
        disk=overlay,
        serial_log=record.directory / "verify-serial.log",
        seed=seed,
        cpus=local.cpus,
        memory_mb=local.memory_mb,
        accelerator=local.accelerator,
        restrict_network=True,
    )
    ssh_config = scratch / "ssh_config"
    sockets = reap.claim(Path(tempfile.mkdtemp(prefix="imageforge-ssh-")))
    ssh_config.write_text(
        "Host *\n"
        f"  IdentityFile {key.private}\n  IdentitiesOnly yes\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
        "  ConnectTimeout 10\n"
        # One SSH connection for every check: each command of a check is a new session on it.
        # Its socket's path must stay short (sun_path is 108 bytes), hence a directory of its own.
        f"  ControlMaster auto\n  ControlPath {sockets}/%C\n  ControlPersist 600\n"
    )
    junit = record.directory / JUNIT
    with vm, _control_master(ssh_config, user, vm, sockets):
        with log.step("boot") as boot:
            vm.wait_for_ssh(SSH_TIMEOUT)
            _wait_for_login(ssh_config, user, vm.ssh_port)
        with log.step("wait for a running system; systemd-analyze") as settle:
            startup = _startup(ssh_config, user, vm.ssh_port, record.directory / BOOT_LOG)
        log.info(
            f"startup: kernel {startup.get('kernel_seconds')}s + userspace "
            f"{startup.get('userspace_seconds')}s (systemd-analyze, in {BOOT_LOG})"
        )
        env = {
            "PYTHONUNBUFFERED": "1",
            "IMAGEFORGE_BUILD_PUBKEY": record.build_public_key,
            "IMAGEFORGE_VERIFY_PUBKEY": key.public,
            "IMAGEFORGE_VERIFY_INSTANCE_ID": instance_id,
            "IMAGE_USER": cell.flavor.user,
            "IMAGEFORGE_PORTS": json.dumps({str(g): h for g, h in forwards.items()}),
            "IMAGEFORGE_ARTIFACTS": str(record.directory),
            "IMAGEFORGE_VERIFY_USER_DATA": json.dumps(cell.flavor.verify_user_data),
            "IMAGEFORGE_FORBIDDEN_VALUES": "\n".join(
                v for k, v in buildsecrets.host_proxies().items() if k != "no_proxy"
            ),
        }
        with log.step(f"testinfra: {', '.join(suites)}") as checks:
            try:
                runner.run(
                    [
                        sys.executable,
                        "-m",
                        "pytest",
                        "-c",
                        "tests/infra/pytest.ini",
                        "--rootdir",
                        "tests/infra",
                        *suites,
                        f"--hosts=ssh://{user}@127.0.0.1:{vm.ssh_port}",
                        f"--ssh-config={ssh_config}",
                        f"--junitxml={junit}",
                        "-q",
                        "--durations=5",
                    ],
                    env=env,
                    cwd=project.root,
                    logfile=record.directory / "verify.log",
                    prefix="verify",
                    secrets=env["IMAGEFORGE_FORBIDDEN_VALUES"].splitlines(),
                    what="testinfra",
                )
            except CommandError as exc:
                if not junit.is_file():
                    raise
                log.warn(f"testinfra reported failures (exit code {exc.returncode})")
        _poweroff(ssh_config, user, vm)
    outcome = parse_junit(junit)
    outcome["boot"] = {
        "to_login_seconds": boot["seconds"],
        "to_running_seconds": round(boot["seconds"] + settle["seconds"], 2),
        **startup,
        "checks_seconds": checks["seconds"],
    }
    return outcome


STARTUP = re.compile(r"Startup finished in (.+?) \(kernel\) \+ (.+?) \(userspace\)")


def _startup(ssh_config: Path, user: str, port: int, logfile: Path) -> dict[str, float]:
    """Wait until systemd has finished booting; log systemd-analyze and return its times."""
    command = (
        "systemctl is-system-running --wait; systemd-analyze; systemd-analyze critical-chain; "
        "systemd-analyze blame | head -n 25; sudo cloud-init analyze show | tail -n 12"
    )
    result = runner.run(_ssh(ssh_config, user, port, command), stream=False, check=False)
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


@contextlib.contextmanager
def _control_master(
    ssh_config: Path, user: str, vm: qemu.VirtualMachine, sockets: Path
) -> Iterator[None]:
    """Stop the shared SSH connection on the way out, whatever happened, and remove its socket."""
    try:
        yield
    finally:
        argv = ["ssh", "-F", str(ssh_config), "-p", str(vm.ssh_port), "-O", "exit"]
        runner.run([*argv, f"{user}@127.0.0.1"], stream=False, check=False)
        shutil.rmtree(sockets, ignore_errors=True)


def _ssh(ssh_config: Path, user: str, port: int, command: str) -> list[str]:
    return ["ssh", "-F", str(ssh_config), "-p", str(port), f"{user}@127.0.0.1", command]


def _wait_for_login(ssh_config: Path, user: str, port: int, attempts: int = 30) -> None:
    """The banner comes before cloud-init has installed the key: retry until a login works."""

    def logged_in() -> bool:
        argv = _ssh(ssh_config, user, port, "true")
        return runner.run(argv, stream=False, check=False).returncode == 0

    retrying = Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait_fixed(LOGIN_RETRY_SECONDS),
        retry=retry_if_result(lambda ok: not ok),
    )
    try:
        retrying(logged_in)
    except RetryError:
        raise ImageforgeError(
            f"could not log in as {user} on 127.0.0.1:{port} with the verification key"
        ) from None


def _poweroff(ssh_config: Path, user: str, vm: qemu.VirtualMachine) -> None:
    runner.run(
        _ssh(ssh_config, user, vm.ssh_port, "sudo systemctl poweroff"), stream=False, check=False
    )
    try:
        vm.wait_shutdown(60)
    except ImageforgeError:
        log.warn("the verification VM did not power off in 60s; stopping it")


def parse_junit(path: Path) -> dict[str, Any]:
    """Counts and the names of failed tests from pytest's JUnit XML."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failures = []
    for suite in suites:
        for name in counts:
            counts[name] += int(suite.get(name, 0))
        for case in suite.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failures.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {
        "passed": passed,
        "failed": counts["failures"],
        "errors": counts["errors"],
        "skipped": counts["skipped"],
        "failures": failures,
        "junit": path.name,
    }


def _summary_text(record: BuildRecord) -> str:
    v = record.verification
    lines = [
        f"build {record.id} ({record.flavor} on {record.cloud}): "
        f"{'VERIFIED' if record.verified else 'FAILED'}",
        f"passed {v['passed']}, failed {v['failed']}, errors {v['errors']}, skipped {v['skipped']}",
        *[f"  failed: {name}" for name in v["failures"]],
    ]
    return "\n".join(lines) + "\n"
