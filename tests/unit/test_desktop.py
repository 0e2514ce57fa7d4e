"""training-desktop pieces that run without a VM: settings reach the image, the VM's forwards,
console redaction, the RFB handshake, and the guest's own setup program on a scratch tree."""

from __future__ import annotations

import json
import re
import socket
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


def test_console_secrets_are_redacted(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_text("boot\nimageforge-secret: vnc_password=Ab3dE6gH\nimageforge-desktop: ok\n")
    qemu.redact_console(log)
    assert log.read_text() == (
        "boot\nimageforge-secret: vnc_password=[redacted]\nimageforge-desktop: ok\n"
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
    calls: list[list[str]] = []
    monkeypatch.setattr(module, "_set_timezone", lambda zone: calls.append(["tz", zone]))
    monkeypatch.setattr(module.subprocess, "run", lambda argv, **kw: calls.append(list(argv)))
    module.calls = calls  # type: ignore[attr-defined]
    return module


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


def test_vnc_config_never_offers_none_and_honours_localhost_only(setup, tmp_path) -> None:
    setup.VNC_CONFIG = tmp_path / "vncserver-config-mandatory"
    setup.write_vnc_config({"vnc_localhost_only": True})
    text = setup.VNC_CONFIG.read_text()
    assert '$SecurityTypes = "VncAuth";' in text and '$localhost = "yes";' in text
    setup.write_vnc_config({"geometry": "1x1; system('reboot')"})
    text = setup.VNC_CONFIG.read_text()
    assert '$localhost = "no";' in text and '$geometry = "1280x800";' in text


def test_an_optional_step_that_fails_is_reported_not_fatal(setup) -> None:
    assert setup.attempt("the s3fs mount", lambda: 1 / 0).startswith(
        "the s3fs mount failed: ZeroDivisionError"
    )
    assert setup.attempt("autosquash", lambda config: "", {}) == ""
