"""--on-error=keep with a real QEMU (stopped before its firmware) in the place of the build VM
Packer leaves behind: taken over, its scratch spared by reap while it runs, then released."""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imageforge.errors import ConfigError, Interrupted
from imageforge.process import reap
from imageforge.records.record import artifacts_root
from imageforge.stages import build, keep

from ..process.processes import alive

BUILD = "20261207-101500-keep1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def left(
    scratch: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[dict]:
    """What a failed build with -on-error=abort leaves: its directory, its private scratch
    with the key, and QEMU forwarding SSH on 127.0.0.1 (unless the test is marked no_ssh)
    with the scratch on its command line."""
    directory = artifacts_root(scratch) / "stepped" / BUILD
    directory.mkdir(parents=True)
    temp = tmp_path_factory.mktemp("tmp")
    (temp / f"imageforge-{BUILD}-x1y2").mkdir(mode=0o700)
    private = reap.claim(temp / f"imageforge-{BUILD}-x1y2")
    (private / "ssh").mkdir(mode=0o700)
    key = private / "ssh" / "id_ed25519"
    key.write_text("not a real key\n")
    key.chmod(0o600)
    port = free_port()
    argv = ["qemu-system-x86_64", "-S", "-nodefaults", "-display", "none"]
    forward = (
        "" if request.node.get_closest_marker("no_ssh") else f",hostfwd=tcp:127.0.0.1:{port}-:22"
    )
    argv += ["-nic", f"user,model=virtio-net-pci{forward}"]
    argv += ["-pidfile", f"{private}/qemu.pid"]
    qemu = subprocess.Popen(argv)
    deadline = time.monotonic() + 30
    while not (private / "qemu.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        yield {"directory": directory, "scratch": private, "key": key, "port": port, "qemu": qemu}
    finally:
        qemu.kill()
        qemu.wait(timeout=30)


def test_the_vm_is_taken_over_its_scratch_spared_then_released(
    left: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    read: list[int] = []
    monkeypatch.setattr(keep, "_collect", lambda directory, vm, secrets: read.append(vm.port))
    output = ["Provisioning with shell script: 30-three.py", "proxy pass: s3cret", "exit 3"]
    message = keep.hold(
        left["directory"], left["scratch"], left["key"], "debian", output, ["s3cret"]
    )
    port = left["port"]
    assert f"-p {port}" in message and "debian@127.0.0.1" in message
    assert f"--release {BUILD}" in message and read == [port]
    kept = json.loads((left["directory"] / keep.KEPT).read_text())
    assert kept["port"] == port and kept["process"].split()[0] == str(left["qemu"].pid)
    step = left["directory"] / keep.STEP_OUTPUT
    assert "s3cret" not in step.read_text() and "30-three.py" in step.read_text()
    assert stat.S_IMODE(step.stat().st_mode) == 0o600
    # QEMU owns the scratch now: a later run's reap leaves it (and the key) while QEMU runs.
    owner = (left["scratch"] / reap.OWNER_FILE).read_text()
    assert owner == kept["process"] == reap.process_token(left["qemu"].pid)
    assert not reap.owned_here(left["scratch"])
    assert reap.reap_scratch(left["scratch"].parent) == []
    assert keep.release(left["directory"]) is True
    assert not alive(left["qemu"].pid)
    assert not left["scratch"].exists() and not (left["directory"] / keep.KEPT).exists()
    assert keep.release(left["directory"]) is False  # once


def test_the_next_build_of_the_flavor_releases_it(
    left: dict, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keep, "_collect", lambda directory, vm, secrets: None)
    keep.hold(left["directory"], left["scratch"], left["key"], "debian", [], [])
    assert keep.release_cell(scratch, "other-flavor") == []
    assert alive(left["qemu"].pid)
    assert keep.release_cell(scratch, "stepped") == [BUILD]
    assert not alive(left["qemu"].pid) and not left["key"].exists()


def test_release_by_build_id_and_its_errors(left: dict, scratch: Path, monkeypatch) -> None:
    monkeypatch.setattr(keep, "_collect", lambda directory, vm, secrets: None)
    keep.hold(left["directory"], left["scratch"], left["key"], "debian", [], [])
    for wrong in ("20261207-000000-nope", "../stepped", ".", "", "*", "2026*", "**", "[0-9]*"):
        with pytest.raises(ConfigError, match=f"kept now: {BUILD}"):
            keep.release_build(scratch, wrong)
    assert keep.release_build(scratch, BUILD) == left["directory"]
    assert not alive(left["qemu"].pid)


def test_a_vm_that_is_gone_is_not_kept(scratch: Path, tmp_path: Path) -> None:
    directory = artifacts_root(scratch) / "stepped" / BUILD
    directory.mkdir(parents=True)
    (tmp_path / f"imageforge-{BUILD}-gone").mkdir()
    private = reap.claim(tmp_path / f"imageforge-{BUILD}-gone")
    message = keep.hold(directory, private, private / "key", "debian", ["out"], [])
    assert "nothing is kept" in message
    assert not (directory / keep.KEPT).exists() and (directory / keep.STEP_OUTPUT).exists()
    assert reap.owned_here(private)  # still this run's: removed with the build's scratch


@pytest.mark.parametrize(
    ("value", "message"),
    [("later", "give cleanup or keep"), ("KEEP", "give cleanup or keep")],
)
def test_on_error_accepts_cleanup_or_keep(value: str, message: str) -> None:
    assert keep.on_error_mode("keep") and not keep.on_error_mode("cleanup")
    with pytest.raises(ConfigError, match=message):
        keep.on_error_mode(value)


@pytest.mark.parametrize("value", ["0", "-1", "169", "two", "nan"])
def test_keep_hours_is_a_positive_number_up_to_a_week(value: str) -> None:
    assert keep.keep_hours("0.5") == 0.5 and keep.keep_hours(2) == 2
    with pytest.raises(ConfigError, match="--keep-hours"):
        keep.keep_hours(value)


def test_the_tracker_keeps_the_whole_output_of_the_failing_step() -> None:
    tracker = build._ProvisionerTracker()
    lines = [
        "==> qemu.stepped: Provisioning with shell script: provisioners/test/20-two.sh",
        "    qemu.stepped: two ran",
        "==> qemu.stepped: Provisioning with shell script: provisioners/test/30-three.py",
        *[f"    qemu.stepped: line {n}" for n in range(40)],
        "==> qemu.stepped: Script exited with non-zero exit status: 3.Allowed exit codes are: [0]",
        "Build 'qemu.stepped' errored: ...",
    ]
    for line in lines:
        tracker.feed(line)
    assert tracker.output == lines[2:-1] and tracker.exit_code == 3
    assert len(tracker.lines) == 15  # the message's tail


def test_a_kept_vm_powered_off_from_inside_leaves_its_scratch_to_reap(
    left: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keep, "_collect", lambda directory, vm, secrets: None)
    keep.hold(left["directory"], left["scratch"], left["key"], "debian", [], [])
    left["qemu"].kill()
    left["qemu"].wait(timeout=30)
    assert reap.reap_scratch(left["scratch"].parent) == [left["scratch"]]
    assert keep.release(left["directory"]) is True  # the record's side, tidied
    assert not (left["directory"] / keep.KEPT).exists()


@pytest.mark.no_ssh
def test_a_vm_without_ssh_on_127_0_0_1_is_stopped_not_kept(left: dict) -> None:
    message = keep.hold(left["directory"], left["scratch"], left["key"], "debian", [], [])
    assert "no SSH port on 127.0.0.1; nothing is kept" in message
    assert not alive(left["qemu"].pid) and not (left["directory"] / keep.KEPT).exists()
    assert reap.owned_here(left["scratch"])


def test_an_interrupt_while_reading_the_journal_stops_the_vm(
    left: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(directory: Path, vm: keep.KeptVm, secrets: list[str]) -> None:
        raise Interrupted("interrupted", signum=2)

    monkeypatch.setattr(keep, "_collect", interrupted)
    with pytest.raises(Interrupted):
        keep.hold(left["directory"], left["scratch"], left["key"], "debian", [], [])
    assert not alive(left["qemu"].pid)  # never a VM that nobody owns
    assert not (left["directory"] / keep.KEPT).exists()
    assert reap.owned_here(left["scratch"])  # the build's own again: it removes it


def test_release_never_signals_a_process_that_is_not_the_kept_qemu(
    left: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keep, "_collect", lambda directory, vm, secrets: None)
    keep.hold(left["directory"], left["scratch"], left["key"], "debian", [], [])
    other = subprocess.Popen(["sleep", "60"])
    try:
        record = json.loads((left["directory"] / keep.KEPT).read_text())
        record["process"] = reap.process_token(other.pid)  # a token of a live process
        (left["directory"] / keep.KEPT).write_text(json.dumps(record))
        assert keep.release(left["directory"]) is True
        assert alive(other.pid)  # not QEMU on the build's scratch: left alone
    finally:
        other.kill()
        other.wait()
