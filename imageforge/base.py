"""A bootable Debian 12 qcow2, built offline from Debian packages and cached by content.

No loop devices and no mounts: mmdebstrap builds the root filesystem in a directory, sfdisk
partitions a plain raw file and mke2fs -d writes the ext4 partition straight from the directory;
a first boot with the image's own kernel installs GRUB, and qemu-img compresses it to qcow2.
The image lives in <cache>/base/<recipe hash>/, so a recipe or tool change means a new build.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

from imageforge import log, qemu, runner
from imageforge.errors import ImageforgeError

# Bump when the build changes in a way the hashed recipe, guest files and options do not show.
BASE_FORMAT = 1
IMAGE_NAME = "debian-12.qcow2"
MIB = 1024 * 1024
PARTITION_START_MIB = 1
ROOT_LABEL = "rootfs"
FIRSTBOOT = "/imageforge-firstboot"
FIRSTBOOT_OK = "imageforge-firstboot: ok"
FIRSTBOOT_TIMEOUT = 900.0
REPO_ROOT = Path(__file__).resolve().parents[1]
MMDEBSTRAP_OPTIONS = ("--mode=root", "--variant=minbase", '--aptopt=Acquire::Languages "none"')
FIRSTBOOT_APPEND = f"root=/dev/vda1 rw console=ttyS0,115200 init={FIRSTBOOT} panic=-1"
DEFAULT_PACKAGES = (
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "systemd-sysv",
    "udev",
    "dbus",
    "grub-pc",
    "openssh-server",
    "cloud-init",
    "cloud-guest-utils",
    "fdisk",
    "e2fsprogs",
    "ifupdown",
    "isc-dhcp-client",
    "iproute2",
    "netbase",
    "ca-certificates",
    "sudo",
    "python3",
)


class SourceEntry(NamedTuple):
    """One apt 'deb' source: options such as signed-by, a URI, a suite and components."""

    options: tuple[str, ...]
    uri: str
    suite: str
    components: tuple[str, ...]

    def line(self) -> str:
        options = f"[{' '.join(self.options)}] " if self.options else ""
        return f"deb {options}{self.uri} {self.suite} {' '.join(self.components)}".strip()


@dataclass(frozen=True)
class BaseRecipe:
    """What goes into the base image; sources default to the host's apt sources for the suite."""

    suite: str = "bookworm"
    architecture: str = "amd64"
    packages: tuple[str, ...] = DEFAULT_PACKAGES
    disk_size_mib: int = 4096
    user: str = "debian"
    hostname: str = "debian"
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.architecture != "amd64":
            raise ImageforgeError(f"base images are amd64 only, not {self.architecture}")
        object.__setattr__(self, "packages", tuple(self.packages))
        object.__setattr__(self, "sources", tuple(self.sources) or host_sources(self.suite))


@dataclass(frozen=True)
class BaseImage:
    """A built (or reused) base image."""

    path: Path
    sha256: str
    recipe_hash: str
    built: bool


def host_sources(suite: str, apt_dir: Path = Path("/etc/apt")) -> tuple[str, ...]:
    """The host's apt 'deb' entries for suite and suite-updates/-security/..., one-line style."""
    parts = apt_dir / "sources.list.d"
    entries = [
        entry
        for path in [apt_dir / "sources.list", *sorted(parts.glob("*.list"))]
        if path.is_file()
        for entry in _one_line_entries(path.read_text())
    ]
    entries += [e for p in sorted(parts.glob("*.sources")) for e in _deb822_entries(p.read_text())]
    lines = [e.line() for e in entries if re.fullmatch(rf"{re.escape(suite)}([-/].*)?", e.suite)]
    if not lines:
        raise ImageforgeError(
            f"the host's apt sources ({apt_dir}) have no 'deb' entry for {suite}",
            hint=f'pass BaseRecipe(sources=("deb <mirror URI> {suite} main", ...))',
        )
    return tuple(dict.fromkeys(lines))


def _one_line_entries(text: str) -> Iterator[SourceEntry]:
    for raw in text.splitlines():
        match = re.fullmatch(r"\s*deb\s+(?:\[([^]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)", raw.split("#")[0])
        if match:
            options, uri, suite, components = match.groups()
            yield SourceEntry(tuple((options or "").split()), uri, suite, tuple(components.split()))


def _deb822_entries(text: str) -> Iterator[SourceEntry]:
    for paragraph in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in paragraph.splitlines():
            if line.startswith("#"):
                continue
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled") == "no":
            continue
        options = []
        if "\n" not in fields.get("signed-by", "\n"):  # a key file, not an inline key
            options.append(f"signed-by={fields['signed-by']}")
        if "architectures" in fields:
            options.append("arch=" + ",".join(fields["architectures"].split()))
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                components = tuple(fields.get("components", "").split())
                yield SourceEntry(tuple(options), uri, suite, components)


def cache_dir() -> Path:
    """$IMAGEFORGE_CACHE_DIR, else $XDG_CACHE_HOME/imageforge (~/.cache/imageforge)."""
    explicit = os.environ.get("IMAGEFORGE_CACHE_DIR")
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    path = Path(explicit or Path(xdg) / "imageforge").expanduser().absolute()
    inside_repo = (REPO_ROOT / "pyproject.toml").exists() and path.is_relative_to(REPO_ROOT)
    if inside_repo:
        raise ImageforgeError(
            f"the imageforge cache ({path}) must not be inside the repository",
            hint="set IMAGEFORGE_CACHE_DIR or XDG_CACHE_HOME to a directory outside it",
        )
    return path


@functools.cache
def tool_versions() -> dict[str, str]:
    """Versions of the tools whose output ends up in the image (part of the recipe hash)."""

    def first_line(argv: list[str]) -> str:
        return runner.output(argv).strip().splitlines()[0]

    return {
        "mmdebstrap": first_line(["mmdebstrap", "--version"]),
        "e2fsprogs": first_line(["mke2fs", "-V"]),
        "sfdisk": first_line(["sfdisk", "--version"]),
        "qemu": qemu.qemu_version(),
        "qemu-img": qemu.qemu_img_version(),
    }


FIRSTBOOT_SCRIPT = f"""#!/bin/sh
# imageforge: runs once as init= on the build's first boot: install GRUB, then power off.
# It re-runs itself from /run, so that / has no open file and can be made read-only (clean).
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
if [ "$0" != /run/firstboot ]; then
    mountpoint -q /run || mount -t tmpfs tmpfs /run
    cp "$0" /run/firstboot
    exec /bin/sh /run/firstboot
fi
for fs in proc:/proc sysfs:/sys devtmpfs:/dev; do
    mountpoint -q "${{fs#*:}}" || mount -t "${{fs%:*}}" "${{fs%:*}}" "${{fs#*:}}"
done
status=failed
if grub-install --target=i386-pc /dev/vda && update-grub &&
    echo "grub-pc grub-pc/install_devices multiselect /dev/vda" | debconf-set-selections; then
    status=ok
fi
rm -f {FIRSTBOOT}
sync
mount -o remount,ro / || status=failed
echo "imageforge-firstboot: $status"
poweroff --force --no-wtmp
echo o >/proc/sysrq-trigger
"""

GRUB_DEFAULTS = """\
# imageforge: a short menu and a serial console on ttyS0.
GRUB_TIMEOUT=1
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --speed=115200"
"""

SSHD_CONFIG = """\
# imageforge: keys only, no root logins.
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
"""


def guest_files(recipe: BaseRecipe) -> dict[str, str]:
    """The files the build writes into the root filesystem (relative path: content)."""
    return {
        "etc/hostname": f"{recipe.hostname}\n",
        "etc/hosts": f"127.0.0.1\tlocalhost\n127.0.1.1\t{recipe.hostname}\n"
        "::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\n"
        "ff02::2\t\tip6-allrouters\n",
        "etc/fstab": f"LABEL={ROOT_LABEL}\t/\text4\terrors=remount-ro\t0\t1\n",
        "etc/default/locale": "LANG=C.UTF-8\n",
        "etc/default/grub.d/50-imageforge.cfg": GRUB_DEFAULTS,
        "etc/ssh/sshd_config.d/50-imageforge.conf": SSHD_CONFIG,
        "etc/cloud/cloud.cfg.d/50-imageforge.cfg": "# imageforge base image\n"
        "datasource_list: [NoCloud, ConfigDrive, OpenStack, Ec2, GCE, None]\n"
        "manage_etc_hosts: true\n"
        f"system_info:\n  default_user:\n    name: {recipe.user}\n",
        FIRSTBOOT.lstrip("/"): FIRSTBOOT_SCRIPT,
    }


def recipe_hash(recipe: BaseRecipe) -> str:
    """sha256 over the recipe, the files and options the build uses, and the tool versions."""
    document = {
        "format": BASE_FORMAT,
        "recipe": {**asdict(recipe), "packages": sorted(set(recipe.packages))},
        "guest_files": guest_files(recipe),
        "mmdebstrap_options": MMDEBSTRAP_OPTIONS,
        "firstboot_append": FIRSTBOOT_APPEND,
        "tools": tool_versions(),
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def ensure_base(
    recipe: BaseRecipe | None = None, *, accelerator: str = "auto", force: bool = False
) -> BaseImage:
    """The cached base image for recipe, built first if it is missing (or if force)."""
    recipe = recipe or BaseRecipe()
    digest = recipe_hash(recipe)
    root = cache_dir() / "base"
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{digest}.lock"):
        cached = None if force else _cached(root / digest, digest)
        if cached is not None:
            log.info(f"base image {digest[:12]} is cached: {cached.path}")
            return cached
        for stale in root.glob(f".build-{digest[:12]}-*"):
            _remove_tree(stale)
        with log.step(f"Build the Debian {recipe.suite} base image {digest[:12]}"):
            info = _build(recipe, digest, root, accelerator)
    return BaseImage(root / digest / IMAGE_NAME, info["sha256"], digest, built=True)


def _cached(final: Path, digest: str) -> BaseImage | None:
    try:
        info = json.loads((final / "base.json").read_text())
    except (OSError, ValueError):
        return None
    image = final / IMAGE_NAME
    if info.get("recipe_hash") != digest or not image.is_file():
        return None
    return BaseImage(image, info["sha256"], digest, built=False)


def _build(recipe: BaseRecipe, digest: str, root: Path, accelerator: str) -> dict[str, object]:
    """Build in a temporary directory under root and rename it to root/digest at the end."""
    logs = cache_dir() / "logs" / f"base-{digest[:12]}"
    _remove_tree(logs)
    logs.mkdir(parents=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{digest[:12]}-", dir=root))
    steps: dict[str, float] = {}
    started = time.monotonic()
    try:
        rootfs, raw, out = work / "rootfs", work / "disk.raw", work / "out"
        with log.step("mmdebstrap: root filesystem") as timing:
            _bootstrap(recipe, rootfs, logs / "mmdebstrap.log")
            kernel, initrd = _configure(recipe, rootfs, work)
        steps["mmdebstrap"] = timing["seconds"]
        with log.step("Disk: sfdisk partition table, mke2fs -d ext4") as timing:
            _assemble(recipe, rootfs, raw, logs / "disk.log")
            _remove_tree(rootfs)
        steps["disk"] = timing["seconds"]
        with log.step("First boot: grub-install and update-grub") as timing:
            _first_boot(raw, kernel, initrd, logs / "firstboot-console.log", accelerator)
        steps["first_boot"] = timing["seconds"]
        out.mkdir()
        with log.step("Convert to compressed qcow2") as timing:
            runner.run(
                [
                    "qemu-img",
                    "convert",
                    "-c",
                    "-m",
                    "4",
                    "-W",
                    "-O",
                    "qcow2",
                    raw,
                    out / IMAGE_NAME,
                ],
                logfile=logs / "convert.log",
                what="qemu-img convert",
            )
        steps["convert"] = timing["seconds"]
        info = _describe(recipe, digest, out / IMAGE_NAME, accelerator, steps, started)
        (out / "base.json").write_text(json.dumps(info, indent=2) + "\n")
        _install(out, root / digest)
        return info
    finally:
        _remove_tree(work)


def _bootstrap(recipe: BaseRecipe, rootfs: Path, logfile: Path) -> None:
    if os.geteuid() != 0:
        raise ImageforgeError(
            "building the base image needs root (mmdebstrap --mode=root, mke2fs -d)",
            hint="run the build as root, e.g. in the CI container",
        )
    argv = [
        "mmdebstrap",
        *MMDEBSTRAP_OPTIONS,
        f"--architectures={recipe.architecture}",
        "--include=" + ",".join(recipe.packages),
        recipe.suite,
        rootfs,
        *recipe.sources,
    ]
    runner.run(argv, logfile=logfile, prefix="mmdebstrap", what="mmdebstrap")


def _configure(recipe: BaseRecipe, rootfs: Path, work: Path) -> tuple[Path, Path]:
    """Write the guest files and clean the tree for a first boot; return the kernel and initrd."""
    for relative, text in guest_files(recipe).items():
        target = rootfs / relative
        _delete(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(0o755 if relative == FIRSTBOOT.lstrip("/") else 0o644)
    (rootfs / "etc/machine-id").write_text("")  # empty: systemd makes one at the first boot
    for pattern in CLEAN_GLOBS:
        for path in rootfs.glob(pattern):
            _delete(path)
    for path in (rootfs / "etc/resolv.conf", rootfs / "var/lib/dbus/machine-id"):
        _delete(path)
    for path in (rootfs / "var/log").rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.write_bytes(b"")
    kernels = sorted(rootfs.glob("boot/vmlinuz-*"))
    initrds = sorted(rootfs.glob("boot/initrd.img-*"))
    if len(kernels) != 1 or len(initrds) != 1:
        raise ImageforgeError(f"expected one kernel and initrd in /boot, found {kernels} {initrds}")
    shutil.copyfile(kernels[0], work / "vmlinuz")
    shutil.copyfile(initrds[0], work / "initrd.img")
    return work / "vmlinuz", work / "initrd.img"


CLEAN_GLOBS = (
    "etc/ssh/ssh_host_*",  # cloud-init makes new host keys at the first boot
    "var/lib/apt/lists/*",
    "var/cache/apt/*.bin",
    "var/cache/apt/archives/*.deb",
    "var/cache/debconf/*-old",
    "tmp/*",
    "var/tmp/*",
)


def _assemble(recipe: BaseRecipe, rootfs: Path, raw: Path, logfile: Path) -> None:
    """A raw disk: an MBR with one bootable partition at 1 MiB, holding ext4 made from rootfs."""
    with raw.open("wb") as handle:
        handle.truncate(recipe.disk_size_mib * MIB)
    start = PARTITION_START_MIB * MIB
    table = f"label: dos\nstart={start // 512}, type=83, bootable\n"
    runner.run(
        ["sfdisk", "--no-reread", "--no-tell-kernel", raw],
        stdin=table,
        logfile=logfile,
        stream=False,
        what="sfdisk",
    )
    size_kib = (recipe.disk_size_mib - PARTITION_START_MIB) * 1024
    mke2fs = ["mke2fs", "-F", "-q", "-t", "ext4", "-L", ROOT_LABEL, "-d", rootfs]
    runner.run(
        [*mke2fs, "-E", f"offset={start}", raw, f"{size_kib}k"],
        logfile=logfile,
        stream=False,
        what="mke2fs -d",
    )


def _first_boot(raw: Path, kernel: Path, initrd: Path, console: Path, accelerator: str) -> None:
    """Boot the disk with its own kernel and FIRSTBOOT as init; it installs GRUB and powers off."""
    vm = qemu.VirtualMachine(
        disk=raw,
        disk_format="raw",
        serial_log=console,
        kernel=kernel,
        initrd=initrd,
        append=FIRSTBOOT_APPEND,
        network=False,
        reboot=False,
        accelerator=accelerator,
    )
    log.info(f"console: {console}")
    with vm:
        vm.wait_shutdown(FIRSTBOOT_TIMEOUT)
    if FIRSTBOOT_OK not in vm.console():
        raise ImageforgeError(
            f"installing GRUB at the first boot failed\n{vm.console_tail(40)}",
            hint=f"the whole console is in {console}",
        )


def _describe(
    recipe: BaseRecipe,
    digest: str,
    image: Path,
    accelerator: str,
    steps: dict[str, float],
    started: float,
) -> dict[str, object]:
    with image.open("rb") as handle:
        sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
    return {
        "recipe_hash": digest,
        "image": image.name,
        "sha256": sha256,
        "virtual_size_bytes": recipe.disk_size_mib * MIB,
        "file_size_bytes": image.stat().st_size,
        "tools": tool_versions(),
        "recipe": asdict(recipe),
        "accelerator": qemu.probe_accelerator(accelerator),
        "steps_seconds": steps,
        "build_seconds": round(time.monotonic() - started, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _install(out: Path, final: Path) -> None:
    """Move the finished directory into place, replacing an older build of the same hash."""
    old = final.with_name(f".old-{final.name[:12]}-{os.getpid()}")
    if final.exists():
        os.rename(final, old)
    os.rename(out, final)
    _remove_tree(old)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on path, so that two processes do not build the same image."""
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(f"waiting for another imageforge process building this base image ({path})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        _remove_tree(path)
    elif os.path.lexists(path):
        path.unlink()


def _remove_tree(path: Path) -> None:
    """rm -rf path, after unmounting whatever is left mounted below it; never delete through one."""
    if not os.path.lexists(path):
        return
    for mount in sorted(_mounts_under(path), reverse=True):
        runner.run(["umount", "--lazy", mount], check=False, stream=False)
    if still := _mounts_under(path):
        log.warn(f"not removing {path}: {still[0]} is still mounted")
        return
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        log.warn(f"could not remove all of {path}")


def _mounts_under(path: Path) -> list[str]:
    prefix = os.fspath(path.resolve())
    points = [
        re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[1])
        for line in Path("/proc/self/mounts").read_text().splitlines()
    ]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]
