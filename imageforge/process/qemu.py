"""QEMU helpers shared by the base image builder, local builds and verification.

Every VM gets QEMU user networking with SSH forwarded on 127.0.0.1 only, its serial console
in a log file, and is started through runner.spawn so its process group never outlives us.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from imageforge import log
from imageforge.errors import ImageforgeError
from imageforge.process import console, reap, runner

QEMU = "qemu-system-x86_64"
QEMU_IMG = "qemu-img"
ACCELERATORS = ("auto", "kvm", "tcg")
LOCALHOST = "127.0.0.1"
# SeaBIOS gets to "No bootable device" in about 0.2 s under TCG and faster under a working
# KVM; a nested or emulated KVM that runs guests far slower than TCG takes 3-6 s here, and was
# once seen under 3 s, so the bar is well below that.
KVM_PROBE_SECONDS = 1.0
# The CPU a TCG guest gets: the x86-64-v2 baseline (qemu64 plus SSSE3, SSE4.1/4.2, POPCNT and
# CMPXCHG16B), the least any image here supports (numpy's wheels need v2). Not "max": under TCG
# every boot is slower with it (bench/tcg_cpu.py, slurm-node booted alternately, medians: login
# 64.6 s with "max", 58.5 s with this; a running system 73.7 s and 66.5 s), and proving an image
# on the baseline it claims shows that it runs on any cloud CPU above it.
TCG_CPU = "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16"
FIRMWARE_DONE = "No bootable device"
# Lines QEMU prints when KVM exists but cannot run a guest.
KVM_FAILURES = (
    "failed to initialize kvm",
    "could not access kvm",
    "kvm internal error",
    "kvm: entry failed",
    "kvm_init_vcpu",
    "error: kvm",
)


def qemu_version() -> str:
    """The qemu-system-x86_64 version, e.g. '7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)'."""
    return _first_line([QEMU, "--version"]).removeprefix("QEMU emulator version ").strip()


def qemu_img_version() -> str:
    """The qemu-img version, e.g. '7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)'."""
    return _first_line([QEMU_IMG, "--version"]).removeprefix("qemu-img version ").strip()


def _first_line(argv: list[str]) -> str:
    return runner.output(argv).strip().splitlines()[0]


@functools.cache
def probe_accelerator(requested: str = "auto") -> str:
    """The accelerator to use: 'kvm' if it really runs a guest (for 'auto'), else 'tcg'."""
    if requested not in ACCELERATORS:
        raise ImageforgeError(f"unknown accelerator {requested!r}", hint="use auto, kvm or tcg")
    if requested == "tcg":
        chosen = "tcg"
    else:
        works, reason = _kvm_works()
        if requested == "kvm" and not works:
            raise ImageforgeError(
                f"KVM was requested but does not work here: {reason}",
                hint="use accelerator 'auto' or 'tcg' (slower, but works everywhere)",
            )
        chosen = "kvm" if works else "tcg"
        log.info(f"KVM probe: {reason}")
    log.info(f"QEMU accelerator: {chosen}")
    return chosen


@functools.cache
def _kvm_works() -> tuple[bool, str]:
    """Whether KVM really runs guests at speed: a diskless KVM VM must get through its firmware.

    /dev/kvm can exist and a KVM guest can stay alive while it runs far slower than TCG (nested
    or emulated KVM); so SeaBIOS (which logs to port 0x402) must reach 'No bootable device' in
    KVM_PROBE_SECONDS (see there).
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    with reap.scratch("imageforge-kvm-") as tmp:
        firmware_log, qemu_log = tmp / "firmware.log", tmp / "qemu.log"
        argv = [QEMU, "-accel", "kvm", "-cpu", "host", "-nodefaults", "-display", "none"]
        argv += ["-m", "32", "-chardev", f"file,id=fw,path={_escape(firmware_log)}"]
        argv += ["-device", "isa-debugcon,iobase=0x402,chardev=fw"]
        with runner.spawn(argv, logfile=qemu_log) as proc:
            start = time.monotonic()
            # Until the firmware is done or QEMU exits; the verdict comes from the logs below.
            with contextlib.suppress(RetryError):
                Retrying(
                    stop=stop_after_delay(KVM_PROBE_SECONDS),
                    wait=wait_fixed(0.05),
                    retry=retry_if_result(lambda done: not done),
                )(lambda: proc.poll() is not None or FIRMWARE_DONE in _read(firmware_log))
            seconds = time.monotonic() - start
            time.sleep(0.5)  # and it must stay alive a moment longer
            alive = proc.poll() is None
        output, firmware = _read(qemu_log), _read(firmware_log)
    lines = output.splitlines()
    failure = next((ln for ln in lines if any(f in ln.lower() for f in KVM_FAILURES)), None)
    if failure:
        return False, failure.strip()
    if not alive:
        first = output.strip().splitlines()[0][:200] if output.strip() else "no output"
        return False, f"a KVM test VM exited early: {first}"
    if FIRMWARE_DONE not in firmware:
        return False, f"a KVM test VM did not get through its firmware in {seconds:.1f}s (too slow)"
    return True, f"firmware ran in {seconds:.2f}s"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _escape(value: Path | str) -> str:
    """Escape a value for a QEMU -option key=value list (commas are doubled)."""
    return os.fspath(value).replace(",", ",,")


def make_seed(
    path: Path, *, user_data: str | bytes, meta_data: str, network_config: str | None = None
) -> Path:
    """Write a cloud-init NoCloud seed ISO (volume label 'cidata') to path, mode 0600.

    The ISO is written in-process with pycdlib (Joliet and Rock Ridge names), so no
    external ISO tool is needed and none can fail or crash half-way.
    """
    import io

    import pycdlib

    files: dict[str, str | bytes] = {"user-data": user_data, "meta-data": meta_data}
    if network_config is not None:
        files["network-config"] = network_config
    path.parent.mkdir(parents=True, exist_ok=True)
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for number, (name, text) in enumerate(files.items()):
        data = text if isinstance(text, bytes) else text.encode()  # user-data may be gzip
        iso.add_fp(
            io.BytesIO(data),
            len(data),
            f"/SEED{number}.;1",
            rr_name=name,
            joliet_path=f"/{name}",
        )
    partial = path.with_name(path.name + ".partial")
    try:
        # user-data can hold secrets (a MUNGE key): the owner's alone from the first byte
        with os.fdopen(console.create_private(partial), "wb") as out:
            iso.write_fp(out)
        partial.replace(path)
    finally:
        iso.close()
        partial.unlink(missing_ok=True)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def ssh_banner(port: int, *, timeout: float = 3.0, host: str = LOCALHOST) -> str | None:
    """The SSH banner on host:port (127.0.0.1 by default), or None while nothing answers."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            data = sock.recv(256)
    except OSError:
        return None
    text = data.decode(errors="replace")
    return text.strip() if text.startswith("SSH-") else None


def wait_for_ssh(
    port: int,
    timeout: float,
    *,
    proc: subprocess.Popen[bytes] | None = None,
    host: str = LOCALHOST,
) -> str:
    """Wait until host:port sends an SSH banner and return it; proc, if given, must live."""

    def banner() -> str | None:
        if proc is not None and proc.poll() is not None:
            raise ImageforgeError(f"the VM exited (code {proc.returncode}) before SSH came up")
        return ssh_banner(port, host=host)

    retrying = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(1.0),
        retry=retry_if_result(lambda found: found is None),
    )
    try:
        return str(retrying(banner))
    except RetryError:
        raise ImageforgeError(f"no SSH on {host}:{port} after {timeout:.0f}s") from None


@dataclass
class VirtualMachine:
    """A QEMU VM; use as a context manager: the VM is killed on the way out, whatever happens."""

    disk: Path
    serial_log: Path
    disk_format: str = "qcow2"
    seed: Path | None = None
    cpus: int = 2
    memory_mb: int = 1024
    accelerator: str = "auto"
    kernel: Path | None = None
    initrd: Path | None = None
    append: str | None = None
    network: bool = True
    restrict_network: bool = False  # no traffic leaves the VM; the SSH forward still works
    reboot: bool = True
    mac: str | None = None  # of the user-networking NIC
    extra_args: tuple[str, ...] = ()  # more devices, e.g. a NIC on a cluster's own network
    # More guest ports on 127.0.0.1: {guest port: host port}.
    forwards: dict[int, int] = field(default_factory=dict)
    # Guest-initiated connections to one address that QEMU hands to a host command, e.g.
    # ("10.0.2.100:80", "socat - TCP:127.0.0.1:9000"): one command per connection.
    guest_commands: tuple[tuple[str, str], ...] = ()
    ssh_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _console: console.ConsoleCopier | None = field(default=None, init=False, repr=False)
    _stack: ExitStack = field(default_factory=ExitStack, init=False, repr=False)

    @property
    def qemu_log(self) -> Path:
        return self.serial_log.with_name(self.serial_log.stem + ".qemu.log")

    def argv(self) -> list[str]:
        """The qemu-system-x86_64 command line for this VM."""
        accel = probe_accelerator(self.accelerator)
        argv = [QEMU, "-name", self.disk.stem, "-nodefaults", "-display", "none"]
        argv += ["-accel", accel, "-cpu", "host" if accel == "kvm" else TCG_CPU]
        argv += ["-smp", str(self.cpus), "-m", str(self.memory_mb)]
        argv += ["-drive", f"file={_escape(self.disk)},format={self.disk_format},if=virtio"]
        argv += ["-device", "virtio-rng-pci"]
        if self._console is not None:
            argv += ["-chardev", f"pipe,id=serial0,path={_escape(self._console.pipe)}"]
        else:  # a daemonized VM (a cluster's) outlives us: a file, made private by its owner
            argv += ["-chardev", f"file,id=serial0,path={_escape(self.serial_log)}"]
        argv += ["-serial", "chardev:serial0"]
        if self.seed is not None:
            argv += ["-drive", f"file={_escape(self.seed)},format=raw,media=cdrom,readonly=on"]
        if self.network:
            ports = {22: self.ssh_port, **self.forwards}
            forward = ",".join(
                f"hostfwd=tcp:{LOCALHOST}:{host}-:{guest}" for guest, host in ports.items()
            )
            for address, command in self.guest_commands:
                forward += f",guestfwd=tcp:{address}-cmd:{_escape(command)}"
            restrict = ",restrict=on" if self.restrict_network else ""
            argv += ["-netdev", f"user,id=net0{restrict},{forward}"]
            mac = f",mac={self.mac}" if self.mac else ""
            argv += ["-device", f"virtio-net-pci,netdev=net0{mac}"]
        if self.kernel is not None:
            argv += ["-kernel", os.fspath(self.kernel)]
        if self.initrd is not None:
            argv += ["-initrd", os.fspath(self.initrd)]
        if self.append is not None:
            argv += ["-append", self.append]
        if not self.reboot:
            argv += ["-no-reboot"]
        return [*argv, *self.extra_args]

    def __enter__(self) -> VirtualMachine:
        try:
            scratch = self._stack.enter_context(reap.scratch("imageforge-console-"))
            self._console = console.ConsoleCopier(scratch / "serial", self.serial_log)
            self._stack.callback(self._console.close)
            argv = self.argv()
            self.proc = self._stack.enter_context(runner.spawn(argv, logfile=self.qemu_log))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()

    @property
    def secrets(self) -> dict[str, str]:
        """The secrets the guest showed on its console (imageforge-secret lines), by name;
        never written anywhere."""
        return dict(self._console.secrets) if self._console is not None else {}

    def _running(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise ImageforgeError("the VM is not started; use it as a context manager")
        return self.proc

    def wait_for_ssh(self, timeout: float) -> str:
        """Wait for the guest's SSH banner on the forwarded port; fail early if QEMU exits."""
        try:
            return wait_for_ssh(self.ssh_port, timeout, proc=self._running())
        except ImageforgeError as exc:
            raise ImageforgeError(f"{exc.message}\n{self.console_tail()}") from None

    def console(self) -> str:
        """Everything the guest wrote to its serial console so far."""
        return _read(self.serial_log)

    def console_tail(self, lines: int = 20) -> str:
        """The last lines of the serial console and of QEMU's own output, for error messages."""
        own = "\n".join(f"    {t}" for t in _read(self.qemu_log).splitlines()[-5:])
        return console.tail(self.serial_log, lines) + (f"\nQEMU:\n{own}" if own else "")
