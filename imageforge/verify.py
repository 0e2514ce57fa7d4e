"""verify: boot the built image from a throwaway overlay and run testinfra against it over SSH.

The artifact is never written: the VM runs on a copy-on-write overlay, gets a fresh key the way
clouds give one (a cloud-init NoCloud seed), has no network but SSH forwarded on 127.0.0.1,
and everything temporary is removed afterwards.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from imageforge import buildsecrets, log, qemu, runner
from imageforge.clouds.local import seed_user_data
from imageforge.config import Project
from imageforge.errors import CommandError, ImageforgeError
from imageforge.matrix import Cell
from imageforge.state import BuildRecord

COMMON_SUITE = "tests/infra/test_common.py"
SSH_TIMEOUT = 300.0
JUNIT = "verify.junit.xml"


def verify(project: Project, cell: Cell, record: BuildRecord) -> BuildRecord:
    """Run the common hygiene suite and the flavor's suite; record the outcome."""
    if record.cloud != "local":
        raise ImageforgeError(
            f"verification boots local builds; {record.id} is a {record.cloud} build"
        )
    image = record.directory / "image" / f"{record.flavor}.qcow2"
    if not image.is_file():
        raise ImageforgeError(f"build {record.id} has no image at {image}")
    suites = [COMMON_SUITE] + ([cell.flavor.tests] if cell.flavor.tests else [])
    local = project.images.clouds.local
    scratch = Path(tempfile.mkdtemp(prefix=f"imageforge-verify-{record.id}-"))
    with log.step(f"verify {record.flavor} build {record.id}") as timing:
        try:
            outcome = _boot_and_test(project, record, image, suites, scratch, local)
        except BaseException as exc:
            record.verified, record.status = False, "failed"
            reason = (str(exc) or type(exc).__name__).splitlines()[0]
            record.error = f"verification could not run: {reason}"
            record.save()
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        record.verification = outcome
        record.verified = outcome["failed"] == outcome["errors"] == 0 and outcome["passed"] > 0
        record.status = "verified" if record.verified else "failed"
        record.error = (
            "" if record.verified else "verification failed: " + ", ".join(outcome["failures"])
        )
        record.save()
        (record.directory / "verify-summary.txt").write_text(_summary_text(record))
        if not record.verified:
            raise ImageforgeError(
                f"build {record.id} failed verification: {', '.join(outcome['failures'])}",
                hint=f"see {record.directory / 'verify.log'}",
            )
    record.timings["verify"] = timing["seconds"]
    record.save()
    log.info(f"verified: {outcome['passed']} checks passed")
    return record


def _boot_and_test(
    project: Project, record: BuildRecord, image: Path, suites: list[str], scratch: Path, local: Any
) -> dict[str, Any]:
    overlay = qemu.overlay(image, scratch / "overlay.qcow2")
    key = buildsecrets.ssh_keypair(scratch / "ssh", f"imageforge-verify-{record.id}")
    instance_id = f"imageforge-verify-{record.id}"
    seed = qemu.make_seed(
        scratch / "seed.iso",
        user_data=seed_user_data(key.public),
        meta_data=f"instance-id: {instance_id}\nlocal-hostname: debian\n",
    )
    user = "debian"
    vm = qemu.VirtualMachine(
        disk=overlay,
        serial_log=record.directory / "verify-serial.log",
        seed=seed,
        cpus=local.cpus,
        memory_mb=local.memory_mb,
        accelerator=local.accelerator,
        restrict_network=True,
    )
    ssh_config = scratch / "ssh_config"
    ssh_config.write_text(
        "Host *\n"
        f"  IdentityFile {key.private}\n  IdentitiesOnly yes\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
        "  ConnectTimeout 10\n"
    )
    junit = record.directory / JUNIT
    with vm:
        with log.step("boot"):
            vm.wait_for_ssh(SSH_TIMEOUT)
            _wait_for_login(ssh_config, user, vm.ssh_port)
        env = {
            "PYTHONUNBUFFERED": "1",
            "IMAGEFORGE_BUILD_PUBKEY": record.build_public_key,
            "IMAGEFORGE_VERIFY_PUBKEY": key.public,
            "IMAGEFORGE_VERIFY_INSTANCE_ID": instance_id,
            "IMAGE_USER": project.images.flavors[record.flavor].user,
            "IMAGEFORGE_FORBIDDEN_VALUES": "\n".join(
                v for k, v in buildsecrets.host_proxies().items() if k != "no_proxy"
            ),
        }
        with log.step(f"testinfra: {', '.join(suites)}"):
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
                        "--sudo",
                        f"--junitxml={junit}",
                        "-q",
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
    return parse_junit(junit)


def _ssh(ssh_config: Path, user: str, port: int, command: str) -> list[str]:
    return ["ssh", "-F", str(ssh_config), "-p", str(port), f"{user}@127.0.0.1", command]


def _wait_for_login(ssh_config: Path, user: str, port: int, attempts: int = 30) -> None:
    """The banner comes before cloud-init has installed the key: retry until a login works."""
    import time

    for _ in range(attempts):
        result = runner.run(_ssh(ssh_config, user, port, "true"), stream=False, check=False)
        if result.returncode == 0:
            return
        time.sleep(2)
    raise ImageforgeError(
        f"could not log in as {user} on 127.0.0.1:{port} with the verification key"
    )


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
