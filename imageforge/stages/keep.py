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
from imageforge.clouds.housekeeping import KEEP_KEY, KEEP_MAX_HOURS, utc_minute
from imageforge.errors import ConfigError, ImageforgeError, Interrupted
from imageforge.process import console, locks, reap, runner
from imageforge.records.record import artifacts_root
from imageforge.stages import sshchecks

KEPT = "kept.json"
STEP_OUTPUT = "failed-step.log"
JOURNAL = "journal.log"
FAILED_UNITS = "failed-units.txt"
# What a kept build's directory holds besides what every failed build keeps.
FILES = (KEPT, STEP_OUTPUT, JOURNAL, FAILED_UNITS)
DEFAULT_HOURS = 2.0
MAX_HOURS = KEEP_MAX_HOURS
HOSTFWD = re.compile(r"hostfwd=tcp:127\.0\.0\.1:(\d+)-:22\b")
BUILD_ID = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9a-z-]+", re.ASCII)
STOP_SECONDS = 10.0


def on_error_mode(value: str) -> bool:
    """--on-error as given: True to keep a failed build's VM."""
    if value not in ("cleanup", "keep"):
        raise ConfigError(f"--on-error: {value!r} is not allowed; give cleanup or keep")
    return value == "keep"


def keep_hours(value: object) -> float:
    """--keep-hours as a positive number of hours, a week at most (MAX_HOURS)."""
    try:
        hours = float(str(value).strip())
    except ValueError:
        raise ConfigError(f"--keep-hours: {value!r} is not a number of hours") from None
    if not 0 < hours <= MAX_HOURS:
        raise ConfigError(
            f"--keep-hours: {hours:g} is out of range; give more than 0, {MAX_HOURS} at most"
        )
    return hours


def expiry(hours: float) -> int:
    """When a kept cloud instance may go: seconds since the epoch (a valid GCP label too)."""
    return int(time.time() + hours * 3600)


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

    @property
    def pid(self) -> int:
        return int(self.process.split()[0])

    def running(self) -> bool:
        """The same QEMU (pid and start time) still runs, on the build's scratch."""
        return reap.owner_alive(self.process) and _runs_on(self.pid, Path(self.scratch))


def hold(
    directory: Path,
    scratch: Path,
    key: Path,
    user: str,
    step_output: list[str],
    secrets: list[str],
) -> str:
    """Take over the VM Packer left (or say why not): the lines the failure message gets. A VM
    that is not kept (no SSH port, an error, Ctrl-C on the way) is stopped: never one that
    nobody owns."""
    _write(directory / STEP_OUTPUT, "\n".join(step_output) + "\n", secrets)
    pid = _qemu_of(scratch)
    if pid is None:
        return "\n--on-error=keep: the build VM was not running any more; nothing is kept"
    try:
        kept = _take_over(directory, scratch, pid, key, user)
        if kept is None:
            _stop(pid, scratch)
            return "\n--on-error=keep: the build VM had no SSH port on 127.0.0.1; nothing is kept"
        _collect(directory, kept, secrets)
    except BaseException:
        _stop(pid, scratch)
        (directory / KEPT).unlink(missing_ok=True)
        reap.claim(scratch)  # back to this run, which removes it
        raise
    return (
        f"\n--on-error=keep: the build VM stays up (QEMU pid {pid}); log in with\n"
        f"    {shlex.join(kept.ssh())}\n"
        f"  its failing step's output, journal and failed units are in {directory}/; "
        f"`invoke build --release {directory.name}` (or the next build of this image) stops it"
    )


def kept_instance(cloud: str, until: int) -> str:
    """The lines a failed cloud build's message gets: its instance stays until `until`."""
    return (
        f"\n--on-error=keep: the build instance stays until {utc_minute(until)} (tag {KEEP_KEY}); "
        f"`invoke sweep --cloud {cloud} --yes` removes it then (Packer's key for it is gone)"
    )


def _take_over(directory: Path, scratch: Path, pid: int, key: Path, user: str) -> KeptVm | None:
    """kept.json (whole, then) QEMU named the scratch's owner; None without an SSH port."""
    argv = _argv(pid)
    port = next((int(m.group(1)) for a in argv if (m := HOSTFWD.search(a))), None)
    token = reap.process_token(pid)
    if port is None or token is None:
        return None
    kept = KeptVm(directory.name, token, str(scratch), port, user, str(key))
    partial = directory / f".{KEPT}.partial"
    _write(partial, json.dumps(asdict(kept), indent=2) + "\n", [])
    partial.replace(directory / KEPT)
    reap.claim(scratch, owner=token)  # the scratch (and key) now live as long as the VM
    return kept


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _runs_on(pid: int, scratch: Path) -> bool:
    """Whether pid is a QEMU of ours whose command line names the scratch directory."""
    try:
        if Path(f"/proc/{pid}").stat().st_uid != os.getuid():
            return False
    except OSError:
        return False
    argv = _argv(pid)
    mark = f"{scratch}/"
    return Path(argv[0]).name.startswith("qemu-system") and any(mark in a for a in argv)


def _qemu_of(scratch: Path) -> int | None:
    """The QEMU process (ours) whose command line names the scratch directory."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _runs_on(int(entry.name), scratch):
            return int(entry.name)
    return None


def _stop(pid: int, scratch: Path) -> None:
    """Stop the QEMU on the scratch: SIGTERM (QEMU exits at once), then SIGKILL."""
    started = time.monotonic()
    while _runs_on(pid, scratch) and time.monotonic() - started < 2 * STOP_SECONDS:
        late = time.monotonic() - started > STOP_SECONDS
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL if late else signal.SIGTERM)
        time.sleep(0.1)


def _collect(directory: Path, kept: KeptVm, secrets: list[str]) -> None:
    """The guest's journal of this boot and its failed units, into the build directory."""
    try:
        with sshchecks.session("127.0.0.1", kept.port, kept.user, Path(kept.key),
                               Path(kept.scratch)) as ssh:  # fmt: skip
            sshchecks.wait_for_login(ssh, attempts=5)
            journal = ssh.run("sudo journalctl -b --no-pager -o short-precise")
            failed = ssh.run("systemctl --failed --no-pager --plain")
    except Interrupted:
        raise
    except ImageforgeError as exc:
        log.warn(f"could not read the kept VM's journal: {exc}")
        return
    _write(directory / JOURNAL, journal.output + "\n", secrets)
    _write(directory / FAILED_UNITS, failed.output + "\n", secrets)


def _write(path: Path, text: str, secrets: list[str]) -> None:
    """A file of the build directory, for its owner only (a journal can say much), with the
    build's secrets (proxy passwords) redacted."""
    with os.fdopen(console.create_private(path), "w") as stream:  # 0600 before a byte, no link
        stream.write(runner.redact(text, secrets))


def kept(directory: Path) -> KeptVm | None:
    """The kept VM a build directory names, if any (None for an unreadable kept.json)."""
    try:
        vm = KeptVm(**json.loads((directory / KEPT).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    fields = (vm.build_id, vm.process, vm.scratch, vm.user, vm.key)
    if not all(isinstance(f, str) for f in fields) or type(vm.port) is not int:
        return None
    if not re.fullmatch(r"[0-9]+ [0-9]+", vm.process):
        return None
    return vm


def release(directory: Path) -> bool:
    """Stop a build's kept VM, remove its scratch, key and disk; False if none was kept."""
    vm = kept(directory)
    if vm is None:
        return False
    scratch = Path(vm.scratch)
    if vm.running():
        _stop(vm.pid, scratch)
    try:
        owner = (scratch / reap.OWNER_FILE).read_text()
    except OSError:
        owner = ""
    if scratch.name.startswith(f"{reap.PREFIX}{vm.build_id}-") and owner == vm.process:
        shutil.rmtree(scratch, ignore_errors=True)  # only the build's own, held by its VM
    shutil.rmtree(directory / "image", ignore_errors=True)  # the kept VM's disk
    (directory / KEPT).unlink()
    log.info(f"released the VM kept from build {vm.build_id}: stopped, key and scratch removed")
    return True


def release_cell(project_root: Path, flavor: str) -> list[str]:
    """Release every VM kept from a failed local build of the flavor (the next local build's
    first act, under the cell's lock)."""
    released = []
    for found in sorted((artifacts_root(project_root) / flavor).glob(f"*/{KEPT}")):
        if release(found.parent):
            released.append(found.parent.name)
        else:
            log.warn(f"{found} is unreadable: nothing released for it")
    return released


def release_build(project_root: Path, build_id: str) -> Path:
    """`invoke build --release BUILD`: the build's directory, after its VM is released."""
    root = artifacts_root(project_root)
    found = []
    if BUILD_ID.fullmatch(build_id):
        flavors = [d for d in root.iterdir() if d.is_dir()] if root.is_dir() else []
        found = [d / build_id for d in flavors if (d / build_id / KEPT).is_file()]
    if len(found) != 1:
        held = sorted(p.parent.name for p in root.glob(f"*/*/{KEPT}"))
        raise ConfigError(
            f"--release: build {build_id!r} has no kept VM (kept now: {', '.join(held) or 'none'})"
        )
    directory = found[0]
    with locks.cell(project_root, directory.parent.name, "local", f"release {build_id}"):
        if not release(directory):
            raise ConfigError(f"--release: {directory / KEPT} is unreadable; nothing released")
    return directory
