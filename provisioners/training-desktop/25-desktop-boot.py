#!/usr/bin/python3
"""Training desktop: set the desktop up for its attendee, at every boot.

One program in two roles:

- run by Packer as a provisioner (no argument, as root): installs itself as
  /usr/local/sbin/imageforge-desktop-setup and writes imageforge-desktop.service, which runs it
  after cloud-init and before the VNC server (20-desktop.sh wires up XFCE and TigerVNC);
- `imageforge-desktop-setup boot` (as root, every boot): the image's defaults (images.yml
  `desktop:`, in /etc/imageforge/desktop.json) overridden by the user-data's block, every key
  optional and checked against the schema images.yml's models make:

      imageforge_desktop:
        attendee: 7                      # in the prompt and on the desktop
        vnc_password: "s3cret12"         # 6 to 8 characters; else one is generated, once
        shutdown: {time: "17:30", timezone: Europe/Berlin}   # or null: never
        autosquash: /mnt/s3fs/autosquash
        s3fs: {bucket: course-data, url: "https://s3.example.org", path_style: true,
               access_key: "...", secret_key: "..."}   # no keys: the instance's own role

  A wrong value fails the unit (and so the VNC server) with one line on the console and in
  motd, having changed nothing. The attendee number may also come from instance metadata: an
  `attendee` key (NoCloud meta-data, OpenStack `meta`), a GCE attribute `attendee`, or an EC2
  tag `Attendee`.

A generated VNC password is shown on the console once and kept root-only; a relaunched copy of
the instance (a snapshot, a clone) keeps it, as it keeps the home directory: only a password in
the user-data replaces it. The VNC server reads it from the user's ~/.config/tigervnc/passwd
(TigerVNC 1.14+), which the mandatory server configuration names for TigerVNC 1.12 too.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import secrets
import shutil
import string
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The library every first-boot program shares (installed by provisioners/common/06-firstboot.py).
sys.path.insert(0, "/usr/local/lib/imageforge")
import imageforge_firstboot as firstboot

PROGRAM = "imageforge-desktop"
SETUP = Path("/usr/local/sbin/imageforge-desktop-setup")
DESCRIPTION = "imageforge: set up this training desktop (attendee, VNC password, shared data)"
UNIT = Path("/etc/systemd/system/imageforge-desktop.service")
INSTANCE_DATA = Path("/run/cloud-init/instance-data.json")
DEFAULTS = Path("/etc/imageforge/desktop.json")
PASSWORD = Path("/var/lib/imageforge/private/vnc-password")
ATTENDEE = Path("/etc/imageforge/attendee")
BACKGROUND = Path("/var/lib/imageforge/desktop/background.png")
VNC_USERS = Path("/etc/tigervnc/vncserver.users")
VNC_CONFIG = Path("/etc/tigervnc/vncserver-config-mandatory")
VNC_PASSWD = (".config", "tigervnc", "passwd")  # under the user's home, as TigerVNC 1.14+ has it
VNCPASSWD = "tigervncpasswd"  # tigervnc-tools (vncpasswd is only its alternatives link)
S3FS_MOUNT = Path("/mnt/s3fs")
S3FS_TMPDIR = "/var/tmp"  # s3fs stages what it reads in temporary files: /tmp is a tmpfs now
S3FS_PASSWD = Path("/etc/passwd-s3fs")
AUTOSQUASH_MOUNTS = Path("/mnt/autosquash")
TIMER = Path("/etc/systemd/system/imageforge-autoshutdown.timer")
ZONEINFO = Path("/usr/share/zoneinfo")
# Files in zoneinfo that are not zones a clock may be set to (Python's zoneinfo leaves them out).
NOT_ZONES = ("localtime", "posixrules", "Factory")
LOCALTIME = Path("/etc/localtime")
ATTENDEE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,15}$")
PLAIN_PATH = re.compile(r"^/[A-Za-z0-9._/-]+$")  # quoted into the Perl of the VNC configuration
ALPHABET = string.ascii_letters + string.digits
METADATA_PATHS = (
    ("attendee",),
    ("meta", "attendee"),
    ("instance", "attributes", "attendee"),
    ("tags", "instance", "Attendee"),
)


class Refused(Exception):
    """A setting this desktop cannot apply; one line, nothing changed."""


# ---------------------------------------------------------------------------------------------
# At build time, as a provisioner.


def build() -> int:
    shutil.copyfile(__file__, SETUP)
    SETUP.chmod(0o755)
    UNIT.write_text(firstboot.unit(DESCRIPTION, SETUP))
    # --no-reload: enabled for the next boot; a daemon-reload here costs seconds, changes nothing.
    units = (UNIT.name, "tigervncserver@:1.service")
    subprocess.run(["systemctl", "enable", "--no-reload", "--quiet", *units], check=True)
    print(f"{SETUP} installed: attendee, VNC password and shared data are set at boot")
    return 0


# ---------------------------------------------------------------------------------------------
# At boot, as root: everything is checked before anything changes.


def settings(data: bytes | None = None) -> dict[str, Any]:
    """The image's defaults, with what the user-data's block gives: a mapping (shutdown, s3fs)
    key by key, anything else (null included) replaced."""
    merged = json.loads(DEFAULTS.read_text()) if DEFAULTS.is_file() else {}
    for key, value in firstboot.settings("desktop", data).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}  # `shutdown: {time: ...}` keeps the zone
        else:
            merged[key] = value
    return merged


def attendee(config: dict[str, Any]) -> str | None:
    """The attendee number: the user-data's (checked), else the instance metadata's if it is
    one (a wrong one there is ignored and said: metadata is not ours to refuse)."""
    if config.get("attendee") is not None:
        return str(config["attendee"])
    meta = {}
    if INSTANCE_DATA.is_file():
        meta = json.loads(INSTANCE_DATA.read_text()).get("ds", {}).get("meta_data") or {}
    for path in METADATA_PATHS:
        node: Any = meta
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            continue
        if ATTENDEE_NAME.match(str(node)):
            return str(node)
        firstboot.say(PROGRAM, "ignoring the metadata's attendee: use up to 16 letters, digits, -")
        return None
    return None


def timezone_file(config: dict[str, Any]) -> Path | None:
    """The zoneinfo file of the shutdown's timezone (None: no shutdown)."""
    shutdown = config.get("shutdown")
    if not isinstance(shutdown, dict):
        return None
    zone = str(shutdown.get("timezone", "Europe/London"))
    refused = Refused(f"imageforge_desktop.shutdown.timezone: {zone!r} is not a zone of {ZONEINFO}")
    if zone in NOT_ZONES:
        raise refused
    try:
        found = (ZONEINFO / zone).resolve(strict=True)
        with found.open("rb") as tzif:
            magic = tzif.read(4)
    except (OSError, RuntimeError):  # absent, a directory, a loop
        raise refused from None
    if not found.is_relative_to(ZONEINFO.resolve()) or magic != b"TZif":
        raise refused
    return ZONEINFO / zone


def display_user() -> pwd.struct_passwd:
    """The user of display :1 (vncserver.users, written when the image was built)."""
    for line in VNC_USERS.read_text().splitlines():
        if line.startswith(":1="):
            return pwd.getpwnam(line.split("=", 1)[1].strip())
    raise Refused(f"{VNC_USERS} names no user for display :1")


def vnc_password(config: dict[str, Any]) -> tuple[str, bool]:
    """The password and whether it was generated now (only then is it shown on the console):
    the user-data's, else the one this instance (or the one it was copied from) already has."""
    if config.get("vnc_password") is not None:
        return str(config["vnc_password"]), False
    try:
        kept = PASSWORD.read_text().strip()
    except OSError:
        kept = ""
    if kept:
        return kept, False
    return "".join(secrets.choice(ALPHABET) for _ in range(8)), True


def install_password(password: str, user: pwd.struct_passwd) -> None:
    obfuscated = subprocess.run(
        [VNCPASSWD, "-f"], input=password.encode(), capture_output=True, check=True
    ).stdout
    if len(obfuscated) != 8:
        raise RuntimeError(f"{VNCPASSWD} -f gave {len(obfuscated)} bytes, not 8")
    write_user_file(user, VNC_PASSWD, obfuscated)  # first: it may meet a link and stop
    PASSWORD.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    firstboot.write_private(PASSWORD, password.encode() + b"\n")


def write_user_file(user: pwd.struct_passwd, parts: tuple[str, ...], data: bytes) -> None:
    """Write data to the user's file home/parts (mode 600, the user's), making the directories
    (700) it needs. Root writes in a directory the user owns: no symbolic link on the way is
    followed, and the file is replaced, never written through a link the user made."""
    fd = os.open(user.pw_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in parts[:-1]:
            try:
                os.mkdir(name, 0o700, dir_fd=fd)
            except FileExistsError:
                pass
            else:
                os.chown(name, user.pw_uid, user.pw_gid, dir_fd=fd, follow_symlinks=False)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
        name, temporary = parts[-1], f".{parts[-1]}.imageforge"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=fd)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        with os.fdopen(os.open(temporary, flags, 0o600, dir_fd=fd), "wb") as out:
            out.write(data)
            os.fchown(out.fileno(), user.pw_uid, user.pw_gid)
        os.replace(temporary, name, src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)


def vnc_config(config: dict[str, Any], passwd_file: Path) -> str:
    """TigerVNC's mandatory server configuration (Perl): VNC authentication only."""
    if not PLAIN_PATH.match(str(passwd_file)):
        raise Refused(f"not a plain path for the VNC password file: {str(passwd_file)!r}")
    localhost = "yes" if config.get("vnc_localhost_only") else "no"
    return (
        "# imageforge: written at boot. VNC authentication only: security type None is never\n"
        "# offered. The password is per instance, in the file named here (TigerVNC 1.14+ looks\n"
        "# in ~/.config/tigervnc, 1.12 in ~/.vnc: named, both read the same file).\n"
        '$SecurityTypes = "VncAuth";\n'
        f"$vncPasswdFile = '{passwd_file}';\n"
        f'$localhost = "{localhost}";\n'
        '$session = "xfce";\n'
        f'$geometry = "{config.get("geometry") or "1280x800"}";\n'
    )


def write_attendee(number: str | None) -> None:
    if number is None:
        ATTENDEE.unlink(missing_ok=True)
    else:
        ATTENDEE.write_text(number + "\n")
    draw_background(f"ATTENDEE {number}" if number else "TRAINING DESKTOP", os.uname().nodename)


def draw_background(title: str, subtitle: str) -> None:
    from PIL import Image, ImageDraw, ImageFont

    width, height = 1280, 800
    image = Image.new("RGB", (width, height), (22, 52, 88))
    draw = ImageDraw.Draw(image)
    fonts = Path("/usr/share/fonts/truetype/dejavu")
    big = ImageFont.truetype(str(fonts / "DejaVuSans-Bold.ttf"), 110)
    small = ImageFont.truetype(str(fonts / "DejaVuSans.ttf"), 36)
    for text, font, y in ((title, big, height // 2 - 90), (subtitle, small, height // 2 + 70)):
        left, _, right, _ = draw.textbbox((0, 0), text, font=font)
        draw.text(((width - (right - left)) // 2, y), text, font=font, fill=(255, 255, 255))
    BACKGROUND.parent.mkdir(parents=True, exist_ok=True)
    image.save(BACKGROUND)


def timer_text(config: dict[str, Any]) -> str:
    """The auto-shutdown timer unit ("" for none); values checked by the schema."""
    shutdown = config.get("shutdown")
    if not isinstance(shutdown, dict):
        return ""
    when, zone = shutdown.get("time", "18:00"), shutdown.get("timezone", "Europe/London")
    return (
        f"[Unit]\nDescription=imageforge: power off every day at {when} {zone}\n\n"
        f"[Timer]\nOnCalendar=*-*-* {when}:00 {zone}\n\n[Install]\nWantedBy=timers.target\n"
    )


def write_timer(config: dict[str, Any], zone_file: Path | None) -> str:
    text = timer_text(config)
    try:
        current = TIMER.read_text()
    except OSError:
        current = ""
    if text != current:
        if text:
            TIMER.write_text(text)
        else:
            TIMER.unlink(missing_ok=True)
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    if not text or zone_file is None:
        subprocess.run(["systemctl", "stop", TIMER.name], check=False, capture_output=True)
        return "no auto-shutdown"
    set_timezone(zone_file)
    subprocess.run(["systemctl", "start", "--no-block", TIMER.name], check=False)
    shutdown = config["shutdown"]
    return f"auto-shutdown every day at {shutdown.get('time', '18:00')} {zone_file.name}"


def set_timezone(zone_file: Path) -> None:
    if LOCALTIME.is_symlink() and Path(os.readlink(LOCALTIME)) == zone_file:
        return
    LOCALTIME.unlink(missing_ok=True)
    LOCALTIME.symlink_to(zone_file)
    Path("/etc/timezone").write_text(str(zone_file.relative_to(ZONEINFO)) + "\n")


def s3fs_options(s3fs: dict[str, Any]) -> list[str]:
    """s3fs's mount options: no set-user-id programs or devices from the bucket, and nothing the
    user-data could add (the schema refuses commas and the like in every value)."""
    options = ["allow_other", "umask=0022", "nosuid", "nodev", f"tmpdir={S3FS_TMPDIR}"]
    if s3fs.get("read_only", True):
        options.append("ro")
    if s3fs.get("url"):
        options.append(f"url={s3fs['url']}")
    if s3fs.get("path_style"):
        options.append("use_path_request_style")
    if s3fs.get("access_key"):
        options.append(f"passwd_file={S3FS_PASSWD}")
    else:
        options.append("iam_role=auto")
    return options


def mount_s3fs(config: dict[str, Any]) -> str:
    s3fs = config.get("s3fs")
    if not isinstance(s3fs, dict):
        return ""
    if os.path.ismount(S3FS_MOUNT):
        return f"s3fs: {s3fs['bucket']} at {S3FS_MOUNT}"
    if s3fs.get("access_key"):
        keys = f"{s3fs['access_key']}:{s3fs['secret_key']}\n"
        firstboot.write_private(S3FS_PASSWD, keys.encode())
    S3FS_MOUNT.mkdir(parents=True, exist_ok=True)
    argv = ["s3fs", s3fs["bucket"], str(S3FS_MOUNT), "-o", ",".join(s3fs_options(s3fs))]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        reason = firstboot.plain(result.stderr.strip()[-200:])
        return f"s3fs: could not mount {s3fs['bucket']}: {reason}"
    return f"s3fs: {s3fs['bucket']} at {S3FS_MOUNT}"


def mount_autosquash(config: dict[str, Any]) -> str:
    if not config.get("autosquash"):
        return ""
    source = Path(config["autosquash"])
    if not source.is_dir():
        return f"autosquash: {source} is not a directory"
    mounted = []
    for image in sorted(source.glob("*.squashfs")):
        name = re.sub(r"[^A-Za-z0-9._-]", "_", image.stem)
        if not name or name.startswith("."):  # "..squashfs" would mount over a parent
            firstboot.say(PROGRAM, f"autosquash: skipping {firstboot.plain(image.name)!r}")
            continue
        target = AUTOSQUASH_MOUNTS / name
        target.mkdir(parents=True, exist_ok=True)
        if not os.path.ismount(target):
            options = "ro,loop,nodev,nosuid"
            argv = ["mount", "-t", "squashfs", "-o", options, str(image), str(target)]
            result = subprocess.run(argv, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                firstboot.say(PROGRAM, f"autosquash: could not mount {name}: {result.stderr}")
                continue
        mounted.append(name)
    listed = f" ({', '.join(mounted)})" if mounted else ""
    return f"autosquash: {len(mounted)} mounted from {source}{listed}"


def attempt(what: str, step: Callable[..., str | None], *args: Any) -> str:
    """Run one optional step; a failure is said on the console and the boot goes on."""
    try:
        return step(*args) or ""
    except Exception as exc:  # any failure of an optional step
        return f"{what} failed: {type(exc).__name__}: {exc}"


def boot(data: bytes | None = None) -> int:
    try:
        config = settings(data)
        zone_file = timezone_file(config)
        user = display_user()
        passwd_file = Path(user.pw_dir, *VNC_PASSWD)
        server_config = vnc_config(config, passwd_file)
    except (firstboot.BadUserData, Refused) as problem:
        firstboot.refuse(PROGRAM, firstboot.BadUserData(str(problem)))
    number = attendee(config)
    # The password and the VNC security settings must be in place, or the VNC server (which
    # requires this unit) does not start. The rest is reported when it fails, not fatal.
    password, generated = vnc_password(config)
    try:
        install_password(password, user)
    except OSError as exc:  # e.g. a link the user made where the password file goes
        firstboot.say(PROGRAM, f"cannot write the VNC password: {exc.strerror}", motd=True)
        return 1
    VNC_CONFIG.write_text(server_config)
    notes = [
        attempt("the attendee number", write_attendee, number),
        attempt("the auto-shutdown timer", write_timer, config, zone_file),
        attempt("the s3fs mount", mount_s3fs, config),
        attempt("autosquash", mount_autosquash, config),
    ]
    where = "localhost only" if config.get("vnc_localhost_only") else "all addresses"
    summary = (
        f"attendee {number or '(none)'}; VNC display :1 (port 5901, {where}) as {user.pw_name}, "
        f"password in {PASSWORD} (root only)"
    )
    firstboot.say(PROGRAM, summary, motd=True)
    for note in filter(None, notes):
        firstboot.say(PROGRAM, note)
    if generated:
        firstboot.to_console(f"imageforge-secret: vnc_password={password}")
    return 0


if __name__ == "__main__":
    sys.exit(boot() if sys.argv[1:] == ["boot"] else build())
