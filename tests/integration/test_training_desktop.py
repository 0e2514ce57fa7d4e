"""training-desktop for real: one `invoke build`, then instances booted as a trainer starts them.

Attendee 7's instance gets its number, VNC password, shutdown time and shared data (an s3fs
bucket on moto's S3 server, reached from the guest through a QEMU guestfwd rule to 127.0.0.1,
holding a squashfs file for autosquash) from user-data. Two more instances of the same artifact
get generated passwords, which must differ and reach their owner only on the console.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import boto3
import pytest

from imageforge import vnc
from imageforge.process import qemu

from .conftest import Offline, processes_mentioning
from .guest import Guest, booted

pytestmark = pytest.mark.integration

GUEST_S3 = "10.0.2.100"  # the guest's side of the guestfwd rule to moto's S3 server
BUCKET = "course-data"
PASSWORD = "Att7-pw!"
SECRET = "/var/lib/imageforge/private/vnc-password"


@pytest.fixture(scope="module")
def built(desktop_build) -> tuple[dict, Path]:
    project, result = desktop_build
    assert result.returncode == 0, result.stderr[-4000:]
    [path] = sorted((project / "artifacts" / "training-desktop").glob("*/build.json"))
    return json.loads(path.read_text()), path.parent


def image_of(built: tuple[dict, Path]) -> Path:
    return built[1] / "image" / "training-desktop.qcow2"


def test_build_is_verified_with_a_screenshot_of_the_desktop(built) -> None:
    record, directory = built
    assert record["status"] == "verified"
    # Verified for exactly these artifacts: the binding holds each one's sha256.
    assert record["binding"]["artifacts"] == {a["path"]: a["sha256"] for a in record["artifacts"]}
    assert record["verification"]["failed"] == 0 and record["verification"]["passed"] >= 15
    screenshot = directory / "screenshot.png"
    assert screenshot.is_file()
    assert vnc.looks_like_xfce(screenshot)[0]
    assert "ATTENDEE 42" in vnc.text_on_screen(screenshot)
    # The verification instance's generated password reached its console, and the kept log
    # holds it redacted.
    console = (directory / "verify-serial.log").read_text(errors="replace")
    assert "imageforge-secret: vnc_password=[redacted]" in console
    assert re.findall(r"vnc_password=(?!\[redacted\])\S+", console) == []
    assert record["packages"]["tigervnc-standalone-server"] and record["packages"]["xfce4"]


def test_artifact_holds_no_vnc_password(built, tmp_path: Path) -> None:
    offline = Offline(image_of(built), tmp_path)
    assert "desktop.json" in offline.files("/etc/imageforge")  # the right file system
    assert offline.files("/var/lib/imageforge/private") == {}
    assert "attendee" not in offline.files("/etc/imageforge")
    assert "passwd" not in offline.files("/home/training/.config/tigervnc")
    assert "passwd" not in offline.files("/home/training/.vnc")  # TigerVNC before 1.14
    assert "passwd-s3fs" not in offline.files("/etc")
    assert "background.png" not in offline.files("/var/lib/imageforge/desktop")


@pytest.fixture(scope="module")
def shared_bucket(moto_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A course bucket on moto's S3 server: one object and one squashfs file in autosquash/."""
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_server,
        region_name="us-east-1",
        aws_access_key_id="AKIAIMAGEFORGETEST00",
        aws_secret_access_key="imageforge-test-secret",
    )
    s3.create_bucket(Bucket=BUCKET)
    contents = {"hello": "reference data for the course\n", "readme": "bigUglyPipeline 0.0.4\n"}
    s3.put_object(Bucket=BUCKET, Key="hello.txt", Body=contents["hello"].encode())
    tree = tmp_path_factory.mktemp("pipeline")
    tree.chmod(0o755)  # as a pipeline is packed for every user (pytest's directories are 0700)
    (tree / "README").write_text(contents["readme"])
    squashfs = tree.parent / "bigUglyPipeline.squashfs"
    subprocess.run(["mksquashfs", tree, squashfs, "-quiet", "-noappend", "-all-root"], check=True)
    s3.put_object(
        Bucket=BUCKET, Key="autosquash/bigUglyPipeline.squashfs", Body=squashfs.read_bytes()
    )
    return contents


@pytest.fixture(scope="module")
def attendee_seven(
    built, shared_bucket, moto_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Guest, int]]:
    vnc_port = qemu.free_port()
    s3_port = urlparse(moto_server).port
    user_data = {
        "imageforge_desktop": {
            "attendee": 7,
            "vnc_password": PASSWORD,
            "shutdown": {"time": "17:30", "timezone": "Europe/Berlin"},
            "s3fs": {
                "bucket": BUCKET,
                "url": f"http://{GUEST_S3}",
                "path_style": True,
                "access_key": "AKIAIMAGEFORGETEST00",
                "secret_key": "imageforge-test-secret",
            },
            "autosquash": "/mnt/s3fs/autosquash",
        }
    }
    with booted(
        image_of(built),
        tmp_path_factory.mktemp("attendee-7"),
        instance_id="attendee-7",
        user_data=user_data,
        forwards={5901: vnc_port},
        guest_commands=((f"{GUEST_S3}:80", f"socat - TCP:127.0.0.1:{s3_port}"),),
    ) as guest:
        guest.ssh("systemctl is-system-running --wait", timeout=300)
        yield guest, vnc_port


def test_user_data_password_opens_attendee_sevens_desktop(attendee_seven, tmp_path) -> None:
    _, port = attendee_seven
    shot = tmp_path / "seven.png"
    deadline, text = time.monotonic() + 300, ""
    while time.monotonic() < deadline:
        ok, messages = vnc.capture(port, PASSWORD, shot, timeout=30)
        assert ok or not vnc.authentication_refused(messages), messages
        if ok and vnc.looks_like_xfce(shot)[0]:
            text = vnc.text_on_screen(shot)
            if "ATTENDEE 7" in text:
                break
        time.sleep(5)
    assert "ATTENDEE 7" in text, text


def test_no_password_and_a_wrong_one_are_refused(attendee_seven, tmp_path) -> None:
    _, port = attendee_seven
    offered = vnc.handshake(port)
    assert offered.security_types == (vnc.SECURITY_VNC_AUTH,) and not offered.accepted
    ok, messages = vnc.capture(port, "Att7-pw?", tmp_path / "wrong.png", timeout=30)
    assert not ok and vnc.authentication_refused(messages), messages


def test_a_given_password_is_never_printed(attendee_seven) -> None:
    guest, _ = attendee_seven
    assert "imageforge-secret" not in guest.vm.console() and guest.vm.secrets == {}
    assert guest.output(f"sudo cat {SECRET}").strip() == PASSWORD


def test_user_data_overrides_the_shutdown_time_and_timezone(attendee_seven) -> None:
    guest, _ = attendee_seven
    timer = guest.output("systemctl show imageforge-autoshutdown.timer -p TimersCalendar")
    assert "OnCalendar=*-*-* 17:30:00 Europe/Berlin" in timer
    assert guest.output("systemctl is-active imageforge-autoshutdown.timer").strip() == "active"
    assert guest.output("cat /etc/timezone").strip() == "Europe/Berlin"


def test_prompt_shows_the_attendee_number(attendee_seven) -> None:
    guest, _ = attendee_seven
    prompt = guest.output("""sudo -u training -i bash -ic 'printf "%s" "${PS1@P}"'""")
    assert prompt.startswith("[attendee 7] ")


def test_s3fs_reads_an_object_from_the_bucket(attendee_seven, shared_bucket) -> None:
    guest, _ = attendee_seven
    assert guest.output("findmnt -no FSTYPE /mnt/s3fs").strip() == "fuse.s3fs"
    assert guest.output("sudo -u training cat /mnt/s3fs/hello.txt") == shared_bucket["hello"]


def test_autosquash_mounts_the_buckets_squashfs_read_only(attendee_seven, shared_bucket) -> None:
    guest, _ = attendee_seven
    mount = guest.output("findmnt -no FSTYPE,OPTIONS /mnt/autosquash/bigUglyPipeline").split()
    assert mount[0] == "squashfs" and "ro" in mount[1].split(",")
    readme = guest.output("sudo -u training cat /mnt/autosquash/bigUglyPipeline/README")
    assert readme == shared_bucket["readme"]


def test_two_boots_of_one_artifact_generate_different_passwords_a_relaunch_keeps_its_own(
    built, tmp_path
) -> None:
    """The verification boot kept its password's digest; a second boot makes another one. A
    relaunched copy of that instance's disk (a new instance id) keeps the password and the
    attendee's files; only the machine's own keys are new."""
    first = json.loads((image_of(built).parents[1] / "instance-secrets.json").read_text())
    with booted(image_of(built), tmp_path / "twin", instance_id="twin", user_data={}) as guest:
        guest.ssh("systemctl is-system-running --wait", timeout=300)
        password = guest.output(f"sudo cat {SECRET}").strip()
        # Its owner reads it on the console, as a cloud's console output shows it; the log
        # of that console never holds it, not even while the VM runs.
        assert guest.vm.secrets == {"vnc_password": password}
        assert "imageforge-secret: vnc_password=[redacted]" in guest.vm.console()
        assert password not in guest.vm.console()
        assert guest.vm.serial_log.stat().st_mode & 0o777 == 0o600
        assert guest.output("sudo stat -c '%U %a' " + SECRET).split() == ["root", "600"]
        guest.output("echo results > /tmp/r && sudo install -o training /tmp/r ~training/notes")
        host_key = guest.output("cat /etc/ssh/ssh_host_ed25519_key.pub")
        guest.ssh("sudo sync", timeout=60)
    assert password not in (tmp_path / "twin" / "serial.log").read_text(errors="replace")
    assert hashlib.sha256(password.encode()).hexdigest() != first["vnc_password"]
    # The relaunch, its attendee number from a gzipped multipart user-data.
    with booted(
        tmp_path / "twin" / "overlay.qcow2",
        tmp_path / "relaunch",
        instance_id="twin-copy",
        user_data={"imageforge_desktop": {"attendee": 8}},
        multipart=True,
    ) as guest:
        guest.ssh("systemctl is-system-running --wait", timeout=300)
        kept = guest.output(f"sudo cat {SECRET}").strip()
        notes = guest.output("sudo cat ~training/notes").strip()
        attendee = guest.output("cat /etc/imageforge/attendee").strip()
        new_host_key = guest.output("cat /etc/ssh/ssh_host_ed25519_key.pub")
        assert guest.vm.secrets == {}, "a kept password is not announced again"
    assert (kept, notes, attendee) == (password, "results", "8")
    assert new_host_key != host_key, "the relaunch kept the old host key"
    assert processes_mentioning(str(tmp_path)) == []
