"""training-desktop: the attendee's desktop, checked the way an attendee uses it.

A real VNC client logs in with the instance's own password and looks at the screen: it must
show an XFCE desktop with the attendee number on it. The screenshot is kept next to the build's
artifacts (screenshot.png) for a person to look at. Passwords never appear in an assertion.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import time
from pathlib import Path

import pytest

from imageforge import vnc

USER_DATA = json.loads(os.environ.get("IMAGEFORGE_VERIFY_USER_DATA") or "{}")
ATTENDEE = str((USER_DATA.get("imageforge_desktop") or {}).get("attendee", ""))
PORTS = json.loads(os.environ.get("IMAGEFORGE_PORTS") or "{}")
ARTIFACTS = Path(os.environ.get("IMAGEFORGE_ARTIFACTS") or ".")
PRIVATE = "/var/lib/imageforge/private"
VNC_PASSWD = "/home/training/.config/tigervnc/passwd"  # TigerVNC 1.14+ (was ~/.vnc/passwd)
DESKTOP_SECONDS = 300


@pytest.fixture(scope="module")
def vnc_port() -> int:
    if "5901" not in PORTS:
        pytest.fail("verification did not forward the VNC port 5901 (is it in the flavor's ports?)")
    return int(PORTS["5901"])


@pytest.fixture(scope="module")
def desktop(host) -> dict[str, str]:
    """The guest's desktop facts, gathered as root in one call once the VNC server is up."""
    host.run("timeout 120 sh -c 'until systemctl is-active -q tigervncserver@:1; do sleep 1; done'")
    sections = {
        "password": f"cat {PRIVATE}/vnc-password",
        "password_mode": f"stat -c '%U %a' {PRIVATE} {PRIVATE}/vnc-password",
        "vnc_passwd_mode": f"stat -c '%U %a %s' {VNC_PASSWD}",
        "settings": "cat /etc/imageforge/desktop.json",
        "timer": "systemctl show imageforge-autoshutdown.timer -p TimersCalendar -p ActiveState",
        "timezone": "readlink /etc/localtime",
        "listen": "ss -Hltn 'sport = :5901'",
        "setup": "journalctl -b -u imageforge-desktop.service -o cat --no-pager",
        "vnc_config": "cat /etc/tigervnc/vncserver-config-mandatory",
        # The VNC server as the wrapper started it: its security types and password file.
        "xvnc": "ps -C Xtigervnc -o args=",
    }
    # Each section ends on a line of its own, even when its output has no final newline.
    script = "".join(f"echo '### {k}'; ( {v} ) 2>&1; echo; " for k, v in sections.items())
    out = host.check_output(f"sudo -n sh -c {shlex.quote(script)}")
    facts: dict[str, str] = {}
    current = ""
    for line in out.splitlines():
        if line.startswith("### "):
            current = line.removeprefix("### ")
            facts[current] = ""
        else:
            facts[current] += line + "\n"
    # Only a digest is kept, so that another boot of the artifact can be compared with this one.
    digest = hashlib.sha256(facts["password"].strip().encode()).hexdigest()
    (ARTIFACTS / "instance-secrets.json").write_text(json.dumps({"vnc_password": digest}) + "\n")
    return facts


def test_vnc_server_runs_for_the_training_user(host, desktop):
    assert host.service("tigervncserver@:1").is_running
    assert host.file("/etc/tigervnc/vncserver.users").contains("^:1=training$")
    settings = json.loads(desktop["settings"])
    wanted = "127.0.0.1:5901" if settings.get("vnc_localhost_only") else "0.0.0.0:5901"
    assert wanted in desktop["listen"], desktop["listen"]


def test_only_vnc_authentication_is_offered(vnc_port):
    """What the server offers a client, exactly: VNC authentication and nothing else (not the
    TLSVnc that TigerVNC adds by default, which vncdotool cannot speak; never None)."""
    offered = vnc.handshake(vnc_port)
    assert vnc.SECURITY_NONE not in offered.security_types, "security type None is offered"
    assert offered.security_types == (vnc.SECURITY_VNC_AUTH,), offered
    assert not offered.accepted, "the server let a client in with security type None"


def test_vnc_server_runs_with_vnc_authentication_and_the_instance_password(desktop):
    """The server's own settings, not only what one client saw: -SecurityTypes VncAuth and the
    password file in the user's TigerVNC directory (named by the mandatory configuration)."""
    [server] = desktop["xvnc"].strip().splitlines()
    args = server.split()

    def value(name: str) -> str:
        assert f"-{name}" in args, server
        return args[args.index(f"-{name}") + 1]

    assert value("SecurityTypes").lower() == "vncauth", server
    assert value("PasswordFile") == VNC_PASSWD, server
    assert '$SecurityTypes = "VncAuth";' in desktop["vnc_config"]


def test_password_is_per_instance_and_root_only(desktop):
    assert desktop["password_mode"].split() == ["root", "700", "root", "600"]
    password = desktop["password"].strip()
    assert len(password) == 8 and password.isalnum(), "not an 8-character generated password"
    owner, mode, size = desktop["vnc_passwd_mode"].split()
    assert (owner, mode, size) == ("training", "600", "8"), desktop["vnc_passwd_mode"]
    assert "vnc_password=" not in desktop["setup"], "the journal holds the password"


def test_wrong_password_is_refused(vnc_port, tmp_path):
    ok, messages = vnc.capture(vnc_port, "wrong-pw", tmp_path / "wrong.png", timeout=30)
    assert not ok
    assert vnc.authentication_refused(messages), messages


def test_desktop_shows_the_attendee_number(vnc_port, desktop, tmp_path):
    """Log in with the instance's password until the XFCE desktop is up and readable."""
    password = desktop["password"].strip()
    shot = tmp_path / "screen.png"
    deadline = time.monotonic() + DESKTOP_SECONDS
    desktop_ok, looks, text, messages = False, "", "", ""
    while time.monotonic() < deadline:
        ok, messages = vnc.capture(vnc_port, password, shot, timeout=30)
        if ok:
            desktop_ok, looks = vnc.looks_like_xfce(shot)
            text = vnc.text_on_screen(shot) if desktop_ok else ""
            if desktop_ok and f"ATTENDEE {ATTENDEE}" in text:
                break
        time.sleep(5)
    assert shot.is_file(), f"no screenshot: {messages}"
    (ARTIFACTS / "screenshot.png").write_bytes(shot.read_bytes())
    assert desktop_ok, f"not an XFCE desktop: {looks}"
    assert f"ATTENDEE {ATTENDEE}" in text, f"attendee {ATTENDEE} not on the screen: {text!r}"


def test_screen_never_blanks(host):
    """After the session started (the screenshot test waited for it): no blanking, no DPMS."""
    xset = host.run(
        "sudo -n -u training env DISPLAY=:1 XAUTHORITY=/home/training/.Xauthority xset q"
    )
    assert xset.rc == 0, xset.stderr
    assert "timeout:  0" in xset.stdout, xset.stdout
    assert "DPMS is Enabled" not in xset.stdout
    for package in ("light-locker", "xfce4-screensaver", "xscreensaver"):
        assert not host.package(package).is_installed, package


def test_prompt_shows_the_attendee_number(host):
    prompt = host.run("""sudo -n -u training -i bash -ic 'printf "%s" "${PS1@P}"'""")
    assert f"[attendee {ATTENDEE}]" in prompt.stdout, prompt.stdout


def test_shutdown_timer_follows_the_settings(desktop):
    shutdown = json.loads(desktop["settings"]).get("shutdown")
    if shutdown is None:
        assert "ActiveState=active" not in desktop["timer"]
        return
    when, zone = shutdown["time"], shutdown["timezone"]
    assert f"OnCalendar=*-*-* {when}:00 {zone}" in desktop["timer"], desktop["timer"]
    assert "ActiveState=active" in desktop["timer"]
    assert desktop["timezone"].strip().endswith(f"zoneinfo/{zone}")
