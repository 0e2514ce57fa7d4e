"""The Vagrant box: a derived artifact of a verified local build, never the qcow2 itself.

The box is the verified image plus what Vagrant needs to log in the standard way: a `vagrant`
user with passwordless sudo whose authorized key is Vagrant's well-known insecure key, which
`vagrant up` replaces with a key of its own on first boot. That user is added to a copy of the
image offline (debugfs on the root filesystem: no boot, so no first-boot unit runs and no
per-instance secret is made), so the cloud qcow2 never holds it. The box follows Vagrant's
format for the libvirt provider: `metadata.json`, an embedded `Vagrantfile` and `box.img`, a
standalone qcow2 written by `qemu-img convert` (never one with a backing file).
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from imageforge import log
from imageforge.clouds.local import disk
from imageforge.errors import ImageforgeError
from imageforge.process import reap, runner

USER = "vagrant"
INSECURE_KEY = Path("vagrant/keys/vagrant.pub")  # Vagrant's well-known insecure public key
BOX_VAGRANTFILE = Path("vagrant/Vagrantfile.box")
SUDOERS = f"{USER} ALL=(ALL) NOPASSWD:ALL\n"
FIRST_ID = 1000
LAST_ID = 59999


@dataclass(frozen=True)
class Account:
    """The vagrant user's ids, chosen free in the image's own passwd and group files."""

    uid: int
    gid: int


def free_id(lines: list[str]) -> int:
    """The lowest regular id (1000…59999) not used in a passwd or group file's lines."""
    used = set()
    for line in lines:
        fields = line.split(":")
        if len(fields) > 2 and fields[2].isdigit():
            used.add(int(fields[2]))
    for candidate in range(FIRST_ID, LAST_ID + 1):
        if candidate not in used:
            return candidate
    raise ImageforgeError("the image has no free user id for the vagrant user")


def add_account(etc: dict[str, str]) -> tuple[dict[str, str], Account]:
    """passwd, shadow, group and gshadow with the vagrant user and group added."""
    for name in ("passwd", "group"):
        if any(line.split(":")[0] == USER for line in etc[name].splitlines()):
            raise ImageforgeError(f"the image already has a {USER!r} entry in /etc/{name}")
    uid = free_id(etc["passwd"].splitlines())
    gid = uid if uid not in _ids(etc["group"]) else free_id(etc["group"].splitlines())
    sudo_gid = next((line for line in etc["group"].splitlines() if line.startswith("sudo:")), None)
    group = etc["group"]
    if sudo_gid is not None:  # also in Debian's sudo group, as Vagrant boxes are
        members = sudo_gid.split(":")[3]
        joined = f"{members},{USER}" if members else USER
        group = group.replace(sudo_gid, ":".join([*sudo_gid.split(":")[:3], joined]), 1)
    added = {
        "passwd": _append(etc["passwd"], f"{USER}:x:{uid}:{gid}:Vagrant:/home/{USER}:/bin/bash"),
        # '*': no password can ever match, and the account is not locked for key logins.
        "shadow": _append(etc["shadow"], f"{USER}:*:19000:0:99999:7:::"),
        "group": _append(group, f"{USER}:x:{gid}:"),
        "gshadow": _append(etc["gshadow"], f"{USER}:!::"),
    }
    return added, Account(uid, gid)


def _ids(text: str) -> set[int]:
    return {
        int(f[2])
        for f in (line.split(":") for line in text.splitlines())
        if f[2:3] and f[2].isdigit()
    }


def _append(text: str, line: str) -> str:
    return (text if text.endswith("\n") or not text else text + "\n") + line + "\n"


def debugfs_requests(files: Path, account: Account, key_file: Path) -> list[str]:
    """The debugfs requests that write the account files, sudoers and the vagrant home."""
    home = f"/home/{USER}"
    requests = []
    for name, mode in (
        ("passwd", "0100644"),
        ("shadow", "0100640"),
        ("group", "0100644"),
        ("gshadow", "0100640"),
    ):
        requests += [
            f"rm /etc/{name}",
            f"write {files / name} /etc/{name}",
            f"sif /etc/{name} mode {mode}",
            f"sif /etc/{name} uid 0",
        ]
    shadow_gid = _group_id(files / "group", "shadow")
    if shadow_gid is not None:
        requests += [f"sif /etc/shadow gid {shadow_gid}", f"sif /etc/gshadow gid {shadow_gid}"]
    requests += [
        f"write {files / 'sudoers'} /etc/sudoers.d/{USER}",
        f"sif /etc/sudoers.d/{USER} mode 0100440",
        f"mkdir {home}",
        f"sif {home} mode 040750",
        f"mkdir {home}/.ssh",
        f"sif {home}/.ssh mode 040700",
        f"write {key_file} {home}/.ssh/authorized_keys",
        f"sif {home}/.ssh/authorized_keys mode 0100600",
    ]
    for path in (home, f"{home}/.ssh", f"{home}/.ssh/authorized_keys"):
        requests += [f"sif {path} uid {account.uid}", f"sif {path} gid {account.gid}"]
    return requests


def _group_id(group_file: Path, name: str) -> int | None:
    for line in group_file.read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name and len(fields) > 2 and fields[2].isdigit():
            return int(fields[2])
    return None


def metadata(virtual_size_bytes: int) -> dict[str, object]:
    """The box's metadata.json for the libvirt provider (virtual size in whole GiB)."""
    return {
        "provider": "libvirt",
        "format": "qcow2",
        "virtual_size": max(1, -(-virtual_size_bytes // 2**30)),
    }


def derive(project_root: Path, image: Path, box: Path, logfile: Path) -> Path:
    """Write box (a .box file) from the verified qcow2 image, which is left as it was."""
    key = project_root / INSECURE_KEY
    if not key.is_file():
        raise ImageforgeError(f"{INSECURE_KEY}: Vagrant's insecure public key is missing")
    scratch = reap.claim(Path(tempfile.mkdtemp(prefix="imageforge-box-")))
    try:
        raw = scratch / "disk.raw"
        runner.run(
            ["qemu-img", "convert", "-O", "raw", image, raw],
            logfile=logfile,
            stream=False,
            what="qemu-img convert (box)",
        )
        device = f"{raw}?offset={disk.PARTITION_START_MIB * disk.MIB}"
        files = scratch / "etc"
        files.mkdir()
        etc = {}
        for name in ("passwd", "shadow", "group", "gshadow"):
            runner.run(
                ["debugfs", "-R", f"dump /etc/{name} {files / name}", device],
                logfile=logfile,
                stream=False,
                what=f"debugfs dump /etc/{name}",
            )
            if not (files / name).is_file():
                raise ImageforgeError(f"{image}: /etc/{name} is missing from the image")
            etc[name] = (files / name).read_text()
        changed, account = add_account(etc)
        for name, text in changed.items():
            (files / name).write_text(text)
        (files / "sudoers").write_text(SUDOERS)
        requests = scratch / "requests"
        requests.write_text("\n".join(debugfs_requests(files, account, key)) + "\n")
        runner.run(
            ["debugfs", "-w", "-f", requests, device],
            logfile=logfile,
            stream=False,
            what="debugfs (add the vagrant user)",
        )
        _check_written(device, scratch / "check", changed["passwd"], key.read_text(), logfile)
        pack = scratch / "box"
        pack.mkdir()
        disk.to_qcow2(raw, pack / "box.img", logfile, compress=True)
        raw.unlink()
        info = json.loads(runner.output(["qemu-img", "info", "--output=json", pack / "box.img"]))
        if info.get("backing-filename") or info.get("format") != "qcow2":
            raise ImageforgeError("box.img must be a standalone qcow2")
        (pack / "metadata.json").write_text(json.dumps(metadata(info["virtual-size"])) + "\n")
        shutil.copy(project_root / BOX_VAGRANTFILE, pack / "Vagrantfile")
        partial = box.with_name(box.name + ".partial")
        with tarfile.open(partial, "w") as tar:  # box.img is compressed already
            for name in ("metadata.json", "Vagrantfile", "box.img"):
                tar.add(pack / name, arcname=name)
        partial.replace(box)
        log.info(f"Vagrant box: {box} (user {USER}, Vagrant's insecure key, replaced on first up)")
        return box
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _check_written(device: str, check: Path, passwd: str, key: str, logfile: Path) -> None:
    """Read back what debugfs wrote: it reports some failures only in its output."""
    check.mkdir()
    for inside, name in (
        ("/etc/passwd", "passwd"),
        (f"/home/{USER}/.ssh/authorized_keys", "authorized_keys"),
        (f"/etc/sudoers.d/{USER}", "sudoers"),
    ):
        runner.run(
            ["debugfs", "-R", f"dump {inside} {check / name}", device],
            logfile=logfile,
            stream=False,
            what=f"debugfs dump {inside}",
        )
    wanted = {"passwd": passwd, "authorized_keys": key, "sudoers": SUDOERS}
    for name, text in wanted.items():
        path = check / name
        if not path.is_file() or path.read_text() != text:
            raise ImageforgeError(f"debugfs did not write {name} into the box's image")
