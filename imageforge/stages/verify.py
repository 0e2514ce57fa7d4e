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
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imageforge import clouds, log
from imageforge.clouds import Distributor, Launcher
from imageforge.clouds.local import seed_user_data
from imageforge.config import Project, settings
from imageforge.config.matrix import Cell
from imageforge.errors import ImageforgeError, Interrupted
from imageforge.process import buildsecrets, locks, qemu, reap
from imageforge.records import state
from imageforge.records.state import BuildRecord
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
    if record.cloud == "local":
        image = record.directory / "image" / f"{record.flavor}.qcow2"
        if not image.is_file():
            raise ImageforgeError(f"build {record.id} is {record.status} and has no image")
    elif not record.artifact_ids:
        raise ImageforgeError(f"build {record.id} is {record.status} and made no image")


def _run_checks(
    project: Project, cell: Cell, record: BuildRecord, suites: list[str], scratch: Path
) -> dict[str, Any]:
    """Get a machine running the image, run the suites against it, and return the outcome."""
    key = buildsecrets.ssh_keypair(scratch / "ssh", f"imageforge-verify-{record.id}")
    user_data = seed_user_data(key.public, cell.flavor.verify_user_data)
    machine = _local_machine if record.cloud == "local" else _cloud_machine
    forbidden = [v for k, v in buildsecrets.host_proxies().items() if k != "no_proxy"]
    with (
        machine(project, cell, record, key.public, user_data) as m,
        sshchecks.session(m.host, m.port, m.user, key.private, scratch) as ssh,
    ):
        with log.step("boot") as boot:
            if m.vm:
                m.vm.wait_for_ssh(SSH_TIMEOUT)
            else:
                qemu.wait_for_ssh(m.port, SSH_TIMEOUT, host=m.host)
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
            "IMAGEFORGE_VERIFY_INSTANCE_ID": m.instance_id,
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
    if record.cloud != "local":
        outcome["instance"] = {"id": m.instance_id, "where": m.where}
    return outcome


@dataclass(frozen=True)
class _Machine:
    """What the checks need of a machine: its SSH endpoint, login user and forwarded ports."""

    host: str
    port: int
    user: str
    instance_id: str
    where: str
    vm: qemu.VirtualMachine | None = None
    forwards: dict[int, int] = field(default_factory=dict)


@contextlib.contextmanager
def _local_machine(
    project: Project, cell: Cell, record: BuildRecord, public_key: str, user_data: str
) -> Iterator[_Machine]:
    """The image in QEMU on a throwaway overlay, with a NoCloud seed carrying user_data."""
    local = project.images.clouds.local
    scratch = reap.claim(Path(tempfile.mkdtemp(prefix=f"imageforge-vm-{record.id}-")))
    try:
        image = record.directory / "image" / f"{record.flavor}.qcow2"
        overlay = qemu.overlay(image, scratch / "overlay.qcow2")
        instance_id = f"imageforge-verify-{record.id}"
        seed = qemu.make_seed(
            scratch / "seed.iso",
            user_data=user_data,
            meta_data=f"instance-id: {instance_id}\nlocal-hostname: debian\n",
        )
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
        with vm:
            yield _Machine(
                qemu.LOCALHOST, vm.ssh_port, "debian", instance_id, "local", vm, forwards
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def _cloud_machine(
    project: Project, cell: Cell, record: BuildRecord, public_key: str, user_data: str
) -> Iterator[_Machine]:
    """One verification instance of the build's image, deleted with everything made for it."""
    launcher = clouds.capability(record.cloud, Launcher)
    user = clouds.get(record.cloud).ssh_username(cell.os)
    ssh_from, via = settings.current().verify_ssh_from, settings.current().verify_ssh_via
    with launcher.launch(
        project, cell, record, public_key=public_key, user_data=user_data, ssh_from=ssh_from
    ) as instance:
        log.info(f"verification instance {instance.id} in {instance.where}: {instance.address}")
        host, port = instance.address, 22
        if via:
            host, port = _host_port(via)
            log.info(f"reaching its SSH through {host}:{port} (${SSH_VIA})")
        yield _Machine(host, port, user, instance.id, instance.where)


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
