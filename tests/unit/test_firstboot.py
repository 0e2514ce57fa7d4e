"""The library every first-boot program shares (provisioners/common/06-firstboot.py): reading
imageforge's blocks out of any user-data cloud-init takes, and refusing what images.yml would."""

from __future__ import annotations

import gzip
import json
import os
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest

from imageforge.config import userdata

from .guestprograms import cloud_config, library

KEY = "a2V5" * 15  # 45 bytes, base64
SECRET = "Zx9/secret+KEY="


@pytest.fixture
def lib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    return library(tmp_path, monkeypatch)


def multipart(*parts: tuple[str, bytes], gzipped: bool = False) -> bytes:
    message = MIMEMultipart()
    for subtype, payload in parts:
        if gzipped:
            message.attach(MIMEApplication(gzip.compress(payload), "x-gzip"))
        else:
            message.attach(MIMEText(payload.decode(), subtype))
    return message.as_bytes()


def test_a_plain_cloud_config_block_is_read(lib) -> None:
    data = cloud_config({"imageforge_desktop": {"attendee": 7}, "packages": ["x"]})
    assert lib.settings("desktop", data) == {"attendee": 7}
    assert lib.settings("slurm", data) == {}


@pytest.mark.parametrize("gzipped", [False, True])
def test_multipart_user_data_is_read_part_by_part(lib, gzipped: bool) -> None:
    """Several tools writing user-data make a MIME multipart; gzip is the usual way to fit the
    16 KiB limit. A later cloud-config's block replaces an earlier one's."""
    script = b"#!/bin/sh\necho imageforge_desktop: {attendee: 1}\n"
    first = b"#cloud-config\nimageforge_desktop: {attendee: 1, geometry: 1024x768}\n"
    second = b"#cloud-config\nruncmd: [true]\nimageforge_desktop: {attendee: 2}\n"
    data = multipart(("x-shellscript", script), ("cloud-config", first), ("cloud-config", second))
    if gzipped:
        data = gzip.compress(data)
    assert lib.settings("desktop", data) == {"attendee": 2}
    parts = multipart(("cloud-config", first), gzipped=True)
    assert lib.settings("desktop", parts) == {"attendee": 1, "geometry": "1024x768"}


def test_a_text_cloud_config_part_needs_no_header_line(lib) -> None:
    data = multipart(("cloud-config", b"imageforge_slurm: null\n"))
    assert lib.blocks(data) == {"imageforge_slurm": None}


@pytest.mark.parametrize(
    "data", [b"", b"#!/bin/sh\ntrue\n", b"#include\nhttp://x\n", b"#cloud-config\n", b"None"]
)
def test_user_data_without_our_block_gives_nothing(lib, data: bytes) -> None:
    assert lib.settings("slurm", data) == {}


def test_a_corrupt_gzip_part_is_refused_in_one_line(lib) -> None:
    corrupt = gzip.compress(b"#cloud-config\n")[:10] + b"\xff" * 20
    for data in (
        corrupt,
        multipart(("cloud-config", b"x"), gzipped=True).replace(b"H4sI", b"H4sJ"),
    ):
        with pytest.raises(lib.BadUserData, match=r"^a gzipped user-data part does not decompress"):
            lib.settings("slurm", data)


def test_a_mime_document_is_found_by_its_version_header_anywhere_in_its_head(lib) -> None:
    data = b"X-Tool: terraform\n" + multipart(("cloud-config", b"imageforge_slurm: null\n"))
    assert lib.blocks(data) == {"imageforge_slurm": None}


def test_user_data_that_is_not_yaml_is_refused_with_its_line(lib) -> None:
    with pytest.raises(lib.BadUserData, match=r"^a cloud-config document is not YAML at line 3$"):
        lib.settings("slurm", b"#cloud-config\na: 1\nb: c: d\n")


# Hostile and wrong values: (block, the line's key path, what it must say). None of them may
# echo a value (which may be a secret), and images.yml's models refuse every one too.
HOSTILE = [
    (
        {
            "imageforge_slurm": {
                "role": "worker",
                "munge_key": KEY,
                "controller": "10.0.0.1",
                "hosts": {"localhost": "10.0.0.9"},
            }
        },
        "imageforge_slurm.hosts",
        "must not be one of localhost",
    ),
    (
        {
            "imageforge_slurm": {
                "role": "worker",
                "munge_key": KEY,
                "controller": "10.0.0.1",
                "hosts": {"ctl": "10.0.0.1\n10.6.6.6 evil"},
            }
        },
        "imageforge_slurm.hosts.ctl",
        "control characters",
    ),
    (
        {
            "imageforge_slurm": {
                "role": "worker",
                "munge_key": KEY,
                "controller": "10.0.0.1",
                "hosts": ["ctl", "10.0.0.1"],
            }
        },
        "imageforge_slurm.hosts",
        "type object",
    ),
    (
        {
            "imageforge_slurm": {
                "role": "worker",
                "munge_key": KEY,
                "controller": "10.0.0.1\nSLURMD_OPTIONS=--x",
            }
        },
        "imageforge_slurm.controller",
        "control characters",
    ),
    (
        {"imageforge_slurm": {"role": "worker", "munge_key": KEY}},
        "imageforge_slurm",
        "'controller' is a required property",
    ),
    (
        {"imageforge_slurm": {"role": "boss", "munge_key": KEY}},
        "imageforge_slurm.role",
        "controller, worker",
    ),
    (
        {"imageforge_slurm": {"role": "controller", "munge_key": "c2hvcnQ="}},
        "imageforge_slurm.munge_key",
        "at least 44",
    ),
    (
        {"imageforge_desktop": {"s3fs": {"bucket": "data", "url": "https://s3.example,suid"}}},
        "imageforge_desktop.s3fs.url",
        "match",
    ),
    (
        {"imageforge_desktop": {"s3fs": {"bucket": "-odev"}}},
        "imageforge_desktop.s3fs.bucket",
        "match",
    ),
    (
        {
            "imageforge_desktop": {
                "s3fs": {"bucket": "data", "access_key": "AK", "secret_key": SECRET + "\nroot:x"}
            }
        },
        "imageforge_desktop.s3fs.secret_key",
        "control characters",
    ),
    (
        {"imageforge_desktop": {"s3fs": {"bucket": "data", "access_key": "AK"}}},
        "imageforge_desktop.s3fs",
        "'secret_key' is a required property",
    ),
    (
        {
            "imageforge_desktop": {
                "shutdown": {"time": "18:00", "timezone": "../../../etc/passwd\nExecStart=/bin/sh"}
            }
        },
        "imageforge_desktop.shutdown.timezone",
        "control characters",
    ),
    (
        {"imageforge_desktop": {"shutdown": {"time": "25:00"}}},
        "imageforge_desktop.shutdown.time",
        "match",
    ),
    ({"imageforge_desktop": {"vnc_password": SECRET}}, "imageforge_desktop.vnc_password", "match"),
    ({"imageforge_desktop": {"attendee": "7; rm -rf /"}}, "imageforge_desktop.attendee", "match"),
    (
        {"imageforge_desktop": {"geometry": "1x1; system('reboot')"}},
        "imageforge_desktop.geometry",
        "match",
    ),
    ({"imageforge_desktop": {"atendee": 7}}, "imageforge_desktop", "unknown key 'atendee'"),
    ({"imageforge_slurmm": {}}, "the user-data", "unknown key 'imageforge_slurmm'"),
    # Python's `$` matches before a final line break; pydantic's does not: both refuse it
    (
        {
            "imageforge_slurm": {
                "role": "worker",
                "munge_key": KEY,
                "controller": "ctl",
                "hosts": {"localhost\n": "10.6.6.6"},
            }
        },
        "imageforge_slurm.hosts",
        "a key holds a control character",
    ),
    (
        {"imageforge_slurm": {"role": "controller", "munge_key": KEY, "cluster_name": "demo\n"}},
        "imageforge_slurm.cluster_name",
        "control characters",
    ),
    (
        {"imageforge_slurm": {"role": "worker", "munge_key": KEY, "controller": None}},
        "imageforge_slurm.controller",
        "must be of type string",
    ),
    (
        {"imageforge_desktop": {"s3fs": {"bucket": "data", "access_key": None, "secret_key": "x"}}},
        "imageforge_desktop.s3fs.access_key",
        "must be of type string",
    ),
    ({"imageforge_desktop": {"attendee": 7.0}}, "imageforge_desktop.attendee", "a fraction"),
    # a mistyped line makes the secret a key: never shown
    (
        {"imageforge_desktop": {"vnc_password:" + SECRET: None}},
        "imageforge_desktop",
        "unknown key '(a key that is not a plain name)'",
    ),
]


@pytest.mark.parametrize(("blocks", "where", "said"), HOSTILE)
def test_a_wrong_value_is_refused_in_one_line_without_the_value(
    lib, blocks: dict, where: str, said: str
) -> None:
    with pytest.raises(lib.BadUserData) as caught:
        lib.settings("desktop", cloud_config(blocks))
    message = str(caught.value)
    assert message.startswith(f"{where}: ") and said in message, message
    assert "\n" not in message and SECRET not in message and "evil" not in message
    with pytest.raises(ValueError):  # images.yml's verify_user_data refuses it as well
        userdata.check_blocks(blocks)


VALID = [
    {"imageforge_slurm": {"role": "controller", "munge_key": KEY}},
    {
        "imageforge_slurm": {
            "role": "worker",
            "munge_key": KEY,
            "controller": "ctl",
            "cluster_name": "demo",
            "hosts": {"ctl": "10.0.0.1", "w1": "fd00::2"},
        }
    },
    {"imageforge_desktop": {"attendee": 42, "vnc_password": "s3cret!", "shutdown": None}},
    {
        "imageforge_desktop": {
            "attendee": "team-3",
            "shutdown": {"time": "17:30", "timezone": "America/Argentina/Buenos_Aires"},
            "autosquash": "/mnt/x",
            "s3fs": {
                "bucket": "course.data",
                "url": "http://[::1]:9000/",
                "access_key": "AK",
                "secret_key": SECRET,
            },
        }
    },
    {"imageforge_desktop": None, "imageforge_slurm": None},
]


@pytest.mark.parametrize("blocks", VALID)
def test_what_images_yml_takes_an_instance_takes(lib, blocks: dict) -> None:
    userdata.check_blocks(blocks)
    for name in ("slurm", "desktop"):
        assert lib.settings(name, cloud_config(blocks)) == (blocks.get(f"imageforge_{name}") or {})


def test_refusing_says_one_line_on_the_console_and_in_motd_and_fails(lib, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        lib.refuse("imageforge-x", lib.BadUserData("imageforge_x.y: must match ^a$\x1b[2J"))
    assert exited.value.code == 1
    line = (
        "imageforge-x: refusing the user-data, nothing changed: imageforge_x.y: must match ^a$?[2J"
    )
    assert capsys.readouterr().out == line + "\n"
    assert (lib.MOTD_DIR / "50-imageforge-x").read_text() == line + "\n"


def test_a_private_file_is_never_readable_and_never_follows_a_link(lib, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    target = tmp_path / "munge.key"
    target.symlink_to(victim)
    old = os.umask(0)
    try:
        lib.write_private(target, b"k" * 32, os.getuid(), os.getgid(), 0o400)
    finally:
        os.umask(old)
    assert victim.read_text() == "keep" and not target.is_symlink()
    assert target.read_bytes() == b"k" * 32 and target.stat().st_mode & 0o777 == 0o400
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_installing_puts_the_library_and_the_schema_in_place(lib, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(lib, "LIBRARY", tmp_path / "lib" / "imageforge_firstboot.py")
    monkeypatch.setenv("IMAGEFORGE_USER_DATA_SCHEMA", json.dumps(userdata.schema()))
    assert lib.install() == 0
    assert lib.LIBRARY.read_bytes() == Path(lib.__file__).read_bytes()
    assert json.loads(lib.SCHEMA.read_text()) == userdata.schema()
    assert lib.SCHEMA.stat().st_mode & 0o777 == 0o644


def test_the_cloud_init_query_failure_is_one_line(lib, monkeypatch) -> None:
    import subprocess

    def failing(argv, **kwargs):
        return subprocess.CompletedProcess(argv, 1, b"", b"Traceback\nKeyError: 'userdata'\n")

    monkeypatch.setattr(lib.subprocess, "run", failing)
    with pytest.raises(lib.BadUserData, match=r"^cloud-init cannot give the user-data: KeyE"):
        lib.raw_user_data()
