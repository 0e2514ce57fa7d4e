#!/bin/sh
# Training desktop: one attendee's XFCE desktop, served by TigerVNC on display :1 (port 5901) and
# logged in as the image user. The packages are declared in images.yml; this script wires them
# up. Everything per instance (VNC password, attendee number, shared-data mounts, the shutdown
# time if user-data changes it) is set at boot by imageforge-desktop.service, never baked in.
set -eu
export DEBIAN_FRONTEND=noninteractive
user="$IMAGE_USER"
no_settings='{}'

# A screen locker or blanker crashes TigerVNC when it blanks the display; attendees never need one.
apt-get purge -y -q light-locker xfce4-screensaver xscreensaver > /dev/null 2>&1 || true

install -d -m 0755 /etc/imageforge /var/lib/imageforge/desktop
install -d -m 0700 /var/lib/imageforge/private
# images.yml's `desktop:` settings, the defaults that user-data may override at boot.
printf '%s\n' "${IMAGEFORGE_DESKTOP:-$no_settings}" > /etc/imageforge/desktop.json

# TigerVNC (Debian's tigervncserver@.service: tigervncsession starts the tigervncserver wrapper
# as the user of the display in vncserver.users): display :1 belongs to the image user. The
# security settings and the password file (TigerVNC 1.14+: ~/.config/tigervnc/passwd, no longer
# ~/.vnc/passwd) are written at boot; tigervncpasswd comes from tigervnc-tools, which the server
# only recommends (images.yml declares it).
printf ':1=%s\n' "$user" > /etc/tigervnc/vncserver.users
mkdir -p /etc/systemd/system/tigervncserver@.service.d
cat > /etc/systemd/system/tigervncserver@.service.d/imageforge.conf <<'UNIT'
[Unit]
# The password, security types and attendee number are set first.
After=imageforge-desktop.service
Requires=imageforge-desktop.service

[Service]
Restart=on-failure
RestartSec=2
UNIT

# XFCE defaults for every user: the attendee's background, no icons over it, the default panel
# without the first-start question, and no blanking or DPMS (which crash TigerVNC). xfdesktop
# names a monitor by its RandR output (Xtigervnc's is VNC-0; XFCE 4.20 too) and, in single
# workspace mode, takes every workspace's backdrop from workspace 0.
xfconf=/etc/xdg/xfce4/xfconf/xfce-perchannel-xml
mkdir -p "$xfconf"
if [ -f /etc/xdg/xfce4/panel/default.xml ]; then
    cp /etc/xdg/xfce4/panel/default.xml "$xfconf/xfce4-panel.xml"
fi
{
    echo '<?xml version="1.0" encoding="UTF-8"?>'
    echo '<channel name="xfce4-desktop" version="1.0">'
    echo '  <property name="desktop-icons" type="empty">'
    echo '    <property name="style" type="int" value="0"/>'
    echo '  </property>'
    echo '  <property name="backdrop" type="empty">'
    echo '    <property name="single-workspace-mode" type="bool" value="true"/>'
    echo '    <property name="single-workspace-number" type="int" value="0"/>'
    echo '    <property name="screen0" type="empty">'
    for monitor in monitorVNC-0 monitor0 monitorscreen; do
        echo "      <property name=\"$monitor\" type=\"empty\">"
        for workspace in 0 1 2 3; do
            echo "        <property name=\"workspace$workspace\" type=\"empty\">"
            echo '          <property name="image-style" type="int" value="5"/>'
            echo '          <property name="last-image" type="string"'
            echo '                    value="/var/lib/imageforge/desktop/background.png"/>'
            echo '        </property>'
        done
        echo '      </property>'
    done
    echo '    </property>'
    echo '  </property>'
    echo '</channel>'
} > "$xfconf/xfce4-desktop.xml"
cat > "$xfconf/xfce4-power-manager.xml" <<'XML'
<?xml version="1.0" encoding="UTF-8"?>
<channel name="xfce4-power-manager" version="1.0">
  <property name="xfce4-power-manager" type="empty">
    <property name="dpms-enabled" type="bool" value="false"/>
    <property name="blank-on-ac" type="int" value="0"/>
    <property name="lock-screen-suspend-hibernate" type="bool" value="false"/>
  </property>
</channel>
XML
cat > /etc/xdg/autostart/imageforge-no-blanking.desktop <<'DESKTOP'
[Desktop Entry]
Type=Application
Name=No screen blanking (imageforge)
Comment=Blanking the display crashes TigerVNC
Exec=xset s off s noblank -dpms
NoDisplay=true
DESKTOP

# The attendee number in every interactive bash prompt (the number is written at boot).
cat > /etc/imageforge/attendee-prompt.sh <<'SH'
# imageforge: show the attendee number, set at boot from user-data or metadata, in the prompt.
if [ -n "${PS1-}" ] && [ -r /etc/imageforge/attendee ]; then
    case "$PS1" in
        *"[attendee "*) ;;
        *) PS1="[attendee $(cat /etc/imageforge/attendee)] $PS1" ;;
    esac
fi
SH
for rc in /etc/bash.bashrc /etc/skel/.bashrc "/home/$user/.bashrc" /root/.bashrc; do
    if [ -f "$rc" ] && ! grep -q attendee-prompt "$rc"; then
        printf '\n. /etc/imageforge/attendee-prompt.sh\n' >> "$rc"
    fi
done

# Auto-shutdown: every day at a local time. The timer is written at boot from the settings.
cat > /etc/systemd/system/imageforge-autoshutdown.service <<'UNIT'
[Unit]
Description=imageforge: the daily auto-shutdown of this training desktop

[Service]
Type=oneshot
ExecStart=/usr/bin/systemctl poweroff
UNIT
install -d /mnt/s3fs /mnt/autosquash

install -d /usr/local/sbin
cat > /usr/local/sbin/imageforge-desktop-setup <<'PY'
#!/usr/bin/python3
"""imageforge: set this training desktop up for its attendee, at every boot.

Runs as imageforge-desktop.service after cloud-init and before the VNC server. The image's
defaults (images.yml `desktop:`) are in /etc/imageforge/desktop.json; the instance's user-data
(cloud-config) may override them with a block of ours, every key optional:

    imageforge_desktop:
      attendee: 7                      # in the prompt and on the desktop
      vnc_password: "s3cret12"         # else one is generated once per instance
      shutdown: {time: "17:30", timezone: Europe/Berlin}   # or null: never
      autosquash: /mnt/s3fs/autosquash
      s3fs: {bucket: course-data, url: "https://s3.example.org", path_style: true,
             access_key: "...", secret_key: "..."}   # no keys: the instance's own role

The attendee number may come from instance metadata instead: an `attendee` key (NoCloud meta-data,
OpenStack `meta`), a GCE instance attribute `attendee`, or an EC2 instance tag `Attendee`.
A generated VNC password is written to the console once, and to a root-only file. The VNC
server reads it from the user's ~/.config/tigervnc/passwd (TigerVNC 1.14+), which the mandatory
server configuration names, so that TigerVNC 1.12 (Debian 12, ~/.vnc) reads it there as well.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import secrets
import string
import subprocess
import sys
from pathlib import Path

import yaml

USER_DATA = Path("/var/lib/cloud/instance/user-data.txt")
INSTANCE_DATA = Path("/run/cloud-init/instance-data.json")
INSTANCE_ID = Path("/var/lib/cloud/data/instance-id")
DEFAULTS = Path("/etc/imageforge/desktop.json")
PRIVATE = Path("/var/lib/imageforge/private")
PASSWORD = PRIVATE / "vnc-password"
PASSWORD_INSTANCE = PRIVATE / "vnc-password.instance-id"
ATTENDEE = Path("/etc/imageforge/attendee")
BACKGROUND = Path("/var/lib/imageforge/desktop/background.png")
VNC_USERS = Path("/etc/tigervnc/vncserver.users")
VNC_CONFIG = Path("/etc/tigervnc/vncserver-config-mandatory")
VNC_PASSWD = (".config", "tigervnc", "passwd")  # under the user's home, as TigerVNC 1.14+ has it
VNCPASSWD = "tigervncpasswd"  # tigervnc-tools (vncpasswd is only its alternatives link)
S3FS_MOUNT = Path("/mnt/s3fs")
S3FS_TMPDIR = "/var/tmp"  # s3fs stages what it reads in temporary files: /tmp is a tmpfs now
TIMER = Path("/etc/systemd/system/imageforge-autoshutdown.timer")
S3FS_PASSWD = Path("/etc/passwd-s3fs")
MOTD = Path("/run/motd.d/50-imageforge-desktop")
ATTENDEE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,15}$")
PLAIN_PATH = re.compile(r"^/[A-Za-z0-9._/-]+$")  # quoted into the Perl of the VNC configuration
CLOCK = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
ALPHABET = string.ascii_letters + string.digits
METADATA_PATHS = (("attendee",), ("meta", "attendee"), ("instance", "attributes", "attendee"),
                  ("tags", "instance", "Attendee"))


def say(message: str) -> None:
    """A line on the console and in the journal (never a secret)."""
    print(f"imageforge-desktop: {message}", flush=True)


def to_console(line: str) -> None:
    """Straight to the console (the serial log clouds show their owner), not to the journal."""
    try:
        with open("/dev/console", "w") as console:
            console.write(line + "\n")
    except OSError:
        pass


def settings() -> dict:
    merged = json.loads(DEFAULTS.read_text()) if DEFAULTS.is_file() else {}
    try:
        document = yaml.safe_load(USER_DATA.read_text()) if USER_DATA.is_file() else None
    except yaml.YAMLError:
        say("the user-data is not YAML; using the image's defaults")
        document = None
    block = document.get("imageforge_desktop") if isinstance(document, dict) else None
    if isinstance(block, dict):
        merged.update(block)
    return merged


def attendee(config: dict) -> str | None:
    value = config.get("attendee")
    if value is None and INSTANCE_DATA.is_file():
        meta = json.loads(INSTANCE_DATA.read_text()).get("ds", {}).get("meta_data") or {}
        for path in METADATA_PATHS:
            node = meta
            for key in path:
                node = node.get(key) if isinstance(node, dict) else None
            if node is not None:
                value = node
                break
    if value is None:
        return None
    if not ATTENDEE_NAME.match(str(value)):
        say(f"ignoring attendee {str(value)[:20]!r}: use up to 16 letters, digits or dashes")
        return None
    return str(value)


def vnc_password(config: dict, instance: str) -> tuple[str, bool]:
    """The password and whether it was generated now (only then is it shown on the console)."""
    given = config.get("vnc_password")
    if given is not None:
        given = str(given)
        if 6 <= len(given) and given.isprintable():
            if len(given) > 8:
                say("VNC authentication uses only the first 8 characters of vnc_password")
            return given, False
        say("ignoring vnc_password from user-data: it needs at least 6 printable characters")
    if PASSWORD.is_file() and _read(PASSWORD_INSTANCE) == instance:
        return PASSWORD.read_text().strip(), False
    return "".join(secrets.choice(ALPHABET) for _ in range(8)), True


def vnc_passwd_file(user: pwd.struct_passwd) -> Path:
    return Path(user.pw_dir, *VNC_PASSWD)


def install_password(password: str, instance: str, user: pwd.struct_passwd) -> None:
    PRIVATE.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path, text in ((PASSWORD, password), (PASSWORD_INSTANCE, instance)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text + "\n")
    obfuscated = subprocess.run(
        [VNCPASSWD, "-f"], input=password.encode(), capture_output=True, check=True
    ).stdout
    if len(obfuscated) != 8:
        raise RuntimeError(f"{VNCPASSWD} -f gave {len(obfuscated)} bytes, not 8")
    write_user_file(user, VNC_PASSWD, obfuscated)


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


def write_vnc_config(config: dict, passwd_file: Path) -> None:
    localhost = "yes" if config.get("vnc_localhost_only") else "no"
    geometry = str(config.get("geometry") or "1280x800")
    if not re.match(r"^[1-9][0-9]{2,3}x[1-9][0-9]{2,3}$", geometry):
        geometry = "1280x800"
    if not PLAIN_PATH.match(str(passwd_file)):
        raise ValueError(f"not a plain path for the VNC password file: {str(passwd_file)!r}")
    VNC_CONFIG.write_text(
        "# imageforge: written at boot. VNC authentication only: security type None is never\n"
        "# offered. The password is per instance, in the file named here (TigerVNC 1.14+ looks\n"
        "# in ~/.config/tigervnc, 1.12 in ~/.vnc: named, both read the same file).\n"
        '$SecurityTypes = "VncAuth";\n'
        f"$vncPasswdFile = '{passwd_file}';\n"
        f'$localhost = "{localhost}";\n'
        '$session = "xfce";\n'
        f'$geometry = "{geometry}";\n'
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


def write_timer(config: dict) -> str:
    shutdown = config.get("shutdown")
    if not isinstance(shutdown, dict):
        text, what = "", "no auto-shutdown"
    else:
        when, zone = str(shutdown.get("time", "18:00")), str(shutdown.get("timezone", "UTC"))
        if not CLOCK.match(when) or not Path("/usr/share/zoneinfo", zone).is_file():
            say(f"ignoring shutdown {when!r} {zone!r}: use HH:MM and a tz database name")
            when, zone = "18:00", "Europe/London"
        _set_timezone(zone)
        text = (
            "[Unit]\nDescription=imageforge: power off every day at "
            f"{when} {zone}\n\n[Timer]\nOnCalendar=*-*-* {when}:00 {zone}\n\n"
            "[Install]\nWantedBy=timers.target\n"
        )
        what = f"auto-shutdown every day at {when} {zone}"
    current = _read(TIMER)
    if text != (current + "\n" if current else ""):
        if text:
            TIMER.write_text(text)
        else:
            TIMER.unlink(missing_ok=True)
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    if text:
        subprocess.run(["systemctl", "start", "--no-block", TIMER.name], check=False)
    else:
        subprocess.run(["systemctl", "stop", TIMER.name], check=False, capture_output=True)
    return what


def _set_timezone(zone: str) -> None:
    localtime = Path("/etc/localtime")
    target = Path("/usr/share/zoneinfo", zone)
    if localtime.is_symlink() and Path(os.readlink(localtime)) == target:
        return
    localtime.unlink(missing_ok=True)
    localtime.symlink_to(target)
    Path("/etc/timezone").write_text(zone + "\n")


def mount_s3fs(config: dict) -> str:
    s3fs = config.get("s3fs")
    if not isinstance(s3fs, dict) or not s3fs.get("bucket"):
        return ""
    target = S3FS_MOUNT
    if os.path.ismount(target):
        return f"s3fs: {s3fs['bucket']} at {target}"
    options = ["allow_other", "umask=0022", f"tmpdir={S3FS_TMPDIR}"]
    if s3fs.get("read_only", True):
        options.append("ro")
    if s3fs.get("url"):
        options.append(f"url={s3fs['url']}")
    if s3fs.get("path_style"):
        options.append("use_path_request_style")
    if s3fs.get("access_key") and s3fs.get("secret_key"):
        fd = os.open(S3FS_PASSWD, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"{s3fs['access_key']}:{s3fs['secret_key']}\n")
        options.append(f"passwd_file={S3FS_PASSWD}")
    else:
        options.append("iam_role=auto")
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["s3fs", str(s3fs["bucket"]), str(target), "-o", ",".join(options)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        return f"s3fs: could not mount {s3fs['bucket']}: {result.stderr.strip()[-200:]}"
    return f"s3fs: {s3fs['bucket']} at {target}"


def mount_autosquash(config: dict) -> str:
    source = config.get("autosquash")
    if not source:
        return ""
    source = Path(str(source))
    if not source.is_dir():
        return f"autosquash: {source} is not a directory"
    mounted = []
    for image in sorted(source.glob("*.squashfs")):
        name = re.sub(r"[^A-Za-z0-9._-]", "_", image.stem)
        target = Path("/mnt/autosquash") / name
        target.mkdir(parents=True, exist_ok=True)
        if not os.path.ismount(target):
            result = subprocess.run(
                ["mount", "-t", "squashfs", "-o", "ro,loop,nodev,nosuid", str(image), str(target)],
                capture_output=True, text=True,
            )
            if result.returncode != 0:
                say(f"autosquash: could not mount {image.name}: {result.stderr.strip()}")
                continue
        mounted.append(name)
    return f"autosquash: {len(mounted)} mounted from {source}" + (
        f" ({', '.join(mounted)})" if mounted else ""
    )


def attempt(what: str, step, *args) -> str:
    """Run one optional step; a failure is said on the console and the boot goes on."""
    try:
        return step(*args) or ""
    except Exception as exc:  # noqa: BLE001 (any failure of an optional step)
        return f"{what} failed: {type(exc).__name__}: {exc}"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def main() -> int:
    config = settings()
    instance = _read(INSTANCE_ID) or "unknown"
    user_name = next(
        (line.split("=", 1)[1].strip() for line in _read(VNC_USERS).splitlines()
         if line.startswith(":1=")), "training",
    )
    user = pwd.getpwnam(user_name)
    # The password and the VNC security settings must be in place, or the VNC server (which
    # requires this unit) does not start. The rest is reported when it fails, not fatal.
    password, generated = vnc_password(config, instance)
    install_password(password, instance, user)
    write_vnc_config(config, vnc_passwd_file(user))
    number = attendee(config)
    notes = [
        attempt("the attendee number", write_attendee, number),
        attempt("the auto-shutdown timer", write_timer, config),
        attempt("the s3fs mount", mount_s3fs, config),
        attempt("autosquash", mount_autosquash, config),
    ]
    where = "localhost only" if config.get("vnc_localhost_only") else "all addresses"
    summary = (
        f"attendee {number or '(none)'}; VNC display :1 (port 5901, {where}) as {user_name}, "
        f"password in {PASSWORD} (root only)"
    )
    say(summary)
    for note in filter(None, notes):
        say(note)
    MOTD.parent.mkdir(parents=True, exist_ok=True)
    MOTD.write_text(f"imageforge-desktop: {summary}\n")
    if generated:
        to_console(f"imageforge-secret: vnc_password={password}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
PY
chmod 0755 /usr/local/sbin/imageforge-desktop-setup

cat > /etc/systemd/system/imageforge-desktop.service <<'UNIT'
[Unit]
Description=imageforge: set up this training desktop (attendee, VNC password, shared data)
# cloud-init 25.1 (Debian 13) renamed cloud-init.service to cloud-init-network.service.
After=cloud-init.service cloud-init-network.service network-online.target
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/imageforge-desktop-setup
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
UNIT
# --no-reload: enabled for the next boot; a daemon-reload here costs seconds and changes nothing.
systemctl enable --no-reload imageforge-desktop.service tigervncserver@:1.service > /dev/null 2>&1
