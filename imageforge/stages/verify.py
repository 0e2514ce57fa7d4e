"""verify: boot the built image and run testinfra against it over SSH; record the outcome.

A local build boots in QEMU from a throwaway overlay (the artifact is never written), with no
network but SSH and the flavor's ports forwarded on 127.0.0.1. A cloud build boots as one
verification instance in its build region (the cloud's Launcher: fresh key pair, SSH admitted
from this machine only, all of it deleted on the way out). Either way the machine gets a fresh
key the way clouds give one (cloud-init user-data), and the same suites run against it. A
verified cloud image is then copied to its other regions, never before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imageforge import clouds, log
from imageforge.clouds import Distributor, Launcher
from imageforge.clouds.common import Instance, LaunchRequest
from imageforge.clouds.local import seed_user_data
from imageforge.config import Project, settings
from imageforge.config.matrix import Cell
from imageforge.errors import ImageforgeError, Interrupted
from imageforge.process import buildsecrets, locks, qemu, reap
from imageforge.records import state
from imageforge.records.record import BuildRecord
from imageforge.stages import sbom, sshchecks

COMMON_SUITE = "tests/infra/test_common.py"
SSH_TIMEOUT = 300.0
JUNIT = "verify.junit.xml"
BOOT_LOG = "verify-boot.log"
# Reach verification instances' SSH through host:port instead of their address (a tunnel or a
# port forward to the instance; the integration tests point it at a stand-in VM).
SSH_VIA = settings.name("verify_ssh_via")
# The CIDR that verification instances admit SSH from (default: this machine's address towards
# the cloud's API, a /32; behind NAT, set your public address here).


def verify(project: Project, cell: Cell, record: BuildRecord) -> BuildRecord:
    """Run the common hygiene suite and the flavor's suite; return the record with the outcome,
    verified (and bound to the artifacts' digests and image ids) only if every check passed."""
    _check_verifiable(record)
    suites = [COMMON_SUITE] + ([cell.flavor.tests] if cell.flavor.tests else [])
    with (
        locks.cell(project.root, record.flavor, record.cloud, f"verify {record.id}"),
        log.step(f"verify {record.flavor} build {record.id}") as timing,
    ):
        state.bind(record)  # refuses artifacts that changed since the build
        scratch = reap.claim(Path(tempfile.mkdtemp(prefix=f"imageforge-verify-{record.id}-")))
        try:
            outcome = _run_checks(project, cell, record, suites, scratch)
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
    cloud = clouds.get(record.cloud)
    if isinstance(cloud, Distributor):
        with log.step("copy the verified image to its other regions"):
            copies = cloud.distribute(project, record)
        if copies:
            record = state.distributed(record, copies)
            log.info("copies: " + ", ".join(f"{r} {i}" for r, i in sorted(copies.items())))
    return record


def _check_verifiable(record: BuildRecord) -> None:
    if record.status == "building":
        raise ImageforgeError(f"build {record.id} is still building; nothing to verify yet")
    # A cloud build's image is its artifact ids; a local build's is a file, which may be gone.
    image = record.directory / "image" / f"{record.flavor}.qcow2"
    if not record.artifact_ids and not image.is_file():
        raise ImageforgeError(f"build {record.id} is {record.status} and has no image")


def _run_checks(
    project: Project, cell: Cell, record: BuildRecord, suites: list[str], scratch: Path
) -> dict[str, Any]:
    """Get a machine running the image, run the suites against it, and return the outcome."""
    key = buildsecrets.ssh_keypair(scratch / "ssh", f"imageforge-verify-{record.id}")
    user_data = seed_user_data(key.public, cell.flavor.verify_user_data)
    user = clouds.get(record.cloud).ssh_username(cell.os)
    forbidden = [v for k, v in buildsecrets.host_proxies().items() if k != "no_proxy"]
    with (
        _machine(project, cell, record, key.public, user_data) as m,
        sshchecks.session(m.address, m.port, user, key.private, scratch) as ssh,
    ):
        with log.step("boot") as boot:
            if m.vm:
                m.vm.wait_for_ssh(SSH_TIMEOUT)
            else:
                qemu.wait_for_ssh(m.port, SSH_TIMEOUT, host=m.address)
            sshchecks.wait_for_login(ssh)
        with log.step("wait for a running system; systemd-analyze") as settle:
            startup = sshchecks.startup(ssh, record.directory / BOOT_LOG)
        log.info(
            f"startup: kernel {startup.get('kernel_seconds')}s + userspace "
            f"{startup.get('userspace_seconds')}s (systemd-analyze, in {BOOT_LOG})"
        )
        env = {
            "IMAGEFORGE_BUILD_PUBKEY": record.build_public_key,
            "IMAGEFORGE_VERIFY_PUBKEY": key.public,
            "IMAGEFORGE_VERIFY_INSTANCE_ID": m.id,
            "IMAGE_USER": cell.flavor.user,
            "IMAGEFORGE_PORTS": json.dumps({str(g): h for g, h in m.forwards.items()}),
            "IMAGEFORGE_ARTIFACTS": str(record.directory),
            "IMAGEFORGE_VERIFY_USER_DATA": json.dumps(cell.flavor.verify_user_data),
            "IMAGEFORGE_FORBIDDEN_VALUES": "\n".join(forbidden),
        }
        with log.step(f"testinfra: {', '.join(suites)}") as checks:
            outcome = sshchecks.run_suites(
                ssh,
                suites,
                project_root=project.root,
                env=env,
                junit=record.directory / JUNIT,
                logfile=record.directory / "verify.log",
                secrets=forbidden,
            )
        outcome.update(sbom.capture(ssh, cell, record))  # passed or not; {} and a warning if not
        # A local verification VM is stopped, not shut down: its overlay is thrown away, and a
        # guest's shutdown proves nothing checked here (RabbitMQ's stop alone took 60 s on TCG).
    outcome["boot"] = {
        "to_login_seconds": boot["seconds"],
        "to_running_seconds": round(boot["seconds"] + settle["seconds"], 2),
        **startup,
        "checks_seconds": checks["seconds"],
    }
    if m.vm is None:  # an instance in a cloud, for whoever looks for it there
        outcome["instance"] = {"id": m.id, "where": m.where}
    return outcome


@contextlib.contextmanager
def _machine(
    project: Project, cell: Cell, record: BuildRecord, public_key: str, user_data: str
) -> Iterator[Instance]:
    """One verification instance of the build's image, from its cloud's Launcher (a local
    build's is a QEMU VM here), removed with everything made for it on the way out."""
    launcher = clouds.capability(record.cloud, Launcher)
    ssh_from, via = settings.current().verify_ssh_from, settings.current().verify_ssh_via
    request = LaunchRequest(project, cell, record, public_key, user_data, ssh_from)
    with launcher.launch(request) as instance:
        if instance.vm is None:
            log.info(f"verification instance {instance.id} in {instance.where}: {instance.address}")
            if via:
                host, port = _host_port(via)
                log.info(f"reaching its SSH through {host}:{port} (${SSH_VIA})")
                instance = dataclasses.replace(instance, address=host, port=port)
        yield instance


def _host_port(text: str) -> tuple[str, int]:
    host, _, number = text.rpartition(":")
    if not host or not number.isdigit() or not 0 < int(number) < 65536:
        raise ValueError(text)
    return host, int(number)


def _summary_text(record: BuildRecord) -> str:
    v = record.verification
    lines = [
        f"build {record.id} ({record.flavor} on {record.cloud}): "
        f"{'VERIFIED' if record.verified else 'FAILED'}",
        f"passed {v['passed']}, failed {v['failed']}, errors {v['errors']}, skipped {v['skipped']}",
        *[f"  failed: {name}" for name in v["failures"]],
    ]
    return "\n".join(lines) + "\n"
