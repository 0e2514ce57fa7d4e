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

from imageforge import config, vnc
from imageforge.clouds.local import seed_user_data
from imageforge.config import matrix
from imageforge.packer import PackerVersion
from imageforge.process import qemu
from imageforge.stages import render

from . import guestprograms
from .conftest import ROOT

PROVISIONER = "provisioners/training-desktop/25-desktop-boot.py"


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
    assert argv[argv.index("-cpu") + 1] == qemu.TCG_CPU  # x86-64-v2 under TCG, not qemu64
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


# The guest's first-boot program (25-desktop-boot.py), run against a scratch tree.


@pytest.fixture
def setup(tmp_path: Path, monkeypatch) -> types.ModuleType:
    module = guestprograms.program(PROVISIONER, tmp_path, monkeypatch)
    for name in ("INSTANCE_DATA", "DEFAULTS", "TIMER", "ATTENDEE", "VNC_USERS", "S3FS_PASSWD"):
        monkeypatch.setattr(module, name, tmp_path / name.lower())
    monkeypatch.setattr(module, "PASSWORD", tmp_path / "private" / "vnc-password")
    monkeypatch.setattr(module, "VNC_CONFIG", tmp_path / "vncserver-config-mandatory")
    monkeypatch.setattr(module, "S3FS_MOUNT", tmp_path / "mnt-s3fs")
    monkeypatch.setattr(module, "BACKGROUND", tmp_path / "background.png")
    calls: list[list[str]] = []
    monkeypatch.setattr(module, "set_timezone", lambda zone: calls.append(["tz", str(zone)]))
    monkeypatch.setattr(module, "draw_background", lambda *text: calls.append(["draw", *text]))

    def run(argv, **kw) -> subprocess.CompletedProcess:
        calls.append(list(argv))
        # tigervncpasswd -f: the password's 8 obfuscated bytes; everything else says nothing.
        out = b"\x8f" * 8 if argv[:2] == [module.VNCPASSWD, "-f"] else ""
        return subprocess.CompletedProcess(argv, 0, out, "")

    monkeypatch.setattr(module.subprocess, "run", run)
    module.calls = calls  # type: ignore[attr-defined]
    module.motd = tmp_path / "motd.d" / "50-imageforge-desktop"  # type: ignore[attr-defined]
    return module


@pytest.fixture
def user(tmp_path: Path, setup, monkeypatch) -> types.SimpleNamespace:
    """The display's user, as pwd has it, with an empty home directory in the scratch tree."""
    home = tmp_path / "home" / "training"
    home.mkdir(parents=True)
    entry = types.SimpleNamespace(
        pw_name="training", pw_dir=str(home), pw_uid=os.getuid(), pw_gid=os.getgid()
    )
    setup.VNC_USERS.write_text(":1=training\n")
    monkeypatch.setattr(setup.pwd, "getpwnam", lambda name: entry)
    return entry


def desktop(block: dict | None) -> bytes:
    return guestprograms.cloud_config({"imageforge_desktop": block})


def test_user_data_overrides_the_image_defaults(setup) -> None:
    setup.DEFAULTS.write_text(json.dumps({"shutdown": {"time": "18:00"}, "autosquash": "/a"}))
    data = desktop({"attendee": 7, "autosquash": "/b"})
    assert setup.settings(data) == {
        "shutdown": {"time": "18:00"},
        "autosquash": "/b",
        "attendee": 7,
    }


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


def test_a_hostile_attendee_in_the_metadata_is_ignored(setup, capsys) -> None:
    setup.INSTANCE_DATA.write_text(json.dumps({"ds": {"meta_data": {"attendee": "$(reboot)"}}}))
    assert setup.attendee({}) is None
    assert "ignoring the metadata's attendee" in capsys.readouterr().out


def test_the_password_is_made_once_and_kept_by_a_relaunched_copy(setup) -> None:
    first, generated = setup.vnc_password({})
    assert generated and len(first) == 8 and first.isalnum()
    setup.PASSWORD.parent.mkdir()
    setup.PASSWORD.write_text(first + "\n")
    # a reboot, or a copy of this instance under a new instance id: the same password
    assert setup.vnc_password({}) == (first, False)
    assert setup.vnc_password({"vnc_password": "given-pw"}) == ("given-pw", False)


def test_a_full_boot_makes_the_password_private_and_shows_it_once(setup, user) -> None:
    old = os.umask(0)  # the files are private by how they are made, not by the umask
    try:
        assert setup.boot(desktop({"attendee": 42})) == 0
    finally:
        os.umask(old)
    password = setup.PASSWORD.read_text().strip()
    assert setup.PASSWORD.stat().st_mode & 0o777 == 0o600
    assert setup.firstboot.consoled == [f"imageforge-secret: vnc_password={password}"]
    assert setup.ATTENDEE.read_text() == "42\n"
    assert "attendee 42; VNC display :1" in setup.motd.read_text()
    assert password not in setup.motd.read_text()
    setup.firstboot.consoled.clear()
    assert setup.boot(desktop({"attendee": 42})) == 0  # the next boot: kept, not shown again
    assert setup.PASSWORD.read_text().strip() == password and not setup.firstboot.consoled


@pytest.mark.parametrize(
    ("block", "said"),
    [
        ({"vnc_password": "abc"}, "imageforge_desktop.vnc_password: must match"),
        ({"shutdown": {"time": "18:00", "timezone": "Europe/Atlantis"}}, "is not a zone of"),
        ({"shutdown": {"timezone": "../../etc/passwd"}}, "shutdown.timezone: must match"),
        ({"s3fs": {"bucket": "-o", "url": "https://a,b"}}, "imageforge_desktop.s3fs"),
        ({"geometry": "1x1; system('reboot')"}, "imageforge_desktop.geometry: must match"),
    ],
)
def test_a_wrong_value_fails_the_unit_and_changes_nothing(setup, user, block, said) -> None:
    with pytest.raises(SystemExit) as exited:
        setup.boot(desktop(block))
    assert exited.value.code == 1
    motd = setup.motd.read_text()
    assert motd.startswith("imageforge-desktop: refusing the user-data, nothing changed: ")
    assert said in motd and motd.count("\n") == 1
    assert not setup.PASSWORD.exists() and not setup.VNC_CONFIG.exists()
    assert not setup.TIMER.exists() and not setup.calls


def test_shutdown_timer_is_written_from_the_settings(setup) -> None:
    config = {"shutdown": {"time": "17:30", "timezone": "Europe/Berlin"}}
    zone = setup.timezone_file(config)
    assert zone == setup.ZONEINFO / "Europe/Berlin"
    assert setup.write_timer(config, zone) == "auto-shutdown every day at 17:30 Berlin"
    assert "OnCalendar=*-*-* 17:30:00 Europe/Berlin\n" in setup.TIMER.read_text()
    assert ["systemctl", "daemon-reload"] in setup.calls and ["tz", str(zone)] in setup.calls
    setup.calls.clear()
    setup.write_timer(config, zone)
    assert ["systemctl", "daemon-reload"] not in setup.calls  # unchanged: no reload
    assert setup.write_timer({"shutdown": None}, None) == "no auto-shutdown"
    assert not setup.TIMER.exists()


def test_a_timezone_must_be_a_zone_file_in_zoneinfo(setup, tmp_path, monkeypatch) -> None:
    zoneinfo = tmp_path / "zoneinfo"
    (zoneinfo / "Europe").mkdir(parents=True)
    (zoneinfo / "Europe" / "Berlin").write_bytes(b"TZif2...")
    (zoneinfo / "leapseconds").write_text("# not a zone\n")
    (zoneinfo / "posixrules").write_bytes(b"TZif2...")
    (zoneinfo / "localtime").symlink_to(tmp_path / "etc-localtime")  # tzdata ships this link
    (tmp_path / "etc-localtime").symlink_to(zoneinfo / "localtime")  # and then a loop
    (zoneinfo / "Outside").symlink_to(tmp_path)
    monkeypatch.setattr(setup, "ZONEINFO", zoneinfo)
    assert (
        setup.timezone_file({"shutdown": {"timezone": "Europe/Berlin"}})
        == zoneinfo / "Europe/Berlin"
    )
    for zone in (
        "Europe",
        "leapseconds",
        "posixrules",
        "localtime",
        "Outside/etc-localtime",
        "Europe/../../../etc/passwd",
        "Nowhere/City",
    ):
        with pytest.raises(setup.Refused):
            setup.timezone_file({"shutdown": {"timezone": zone}})


def test_vnc_config_never_offers_none_and_honours_localhost_only(setup, user) -> None:
    passwd = Path(user.pw_dir, *setup.VNC_PASSWD)
    text = setup.vnc_config({"vnc_localhost_only": True}, passwd)
    assert '$SecurityTypes = "VncAuth";' in text and '$localhost = "yes";' in text
    assert re.findall(r"^\$SecurityTypes = (.*);$", text, re.M) == ['"VncAuth"']
    assert not [line for line in text.splitlines() if "None" in line and line[0] != "#"]
    text = setup.vnc_config({}, passwd)
    assert '$localhost = "no";' in text and '$geometry = "1280x800";' in text


def test_vnc_config_names_the_password_file_for_every_tigervnc(setup, user) -> None:
    """TigerVNC 1.14+ keeps it in ~/.config/tigervnc, 1.12 looked in ~/.vnc: named, both read
    the same file. The path is quoted into Perl, so only a plain one is written."""
    passwd = Path(user.pw_dir, *setup.VNC_PASSWD)
    assert passwd == Path(user.pw_dir) / ".config" / "tigervnc" / "passwd"
    assert f"$vncPasswdFile = '{passwd}';\n" in setup.vnc_config({}, passwd)
    with pytest.raises(setup.Refused):
        setup.vnc_config({}, Path("/home/x'; system('reboot'); '/passwd"))


def test_the_vnc_password_goes_to_the_users_tigervnc_directory(setup, user) -> None:
    setup.install_password("s3cret12", user)
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
    setup.install_password("an0ther1", user)  # a given password replaces the file
    assert sorted(p.name for p in passwd.parent.iterdir()) == ["passwd"]


def test_the_password_is_never_written_through_a_link_the_user_made(setup, user, tmp_path):
    """Root writes into the user's home: a link there must not send it to another file."""
    victim = tmp_path / "shadow"
    victim.write_text("root:*:\n")
    config = Path(user.pw_dir, ".config", "tigervnc")
    config.mkdir(parents=True)
    (config / "passwd").symlink_to(victim)
    setup.install_password("s3cret12", user)
    assert victim.read_text() == "root:*:\n"
    assert not (config / "passwd").is_symlink() and (config / "passwd").stat().st_size == 8
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (config / "passwd").unlink()
    config.rmdir()
    config.symlink_to(elsewhere)
    with pytest.raises(OSError):
        setup.install_password("s3cret12", user)
    assert list(elsewhere.iterdir()) == []
    vnc = Path(user.pw_dir, ".vnc")  # TigerVNC 1.12's place: never written at all
    vnc.mkdir()
    (vnc / "passwd").symlink_to(victim)
    config.unlink()
    setup.install_password("s3cret12", user)
    assert victim.read_text() == "root:*:\n"


def test_a_mapping_from_user_data_changes_only_the_keys_it_gives(setup) -> None:
    setup.DEFAULTS.write_text(
        json.dumps(
            {
                "shutdown": {"time": "18:00", "timezone": "Europe/Berlin"},
                "s3fs": {"bucket": "course-data", "url": "https://s3.example.org"},
            }
        )
    )
    data = desktop(
        {
            "shutdown": {"time": "17:00"},
            "s3fs": {"bucket": "course-data", "access_key": "AK", "secret_key": "S"},
        }
    )
    merged = setup.settings(data)
    assert merged["shutdown"] == {"time": "17:00", "timezone": "Europe/Berlin"}
    assert (
        merged["s3fs"]["url"] == "https://s3.example.org" and merged["s3fs"]["access_key"] == "AK"
    )
    assert setup.settings(desktop({"shutdown": None}))["shutdown"] is None


def test_autosquash_never_mounts_over_a_parent_directory(setup, tmp_path, monkeypatch) -> None:
    source = tmp_path / "squash"
    source.mkdir()
    for name in ("..squashfs", "...squashfs", ".hidden.squashfs", "tools.squashfs"):
        (source / name).write_bytes(b"hsqs")
    monkeypatch.setattr(setup, "AUTOSQUASH_MOUNTS", tmp_path / "autosquash")
    note = setup.mount_autosquash({"autosquash": str(source)})
    assert note == f"autosquash: 1 mounted from {source} (tools)"
    targets = [c[-1] for c in setup.calls if c[0] == "mount"]
    assert targets == [str(tmp_path / "autosquash" / "tools")]


def test_a_password_file_that_cannot_be_written_fails_the_unit_in_one_line(setup, user, capsys):
    Path(user.pw_dir, ".config").symlink_to("/nonexistent")
    assert setup.boot(desktop({"attendee": 1})) == 1
    assert "cannot write the VNC password" in setup.motd.read_text()
    assert not setup.PASSWORD.exists() and not setup.VNC_CONFIG.exists()


def test_s3fs_mounts_without_suid_or_devices_and_stages_on_disk(setup) -> None:
    """Debian 13 mounts /tmp as a tmpfs: s3fs's temporary files (what it reads of a big
    squashfs) go to /var/tmp, on disk. Nothing from the bucket runs set-user-id."""
    note = setup.mount_s3fs({"s3fs": {"bucket": "course-data", "path_style": True}})
    assert note == f"s3fs: course-data at {setup.S3FS_MOUNT}"
    [argv] = [c for c in setup.calls if c[0] == "s3fs"]
    options = argv[argv.index("-o") + 1].split(",")
    assert {"tmpdir=/var/tmp", "ro", "iam_role=auto", "nosuid", "nodev"} <= set(options)
    assert argv[1] == "course-data" and not setup.S3FS_PASSWD.exists()


def test_s3fs_keys_go_to_a_file_only_root_reads(setup) -> None:
    old = os.umask(0)
    try:
        s3fs = {"bucket": "data", "access_key": "AK", "secret_key": "S/K+="}
        setup.mount_s3fs({"s3fs": s3fs})
    finally:
        os.umask(old)
    assert setup.S3FS_PASSWD.read_text() == "AK:S/K+=\n"
    assert setup.S3FS_PASSWD.stat().st_mode & 0o777 == 0o600
    [argv] = [c for c in setup.calls if c[0] == "s3fs"]
    assert f"passwd_file={setup.S3FS_PASSWD}" in argv[argv.index("-o") + 1].split(",")


def test_setup_runs_after_cloud_init_by_either_name(setup) -> None:
    """cloud-init 25.1 (Debian 13) renamed cloud-init.service to cloud-init-network.service;
    ordering after both is harmless where one is missing (Debian 12)."""
    unit = setup.firstboot.unit(setup.DESCRIPTION, setup.SETUP)
    [after] = [line for line in unit.splitlines() if line.startswith("After=")]
    assert {"cloud-init.service", "cloud-init-network.service"} <= set(after[6:].split())
    assert "ExecStart=/usr/local/sbin/imageforge-desktop-setup boot\n" in unit


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
