"""The Vagrant box's account and metadata, the box catalog, and `invoke vagrant`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imageforge import config
from imageforge.config import matrix
from imageforge.errors import ImageforgeError
from imageforge.process import qemu
from imageforge.records import provenance, signingkeys, state
from imageforge.stages import attest, vagrantbox
from imageforge.tools import vagrantcatalog
from tests.records import make_record

from ..conftest import write

ETC = {
    "passwd": "root:x:0:0:root:/root:/bin/bash\ndebian:x:1000:1000::/home/debian:/bin/bash\n",
    "shadow": "root:*:19000:0:99999:7:::\ndebian:!:19000:0:99999:7:::\n",
    "group": "root:x:0:\nsudo:x:27:debian\nshadow:x:42:\ndebian:x:1000:\nusers:x:1001:\n",
    "gshadow": "root:*::\nsudo:*::debian\ndebian:!::\n",
}
BOX = b"a box's bytes"


def test_the_vagrant_account_gets_free_ids_sudo_and_no_password() -> None:
    changed, account = vagrantbox.add_account(ETC)
    assert account == vagrantbox.Account(1001, 1002)  # 1000 is taken; group 1001 is too
    assert changed["passwd"].endswith("vagrant:x:1001:1002:Vagrant:/home/vagrant:/bin/bash\n")
    assert "sudo:x:27:debian,vagrant\n" in changed["group"]
    assert changed["group"].endswith("vagrant:x:1002:\n")
    assert changed["shadow"].endswith("vagrant:*:19000:0:99999:7:::\n")  # no password matches
    assert changed["passwd"].startswith(ETC["passwd"])  # nothing else changes


def test_an_image_that_has_a_vagrant_user_already_is_refused() -> None:
    etc = {**ETC, "passwd": ETC["passwd"] + "vagrant:x:1005:1005::/home/vagrant:/bin/sh\n"}
    with pytest.raises(ImageforgeError, match="already has a 'vagrant' entry"):
        vagrantbox.add_account(etc)


def test_debugfs_requests_set_modes_and_owners(tmp_path: Path) -> None:
    (tmp_path / "group").write_text(ETC["group"])
    requests = vagrantbox.debugfs_requests(
        tmp_path, vagrantbox.Account(1001, 1002), Path("key.pub")
    )
    assert "sif /etc/shadow gid 42" in requests
    assert "sif /etc/sudoers.d/vagrant mode 0100440" in requests
    assert "sif /home/vagrant/.ssh/authorized_keys mode 0100600" in requests
    assert "sif /home/vagrant/.ssh/authorized_keys uid 1001" in requests
    assert requests.index("mkdir /home/vagrant") < requests.index("mkdir /home/vagrant/.ssh")


def test_box_metadata_rounds_the_virtual_size_up_to_whole_gib() -> None:
    assert vagrantbox.metadata(8 * 2**30) == {
        "provider": "libvirt",
        "format": "qcow2",
        "virtual_size": 8,
    }
    assert vagrantbox.metadata(8 * 2**30 + 1)["virtual_size"] == 9


def test_the_embedded_vagrantfile_does_not_force_emulation() -> None:
    text = (Path(__file__).parents[3] / vagrantbox.BOX_VAGRANTFILE).read_text()
    assert "/dev/kvm" in text and 'libvirt.driver = "qemu"\n' not in text


def boxed(artifacts: Path, build_id: str, data: bytes = BOX):
    record = make_record(artifacts, build_id=build_id)
    box = record.directory / "slurm-node.box"
    box.write_bytes(data)
    return state.derived(record, [state.describe(box, record.directory)], {"box": 1.0})


def test_catalog_versions_come_from_builds_and_only_grow(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    first = boxed(artifacts, "20260101-093005-abcdef0-000001")
    out = tmp_path / "catalog"
    path, added = vagrantcatalog.write([first], "slurm-node", "imageforge/slurm-node", out)
    assert added == ["20260101.93005"]
    data = json.loads(path.read_text())
    [provider] = data["versions"][0]["providers"]
    assert provider == {
        "name": "libvirt",
        "url": (out / "slurm-node" / "20260101.93005" / "slurm-node.box").resolve().as_uri(),
        "checksum_type": "sha256",
        "checksum": state.sha256(first.directory / "slurm-node.box"),
    }
    second = boxed(artifacts, "20260102-000000-abcdef0-000002", b"another box")
    _, added = vagrantcatalog.write(
        [first, second], "slurm-node", "imageforge/slurm-node", out, "https://boxes.example/v"
    )
    assert added == ["20260102.0"]
    versions = json.loads(path.read_text())["versions"]
    assert [v["version"] for v in versions] == ["20260101.93005", "20260102.0"]
    assert versions[0]["providers"][0]["url"].startswith("file://")  # never rewritten
    assert versions[1]["providers"][0]["url"] == (
        "https://boxes.example/v/slurm-node/20260102.0/slurm-node.box"
    )


def test_a_published_version_is_never_rewritten_with_another_box(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    record = boxed(artifacts, "20260101-000000-abcdef0-000001")
    out = tmp_path / "catalog"
    path, _ = vagrantcatalog.write([record], "slurm-node", "imageforge/slurm-node", out)
    data = json.loads(path.read_text())
    data["versions"][0]["providers"][0]["checksum"] = "0" * 64
    path.write_text(json.dumps(data))
    with pytest.raises(ImageforgeError, match="never rewritten"):
        vagrantcatalog.write([record], "slurm-node", "imageforge/slurm-node", out)


def test_a_changed_or_unverified_box_is_not_catalogued(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    record = boxed(artifacts, "20260101-000000-abcdef0-000001")
    (record.directory / "slurm-node.box").write_bytes(b"tampered")
    unverified = make_record(artifacts, build_id="20260102-000000-abcdef0-000002", status="failed")
    assert vagrantcatalog.entries([record, unverified]) == []


def test_invoke_vagrant_refuses_unknown_actions_and_worker_counts(scratch: Path) -> None:
    write(scratch, "flavors:\n  slurm-node: {}\nmatrix:\n  clouds: [local]\n")
    (scratch / "tasks.py").write_text((Path(__file__).parents[3] / "tasks.py").read_text())

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "invoke", "vagrant", *args],
            cwd=scratch,
            capture_output=True,
            text=True,
        )

    for args, message in (
        (("publish",), "unknown action 'publish'; use one of: catalog, seeds"),
        (("seeds", "--workers", "0"), "--workers"),
        (("seeds", "--workers", "99"), "--workers must be 1 to 8"),
        (("catalog", "--base-url", "javascript:alert(1)"), "not a URL to serve boxes from"),
        (("catalog", "--base-url", "https://a b/"), "not a URL to serve boxes from"),
        (("catalog", "--base-url", "https:///boxes"), "not a URL to serve boxes from"),
        (("catalog", "--base-url", "https://ada:pw@boxes.example/"), "holds credentials"),
        (("catalog", "--base-url", "https://token@boxes.example/"), "holds credentials"),
        (("catalog", "--base-url", "http://:pw@boxes.example/"), "holds credentials"),
    ):
        done = run(*args)
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    done = run("seeds", "--workers", "2", "--output", "seeds")
    assert done.returncode == 0, done.stderr
    seeds = sorted(p.name for p in (scratch / "seeds").iterdir())
    assert seeds == ["ctl.iso", "worker1.iso", "worker2.iso"]
    assert all((scratch / "seeds" / s).stat().st_mode & 0o077 == 0 for s in seeds)
    assert (scratch / "seeds").stat().st_mode & 0o777 == 0o711  # made here: traversable
    # a directory of the user's keeps its mode, and is told why vagrant up would wait
    mine = scratch / "mine"
    mine.mkdir(mode=0o700)
    done = run("seeds", "--output", "mine")
    assert done.returncode == 0, done.stderr
    assert mine.stat().st_mode & 0o777 == 0o700
    assert "is not traversable by other users" in done.stderr


def test_seed_isos_are_private_from_the_first_byte_and_follow_no_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    modes = []
    real_open = os.open

    def watching(path, flags, mode=0o777, *args, **kwargs):
        modes.append((Path(path).name, flags, mode))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", watching)
    seed = qemu.make_seed(tmp_path / "s.iso", user_data="#cloud-config\n", meta_data="a: b\n")
    monkeypatch.undo()
    assert seed.stat().st_mode & 0o777 == 0o600
    [(_, flags, mode)] = [m for m in modes if m[0] == "s.iso.partial"]
    assert mode == 0o600 and flags & os.O_EXCL and flags & os.O_NOFOLLOW
    # a link planted where the partial file goes is replaced, never written through
    target = tmp_path / "victim"
    target.write_text("keep")
    (tmp_path / "t.iso.partial").symlink_to(target)
    qemu.make_seed(tmp_path / "t.iso", user_data="#cloud-config\n", meta_data="a: b\n")
    assert target.read_text() == "keep"


def test_plain_http_base_url_for_a_remote_host_is_warned_about(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from imageforge.tasks.vagrant import check_base_url

    check_base_url("http://127.0.0.1:8000/boxes")
    check_base_url("https://boxes.example/")
    assert capsys.readouterr().err == ""
    check_base_url("http://boxes.example/")
    assert "plain http:// for boxes.example" in capsys.readouterr().err


def test_the_catalog_lists_each_versions_provenance_beside_its_box(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    unsigned = boxed(artifacts, "20260101-000000-abcdef0-000001")
    out = tmp_path / "catalog"
    path, _ = vagrantcatalog.write([unsigned], "slurm-node", "imageforge/slurm-node", out)
    assert "provenance" not in json.loads(path.read_text())["versions"][0]
    envelope = unsigned.directory / provenance.FILE
    envelope.write_text('{"payloadType": "stand-in"}\n')
    signed = boxed(artifacts, "20260102-000000-abcdef0-000002", b"another box")
    (signed.directory / provenance.FILE).write_text('{"payloadType": "signed"}\n')
    vagrantcatalog.write(
        [unsigned, signed], "slurm-node", "imageforge/slurm-node", out, "https://b.example"
    )
    versions = json.loads(path.read_text())["versions"]
    assert [v.get("provenance") for v in versions] == [
        f"https://b.example/slurm-node/{v}/{provenance.FILE}" for v in ("20260101.0", "20260102.0")
    ]
    assert (out / "slurm-node/20260102.0" / provenance.FILE).read_text() == (
        '{"payloadType": "signed"}\n'
    )


def test_under_require_signed_only_boxes_whose_provenance_verifies_are_catalogued(
    scratch: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    write(scratch, "publish:\n  require_signed: true\nflavors:\n  slurm-node: {}\n")
    (scratch / "tasks.py").write_text((Path(__file__).parents[3] / "tasks.py").read_text())
    monkeypatch.setenv("IMAGEFORGE_SIGNING_KEY", str(tmp_path_factory.mktemp("k") / "key"))
    signingkeys.generate(signingkeys.private_path())
    unsigned = boxed(scratch / "artifacts", "20260101-000000-abcdef0-000001")
    signed = boxed(scratch / "artifacts", "20260102-000000-abcdef0-000002", b"another box")
    images = config.load(scratch / "images.yml")
    attest.attest(images, matrix.find(images, "slurm-node", "local"), signed)
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "vagrant", "catalog"],
        cwd=scratch, capture_output=True, text=True, env=os.environ.copy(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"build {unsigned.id} is not catalogued (require_signed)" in done.stderr
    catalog = scratch / "artifacts/vagrant/slurm-node/metadata.json"
    versions = json.loads(catalog.read_text())["versions"]
    assert [v["version"] for v in versions] == ["20260102.0"]
    assert versions[0]["provenance"].endswith(f"/20260102.0/{provenance.FILE}")
