"""training-desktop pieces that run without a VM: settings reach the image, the VM's forwards,
console redaction, the RFB handshake, and the guest's own setup program on a scratch tree."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import types
from pathlib import Path

import pytest
import yaml

from imageforge import config, matrix, qemu, render, vnc
from imageforge.clouds.local import seed_user_data
from imageforge.packer import PackerVersion

from .conftest import ROOT

PROVISIONER = ROOT / "provisioners" / "training-desktop" / "20-desktop.sh"


def test_desktop_settings_reach_the_provisioners_as_json(tmp_path: Path) -> None:
    project = config.load(ROOT / "images.yml")
    cell = matrix.find(project, "training-desktop", "local")
    rendered = render.render(project, cell, PackerVersion(1, 6, 6), tmp_path)
    assert "IMAGEFORGE_DESKTOP=" in (rendered.directory / "build.pkr.hcl").read_text()
    env = render._env(cell, cell.flavor.provisioners[0])
    [line] = [e for e in env if isinstance(e, str) and e.startswith("IMAGEFORGE_DESKTOP=")]
    settings = json.loads(line.split("=", 1)[1])
    assert settings["shutdown"] == {"time": "18:00", "timezone": "Europe/London"}
    assert settings["vnc_localhost_only"] is False
    slurm = matrix.find(project, "slurm-node", "local")
    slurm_env = render._env(slurm, slurm.flavor.provisioners[0])
    assert not any(str(e).startswith("IMAGEFORGE_DESKTOP=") for e in slurm_env)


def test_verify_user_data_is_added_after_the_key() -> None:
    text = seed_user_data("ssh-ed25519 AAAA k", {"imageforge_desktop": {"attendee": 42}})
    assert text.startswith("#cloud-config\n")
    document = yaml.safe_load(text)
    assert document["ssh_authorized_keys"] == ["ssh-ed25519 AAAA k"]
    assert document["imageforge_desktop"] == {"attendee": 42}
    # As loaded from images.yml (YAML's own located mapping types).
    flavor = config.load(ROOT / "images.yml").images.flavors["training-desktop"]
    shipped = yaml.safe_load(seed_user_data("ssh-ed25519 AAAA k", flavor.verify_user_data))
    assert shipped["imageforge_desktop"]["attendee"] == 42


def test_forwards_and_guest_commands_stay_on_localhost(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(qemu, "probe_accelerator", lambda requested="auto": "tcg")
    vm = qemu.VirtualMachine(
        disk=tmp_path / "d.qcow2",
        serial_log=tmp_path / "s.log",
        restrict_network=True,
        ssh_port=2222,
        forwards={5901: 3333},
        guest_commands=(("10.0.2.100:80", "socat - TCP:127.0.0.1:9000"),),
    )
    argv = vm.argv()
    assert argv[argv.index("-cpu") + 1] == "max"  # a modern CPU under TCG, not qemu64
    netdev = argv[argv.index("-netdev") + 1]
    assert netdev == (
        "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,"
        "hostfwd=tcp:127.0.0.1:3333-:5901,"
        "guestfwd=tcp:10.0.2.100:80-cmd:socat - TCP:127.0.0.1:9000"
    )


def rfb_server(types_offered: bytes, on_choice: bytes) -> tuple[int, threading.Thread]:
    """A one-connection RFB 3.8 speaker up to the security result, for the client's parsing."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            conn.sendall(b"RFB 003.008\n")
            conn.recv(12)
            conn.sendall(bytes([len(types_offered)]) + types_offered)
            if types_offered:
                conn.recv(1)
                conn.sendall(on_choice)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return port, thread


def test_handshake_reports_the_offered_types_and_a_refusal() -> None:
    reason = b"no such type"
    port, thread = rfb_server(
        b"\x02", b"\x00\x00\x00\x01" + len(reason).to_bytes(4, "big") + reason
    )
    result = vnc.handshake(port)
    thread.join(5)
    assert result.security_types == (2,) and not result.accepted
    assert result.reason == "no such type"


def test_handshake_notices_a_server_that_lets_anyone_in() -> None:
    port, thread = rfb_server(b"\x01\x02", b"\x00\x00\x00\x00")
    result = vnc.handshake(port)
    thread.join(5)
    assert result.security_types == (1, 2) and result.accepted


def test_handshake_takes_a_closed_connection_as_a_refusal() -> None:
    """TigerVNC sends no security result for a type it does not offer: it closes."""
    port, thread = rfb_server(b"\x02", b"")
    result = vnc.handshake(port)
    thread.join(5)
    assert result.security_types == (2,) and not result.accepted
    assert result.reason == "connection closed"


@pytest.mark.parametrize(
    ("messages", "refused"),
    [
        ("CRITICAL:root:Authentication failure", True),  # TigerVNC 1.12
        ("CRITICAL:root:Authentication failed", True),  # TigerVNC 1.14+
        ("CRITICAL:root:Connection refused: b'Too many security failures'", False),
        ("vncdotool did not finish in 30s", False),
    ],
)
def test_a_refused_password_is_recognised_in_either_wording(messages: str, refused: bool) -> None:
    assert vnc.authentication_refused(messages) is refused


# The guest's setup program, taken from the provisioner and run against a scratch tree.


@pytest.fixture
def setup(tmp_path: Path, monkeypatch) -> types.ModuleType:
    source = re.search(r"<<'PY'\n(.*?)\nPY\n", PROVISIONER.read_text(), re.S)
    assert source, "the provisioner no longer embeds the setup program"
    module = types.ModuleType("imageforge_desktop_setup")
    exec(compile(source.group(1), "imageforge-desktop-setup", "exec"), module.__dict__)
    for name in ("USER_DATA", "INSTANCE_DATA", "DEFAULTS", "TIMER", "ATTENDEE"):
        path = tmp_path / name.lower()
        monkeypatch.setattr(module, name, path)
    private = tmp_path / "private"
    monkeypatch.setattr(module, "PRIVATE", private)
    monkeypatch.setattr(module, "PASSWORD", private / "vnc-password")
    monkeypatch.setattr(module, "PASSWORD_INSTANCE", private / "vnc-password.instance-id")
    monkeypatch.setattr(module, "VNC_CONFIG", tmp_path / "vncserver-config-mandatory")
    monkeypatch.setattr(module, "S3FS_MOUNT", tmp_path / "mnt-s3fs")
    calls: list[list[str]] = []
    monkeypatch.setattr(module, "_set_timezone", lambda zone: calls.append(["tz", zone]))

    def run(argv, **kw) -> subprocess.CompletedProcess:
        calls.append(list(argv))
        # tigervncpasswd -f: the password's 8 obfuscated bytes; everything else says nothing.
        out = b"\x8f" * 8 if argv[:2] == [module.VNCPASSWD, "-f"] else ""
        return subprocess.CompletedProcess(argv, 0, out, "")

    monkeypatch.setattr(module.subprocess, "run", run)
    module.calls = calls  # type: ignore[attr-defined]
    return module


@pytest.fixture
def user(tmp_path: Path) -> types.SimpleNamespace:
    """The display's user, as pwd has it, with an empty home directory in the scratch tree."""
    home = tmp_path / "home" / "training"
    home.mkdir(parents=True)
    return types.SimpleNamespace(
        pw_name="training", pw_dir=str(home), pw_uid=os.getuid(), pw_gid=os.getgid()
    )


def test_user_data_overrides_the_image_defaults(setup) -> None:
    setup.DEFAULTS.write_text(json.dumps({"shutdown": {"time": "18:00"}, "autosquash": "/a"}))
    setup.USER_DATA.write_text("#cloud-config\nimageforge_desktop: {attendee: 7, autosquash: /b}\n")
    assert setup.settings() == {"shutdown": {"time": "18:00"}, "autosquash": "/b", "attendee": 7}


@pytest.mark.parametrize(
    "meta_data",
    [
        {"attendee": "12"},
        {"meta": {"attendee": "12"}},
        {"instance": {"attributes": {"attendee": "12"}}},
        {"tags": {"instance": {"Attendee": "12"}}},
    ],
)
def test_attendee_number_from_instance_metadata(setup, meta_data: dict) -> None:
    setup.INSTANCE_DATA.write_text(json.dumps({"ds": {"meta_data": meta_data}}))
    assert setup.attendee({}) == "12"
    assert setup.attendee({"attendee": 3}) == "3"  # user-data wins


def test_a_hostile_attendee_value_is_ignored(setup) -> None:
    assert setup.attendee({"attendee": "7; rm -rf /"}) is None
    assert setup.attendee({"attendee": "$(reboot)"}) is None


def test_password_is_generated_once_per_instance(setup) -> None:
    first, generated = setup.vnc_password({}, "i-1")
    assert generated and len(first) == 8 and first.isalnum()
    setup.PRIVATE.mkdir()
    setup.PASSWORD.write_text(first + "\n")
    setup.PASSWORD_INSTANCE.write_text("i-1\n")
    assert setup.vnc_password({}, "i-1") == (first, False)  # a reboot keeps it
    again, generated = setup.vnc_password({}, "i-2")  # a new instance of the image does not
    assert generated and again != first
    assert setup.vnc_password({"vnc_password": "given-pw"}, "i-2") == ("given-pw", False)
    short, generated = setup.vnc_password({"vnc_password": "abc"}, "i-2")
    assert generated and short != "abc"


def test_shutdown_timer_is_written_from_the_settings(setup) -> None:
    what = setup.write_timer({"shutdown": {"time": "17:30", "timezone": "Europe/Berlin"}})
    assert what == "auto-shutdown every day at 17:30 Europe/Berlin"
    assert "OnCalendar=*-*-* 17:30:00 Europe/Berlin\n" in setup.TIMER.read_text()
    assert ["systemctl", "daemon-reload"] in setup.calls
    setup.calls.clear()
    setup.write_timer({"shutdown": {"time": "17:30", "timezone": "Europe/Berlin"}})
    assert ["systemctl", "daemon-reload"] not in setup.calls  # unchanged: no reload
    assert setup.write_timer({"shutdown": None}) == "no auto-shutdown"
    assert not setup.TIMER.exists()


def test_vnc_config_never_offers_none_and_honours_localhost_only(setup, user) -> None:
    passwd = setup.vnc_passwd_file(user)
    setup.write_vnc_config({"vnc_localhost_only": True}, passwd)
    text = setup.VNC_CONFIG.read_text()
    assert '$SecurityTypes = "VncAuth";' in text and '$localhost = "yes";' in text
    assert re.findall(r"^\$SecurityTypes = (.*);$", text, re.M) == ['"VncAuth"']
    assert not [line for line in text.splitlines() if "None" in line and line[0] != "#"]
    setup.write_vnc_config({"geometry": "1x1; system('reboot')"}, passwd)
    text = setup.VNC_CONFIG.read_text()
    assert '$localhost = "no";' in text and '$geometry = "1280x800";' in text


def test_vnc_config_names_the_password_file_for_every_tigervnc(setup, user) -> None:
    """TigerVNC 1.14+ keeps it in ~/.config/tigervnc, 1.12 looked in ~/.vnc: named, both read
    the same file. The path is quoted into Perl, so only a plain one is written."""
    passwd = setup.vnc_passwd_file(user)
    assert passwd == Path(user.pw_dir) / ".config" / "tigervnc" / "passwd"
    setup.write_vnc_config({}, passwd)
    assert f"$vncPasswdFile = '{passwd}';\n" in setup.VNC_CONFIG.read_text()
    with pytest.raises(ValueError):
        setup.write_vnc_config({}, Path("/home/x'; system('reboot'); '/passwd"))


def test_the_vnc_password_goes_to_the_users_tigervnc_directory(setup, user) -> None:
    setup.install_password("s3cret12", "i-1", user)
    assert [setup.VNCPASSWD, "-f"] in setup.calls
    passwd = Path(user.pw_dir, ".config", "tigervnc", "passwd")
    assert passwd.read_bytes() == b"\x8f" * 8
    assert oct(passwd.stat().st_mode & 0o777) == oct(0o600)
    for directory in (passwd.parent, passwd.parent.parent):
        assert oct(directory.stat().st_mode & 0o777) == oct(0o700)
        assert (directory.stat().st_uid, directory.stat().st_gid) == (user.pw_uid, user.pw_gid)
    assert not Path(user.pw_dir, ".vnc").exists()  # TigerVNC 1.14+ warns about (or moves) it
    assert sorted(p.name for p in passwd.parent.iterdir()) == ["passwd"]
    assert setup.PASSWORD.read_text() == "s3cret12\n"
    setup.install_password("an0ther1", "i-1", user)  # a given password replaces the file
    assert sorted(p.name for p in passwd.parent.iterdir()) == ["passwd"]


def test_the_password_is_never_written_through_a_link_the_user_made(setup, user, tmp_path):
    """Root writes into the user's home: a link there must not send it to another file."""
    victim = tmp_path / "shadow"
    victim.write_text("root:*:\n")
    config = Path(user.pw_dir, ".config", "tigervnc")
    config.mkdir(parents=True)
    (config / "passwd").symlink_to(victim)
    setup.install_password("s3cret12", "i-1", user)
    assert victim.read_text() == "root:*:\n"
    assert not (config / "passwd").is_symlink() and (config / "passwd").stat().st_size == 8
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (config / "passwd").unlink()
    config.rmdir()
    config.symlink_to(elsewhere)
    with pytest.raises(OSError):
        setup.install_password("s3cret12", "i-1", user)
    assert list(elsewhere.iterdir()) == []


def test_s3fs_stages_its_temporary_files_on_disk_not_in_tmpfs(setup) -> None:
    """Debian 13 mounts /tmp as a tmpfs: s3fs's temporary files (what it reads of a big
    squashfs) go to /var/tmp, on disk."""
    note = setup.mount_s3fs({"s3fs": {"bucket": "course-data", "path_style": True}})
    assert note == f"s3fs: course-data at {setup.S3FS_MOUNT}"
    [argv] = [c for c in setup.calls if c[0] == "s3fs"]
    options = argv[argv.index("-o") + 1].split(",")
    assert "tmpdir=/var/tmp" in options and "ro" in options and "iam_role=auto" in options


def test_setup_runs_after_cloud_init_by_either_name() -> None:
    """cloud-init 25.1 (Debian 13) renamed cloud-init.service to cloud-init-network.service;
    ordering after both is harmless where one is missing (Debian 12)."""
    text = PROVISIONER.read_text()
    unit = re.search(r"imageforge-desktop.service <<'UNIT'\n(.*?)\nUNIT\n", text, re.S)
    assert unit, "the provisioner no longer writes imageforge-desktop.service"
    [after] = [line for line in unit.group(1).splitlines() if line.startswith("After=")]
    assert {"cloud-init.service", "cloud-init-network.service"} <= set(after[6:].split())


def test_the_image_declares_the_vnc_password_tool() -> None:
    """tigervnc-tools (tigervncpasswd) is only a Recommends of the server: declared, or the
    image has no way to write the password file."""
    flavor = config.load(ROOT / "images.yml").images.flavors["training-desktop"]
    assert {"tigervnc-standalone-server", "tigervnc-tools"} <= set(flavor.packages)


def test_an_optional_step_that_fails_is_reported_not_fatal(setup) -> None:
    assert setup.attempt("the s3fs mount", lambda: 1 / 0).startswith(
        "the s3fs mount failed: ZeroDivisionError"
    )
    assert setup.attempt("autosquash", lambda config: "", {}) == ""
