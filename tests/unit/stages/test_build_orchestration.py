"""build and verify orchestration with a fake runner and a fake cloud: reuse, abandon,
interrupt and lock, in milliseconds. Packer, QEMU and the layer never run here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imageforge import clouds, config
from imageforge.clouds.common import BuildEnv
from imageforge.config import matrix
from imageforge.errors import CommandError, ImageforgeError, Interrupted
from imageforge.process import locks, qemu, runner
from imageforge.records import state
from imageforge.stages import build, verify
from tests.fakes.runner import FakeRunner

from ..conftest import write


class FakeLocal:
    """The real local source for rendering; a made-up layer and environment for the build."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def base_image(self, project: Any, cell: Any, *, refresh: bool = False) -> dict[str, Any]:
        return {"path": "/layer.qcow2", "sha256": "1" * 64, "packages": {"munge": "0.5"}}

    def build_env(self, project: Any, cell: Any, build_id: str, scratch: Path, key: Any):
        return BuildEnv(
            env={"PKR_VAR_seed_iso": str(scratch / "seed.iso")},
            facts={"accelerator": "tcg", "qemu_version": "7.2"},
        )


def packer_makes_an_image(argv: list[str], kwargs: dict[str, Any]) -> str:
    """What a successful `packer build` leaves: the image and the manifest."""
    directory = Path(kwargs["env"]["PKR_VAR_artifact_dir"])
    (directory / "image").mkdir()
    (directory / "image" / "a.qcow2").write_bytes(b"QFI\xfb an image")
    (directory / "manifest.json").write_text(json.dumps({"builds": [{"artifact_id": "a"}]}))
    return "Build 'a' finished"


def flattened(argv: list[str], kwargs: dict[str, Any]) -> str:
    """What `qemu-img convert` of Packer's overlay leaves: the artifact (a copy here)."""
    shutil.copyfile(argv[-2], argv[-1])
    return ""


@pytest.fixture
def fake(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> FakeRunner:
    real_run = runner.run
    monkeypatch.setattr(qemu, "probe_accelerator", lambda requested="auto": "tcg")
    fake = FakeRunner().on("packer", "version", answer="Packer v1.6.6")
    fake.on("qemu-img", "convert", answer=flattened)
    fake.on("git", answer=CommandError(["git"], 128, ["not a git repository"]))
    for real in (("ssh-keygen",), ("packer", "fmt")):  # quick, local, and part of the result
        fake.on(*real, answer=lambda argv, kwargs: real_run(argv, **kwargs).output)
    monkeypatch.setattr(runner, "run", fake)
    local = FakeLocal(clouds.get("local"))
    monkeypatch.setattr(clouds, "get", lambda name: local)
    build.packer.installed_version.cache_clear()
    write(scratch, "flavors:\n  a:\n    packages: [munge]\n")
    return fake


def cell(scratch: Path) -> tuple[config.Project, matrix.Cell]:
    project = config.load(scratch / "images.yml")
    return project, matrix.find(project, "a", "local")


def run_build(scratch: Path, **kwargs: Any) -> state.BuildRecord:
    project, the_cell = cell(scratch)
    return build.build(project, the_cell, verify=False, packer_version="1.6.6", **kwargs)


def test_a_build_renders_into_its_own_directory_and_records_its_artifacts(
    scratch: Path, fake: FakeRunner
) -> None:
    fake.on("packer", "build", answer=packer_makes_an_image)
    record = run_build(scratch)
    [packer_build] = fake.ran("packer", "build")
    assert packer_build[1:] == [
        "build",
        "-color=false",
        "-on-error=cleanup",
        str(record.directory / "packer"),
    ]
    assert (record.directory / "packer" / "source.pkr.hcl").is_file()
    assert record.status == "built" and record.accelerator == "tcg"
    assert record.os == "debian-13"  # the cell's base OS (the default)
    assert [a.path for a in record.artifacts] == ["image/a.qcow2", "manifest.json"]
    assert state.load(record.directory) == record
    assert record.build_public_key.startswith("ssh-ed25519 ")


def test_a_verified_build_is_reused_until_its_image_changes(
    scratch: Path, fake: FakeRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.on("packer", "build", answer=packer_makes_an_image)
    first = run_build(scratch)
    first = state.verification_done(first, {"passed": 5, "failed": 0, "errors": 0})
    assert run_build(scratch) == first
    assert len(fake.ran("packer", "build")) == 1
    assert len(list((scratch / "artifacts" / "a").iterdir())) == 2  # the build and its lock
    image = first.directory / "image" / "a.qcow2"
    image.write_bytes(image.read_bytes().upper())  # same size, other bytes
    second = run_build(scratch)
    assert second.id != first.id and len(fake.ran("packer", "build")) == 2


def test_a_failed_build_keeps_its_record_and_logs_only(scratch: Path, fake: FakeRunner) -> None:
    def fails(argv: list[str], kwargs: dict[str, Any]) -> str:
        packer_makes_an_image(argv, kwargs)  # half an output, then an error
        (Path(kwargs["env"]["PKR_VAR_artifact_dir"]) / "build.log").write_text("log\n")
        raise CommandError(argv, 1, ["Script exited with non-zero exit status: 2"])

    fake.on("packer", "build", answer=fails)
    with pytest.raises(build.BuildFailed):
        run_build(scratch)
    [record] = state.records(scratch, "a")
    assert record.status == "failed" and record.artifacts == []
    assert sorted(p.name for p in record.directory.iterdir()) == [
        "build.json",
        "build.log",
        "packer",
        "serial.log",  # the build VM's console, made private before QEMU writes to it
    ]
    assert record.directory.stat().st_mode & 0o777 == 0o750
    assert (record.directory / "serial.log").stat().st_mode & 0o777 == 0o600
    assert not locks.held(scratch, "a", "local")


def test_an_interrupted_build_is_recorded_as_interrupted(scratch: Path, fake: FakeRunner) -> None:
    fake.on("packer", "build", answer=Interrupted("SIGTERM"))
    with pytest.raises(Interrupted, match="interrupted; nothing of it is left running"):
        run_build(scratch)
    [record] = state.records(scratch, "a")
    assert record.status == "interrupted" and record.error == "stopped by the user"


def test_a_second_build_of_the_cell_is_refused_while_one_runs(
    scratch: Path, fake: FakeRunner
) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from imageforge.process import "
            "locks\nwith locks.cell(Path('.'), 'a', 'local', 'build X'):\n print('held', "
            "flush=True); sys.stdin.read()",
        ],
        cwd=scratch,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(ImageforgeError, match=r"a on local is busy: build X"):
            run_build(scratch)
    finally:
        holder.kill()
        holder.wait()
    assert fake.ran("packer", "build") == []
    assert [p.name for p in (scratch / "artifacts" / "a").iterdir()] == [".local.lock"]


def test_verification_outcome_decides_and_binds(
    scratch: Path, fake: FakeRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.on("packer", "build", answer=packer_makes_an_image)
    record = run_build(scratch)
    project, the_cell = cell(scratch)
    outcomes = iter(
        [
            {"passed": 1, "failed": 1, "errors": 0, "skipped": 0, "failures": ["test_ssh"]},
            {"passed": 2, "failed": 0, "errors": 0, "skipped": 0, "failures": []},
        ]
    )
    monkeypatch.setattr(verify, "_run_checks", lambda *args: next(outcomes))
    with pytest.raises(ImageforgeError, match="failed verification: test_ssh"):
        verify.verify(project, the_cell, record)
    failed = state.load(record.directory)
    assert failed.status == "failed" and failed.binding is None
    verified = verify.verify(project, the_cell, failed)
    assert verified.verified and verified.binding is not None
    assert verified.binding.artifacts["image/a.qcow2"] == verified.artifacts[0].sha256


def test_verification_refuses_an_image_changed_since_the_build(
    scratch: Path, fake: FakeRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.on("packer", "build", answer=packer_makes_an_image)
    record = run_build(scratch)
    (record.directory / "image" / "a.qcow2").write_bytes(b"QFI\xfb AN IMAGE")
    monkeypatch.setattr(verify, "_run_checks", lambda *args: pytest.fail("booted"))
    project, the_cell = cell(scratch)
    with pytest.raises(ImageforgeError, match="changed since it was built"):
        verify.verify(project, the_cell, record)
