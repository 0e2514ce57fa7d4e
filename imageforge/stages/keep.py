"""`--on-error=keep`: a failed build's VM kept to look inside, and its release.

Packer then runs with `-on-error=abort`, which skips all of its cleanup and leaves its QEMU
running. imageforge takes that VM over:
- it finds QEMU by the build's private scratch directory on its command line;
- it names QEMU the scratch's owner, so the next run's reap leaves the scratch alone while the
  VM runs and removes it once the VM is gone;
- it writes `kept.json` into the build directory.

The build key stays 0600 in the scratch (0700). `release` stops the VM and removes the scratch,
and so the key. It runs for `invoke build --release BUILD`, and for the next build of the cell.
On a cloud, the build instance stays with an expiry tag (KEEP_KEY), for `invoke sweep`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from imageforge import log
from imageforge.errors import ConfigError, ImageforgeError
from imageforge.process import reap, runner
from imageforge.records.record import artifacts_root
from imageforge.stages import sshchecks

KEPT = "kept.json"
STEP_OUTPUT = "failed-step.log"
JOURNAL = "journal.log"
FAILED_UNITS = "failed-units.txt"
# What a kept build's directory holds besides what every failed build keeps.
FILES = (KEPT, STEP_OUTPUT, JOURNAL, FAILED_UNITS)
DEFAULT_HOURS = 2.0
HOSTFWD = re.compile(r"hostfwd=tcp:127\.0\.0\.1:(\d+)-:22\b")
STOP_SECONDS = 10.0


def on_error_mode(value: str) -> bool:
    """--on-error as given: True to keep a failed build's VM."""
    if value not in ("cleanup", "keep"):
        raise ConfigError(f"--on-error: {value!r} is not allowed; give cleanup or keep")
    return value == "keep"


def keep_hours(value: object) -> float:
    """--keep-hours as a positive number of hours, a week at most."""
    try:
        hours = float(str(value).strip())
    except ValueError:
        raise ConfigError(f"--keep-hours: {value!r} is not a number of hours") from None
    if not 0 < hours <= 168:
        raise ConfigError(f"--keep-hours: {hours:g} is out of range; give more than 0, 168 at most")
    return hours


def expiry(hours: float) -> int:
    """When a kept cloud instance may go: seconds since the epoch (a valid GCP label too)."""
    return int(time.time() + hours * 3600)


def when(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True)
class KeptVm:
    """A failed local build's VM, kept: who runs it, where SSH listens, and its key."""

    build_id: str
    process: str  # reap.process_token of QEMU: a reused pid is never taken for it
    scratch: str
    port: int
    user: str
    key: str

    def ssh(self) -> list[str]:
        """A ready ssh command line for the VM."""
        return [
            "ssh", "-i", self.key, "-p", str(self.port),
            "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", f"{self.user}@127.0.0.1",
        ]  # fmt: skip

    def running(self) -> bool:
        return reap.owner_alive(self.process)


def hold(
    directory: Path,
    scratch: Path,
    key: Path,
    user: str,
    step_output: list[str],
    secrets: list[str],
) -> str:
    """Take over the VM Packer left (or say why not); what the failure message adds."""
    _write(directory / STEP_OUTPUT, "\n".join(step_output) + "\n", secrets)
    found = _qemu_of(scratch)
    if found is None:
        return "--on-error=keep: the build VM was not running any more; nothing is kept"
    pid, argv = found
    port = next((int(m.group(1)) for a in argv if (m := HOSTFWD.search(a))), None)
    token = reap.process_token(pid)
    if port is None or token is None:
        return "--on-error=keep: the build VM had no SSH port on 127.0.0.1; nothing is kept"
    kept = KeptVm(directory.name, token, str(scratch), port, user, str(key))
    reap.claim(scratch, owner=token)  # the scratch (and key) now live as long as the VM
    _write(directory / KEPT, json.dumps(asdict(kept), indent=2) + "\n", secrets)
    _collect(directory, kept, secrets)
    return (
        f"--on-error=keep: the build VM stays up (QEMU pid {pid}); log in with\n"
        f"    {shlex.join(kept.ssh())}\n"
        f"  its failing step's output, journal and failed units are in {directory}/; "
        f"`invoke build --release {directory.name}` (or the next build of this image) stops it"
    )


def _qemu_of(scratch: Path) -> tuple[int, list[str]] | None:
    """The QEMU process (ours) whose command line names the scratch directory."""
    mark = f"{scratch}/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if entry.stat().st_uid != os.getuid():
                continue
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if Path(argv[0]).name.startswith("qemu-system") and any(mark in a for a in argv):
                return int(entry.name), argv
    return None


def _collect(directory: Path, kept: KeptVm, secrets: list[str]) -> None:
    """The guest's journal of this boot and its failed units, into the build directory."""
    try:
        with sshchecks.session("127.0.0.1", kept.port, kept.user, Path(kept.key),
                               Path(kept.scratch)) as ssh:  # fmt: skip
            sshchecks.wait_for_login(ssh, attempts=5)
            journal = ssh.run("sudo journalctl -b --no-pager -o short-precise")
            failed = ssh.run("systemctl --failed --no-pager --plain")
    except ImageforgeError as exc:
        log.warn(f"could not read the kept VM's journal: {exc}")
        return
    _write(directory / JOURNAL, journal.output + "\n", secrets)
    _write(directory / FAILED_UNITS, failed.output + "\n", secrets)


def _write(path: Path, text: str, secrets: list[str]) -> None:
    """A file of the build directory, for its owner only (a journal can say much), with the
    build's secrets (proxy passwords) redacted."""
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(runner.redact(text, secrets))


def kept(directory: Path) -> KeptVm | None:
    """The kept VM a build directory names, if any."""
    try:
        return KeptVm(**json.loads((directory / KEPT).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def release(directory: Path) -> bool:
    """Stop a build's kept VM and remove its scratch and key; False if none was kept."""
    vm = kept(directory)
    if vm is None:
        return False
    if vm.running():
        pid = int(vm.process.split()[0])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # QEMU exits on SIGTERM at once
        deadline = time.monotonic() + STOP_SECONDS
        while vm.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        if vm.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    scratch = Path(vm.scratch)
    if scratch.name.startswith(f"{reap.PREFIX}{vm.build_id}-"):  # only the build's own
        shutil.rmtree(scratch, ignore_errors=True)
    (directory / KEPT).unlink(missing_ok=True)
    log.info(f"released the VM kept from build {vm.build_id}: stopped, key and scratch removed")
    return True


def release_cell(project_root: Path, flavor: str) -> list[str]:
    """Release every VM kept from a failed build of the flavor (the next build's first act)."""
    released = []
    for found in sorted((artifacts_root(project_root) / flavor).glob(f"*/{KEPT}")):
        if release(found.parent):
            released.append(found.parent.name)
    return released


def release_build(project_root: Path, build_id: str) -> Path:
    """`invoke build --release BUILD`: the build's directory, after its VM is released."""
    found = [p.parent for p in artifacts_root(project_root).glob(f"*/{build_id}/{KEPT}")]
    if "/" in build_id or not build_id.strip(".") or not found:
        held = sorted(p.parent.name for p in artifacts_root(project_root).glob(f"*/*/{KEPT}"))
        raise ConfigError(
            f"--release: build {build_id!r} has no kept VM (kept now: {', '.join(held) or 'none'})"
        )
    release(found[0])
    return found[0]
