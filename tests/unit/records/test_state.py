"""The build record: strict loading, the status machine, and verification bound to content."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imageforge.errors import ImageforgeError
from imageforge.process import locks
from imageforge.records import buildinfo, state
from tests.records import PASSED, make_record


def edit(record: state.BuildRecord, **changes: object) -> None:
    path = record.directory / state.RECORD
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_a_string_in_place_of_a_status_or_a_stray_field_is_refused(tmp_path: Path) -> None:
    record = make_record(tmp_path)
    edit(record, status="VERIFIED")
    with pytest.raises(ImageforgeError, match=r"build.json: not a valid build record: status"):
        state.load(record.directory)
    edit(record, status="verified", verified="yes")  # the old, unchecked flag
    with pytest.raises(ImageforgeError, match="verified: Extra inputs are not permitted"):
        state.load(record.directory)


def test_a_corrupt_record_is_reported_and_never_half_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = make_record(tmp_path / "artifacts", build_id="20260101-000000-abcdef0-000001")
    bad = make_record(tmp_path / "artifacts", build_id="20260101-000000-abcdef0-000002")
    (bad.directory / state.RECORD).write_text("{not json")
    assert [r.id for r in state.records(tmp_path, "slurm-node")] == [good.id]
    assert f"{bad.directory / state.RECORD}: not a valid build record" in capsys.readouterr().err
    with pytest.raises(ImageforgeError, match="not a valid build record"):
        state.find(tmp_path, "slurm-node", "local", bad.id)
    assert state.find(tmp_path, "slurm-node", "local", None) == good


def test_the_base_os_is_recorded_and_a_record_from_before_it_still_loads(tmp_path: Path) -> None:
    record = make_record(tmp_path, cloud="aws", artifact_ids={"eu-west-1": "ami-1"}, os="debian-13")
    assert state.load(record.directory).os == "debian-13"
    path = record.directory / state.RECORD
    data = json.loads(path.read_text())
    for key in ("os", "settings", "python_packages", "derived", "copies"):  # added over time
        del data[key]
    path.write_text(json.dumps(data))
    older = state.load(record.directory)
    assert older.os == "" and older.verified
    published = state.published(older, "aws", "public", [], {})  # transitions still work
    assert state.load(published.directory).os == ""


def test_the_record_is_frozen_and_changes_only_through_transitions(tmp_path: Path) -> None:
    record = make_record(tmp_path, status="building")
    with pytest.raises(ValueError):
        record.status = "verified"  # type: ignore[misc]
    with pytest.raises(ImageforgeError, match="is building; it cannot become verified"):
        state.verification_done(record, PASSED)
    interrupted = state.abandoned(record, "interrupted", "stopped")
    with pytest.raises(ImageforgeError, match="is interrupted; it cannot become built"):
        state.built(interrupted, [], {}, {})
    assert state.load(record.directory).status == "interrupted"


def test_verification_binds_to_the_artifacts_sha256(tmp_path: Path) -> None:
    record = make_record(tmp_path)
    assert record.verified and state.unbound_reason(record) is None
    image = record.directory / record.artifacts[0].path
    data = bytearray(image.read_bytes())
    data[-1] ^= 1  # same size, other content
    image.write_bytes(bytes(data))
    assert "changed since it was built (sha256 differs)" in str(state.unbound_reason(record))
    with pytest.raises(ImageforgeError, match=r"is not verified: .*sha256 differs"):
        state.require_bound(record)
    with pytest.raises(ImageforgeError, match="sha256 differs"):
        state.published(record, "openstack", "public", [], {})


def test_a_modified_image_of_the_same_size_is_not_reused(tmp_path: Path) -> None:
    record = make_record(tmp_path / "artifacts", content_hash="c1")
    assert state.reusable(tmp_path, "slurm-node", "local", "c1") == record
    image = record.directory / record.artifacts[0].path
    image.write_bytes(image.read_bytes().replace(b"test", b"TEST"))
    assert state.reusable(tmp_path, "slurm-node", "local", "c1") is None


def test_cloud_verification_binds_to_the_image_ids_recorded_at_build_time(tmp_path: Path) -> None:
    ids = {"us-east-1": "ami-0123456789abcdef0"}
    record = make_record(tmp_path, cloud="aws", artifact_ids=ids)
    assert record.binding is not None and record.binding.image_ids == ids
    edit(record, artifact_ids={"us-east-1": "ami-0fedcba9876543210"})
    swapped = state.load(record.directory)
    assert swapped.status == "verified"
    assert state.unbound_reason(swapped) == "its image ids differ from the ones that were verified"


def test_a_failed_verification_is_not_publishable_and_says_why(tmp_path: Path) -> None:
    record = make_record(tmp_path, status="failed")
    with pytest.raises(ImageforgeError, match="these checks failed: test_x"):
        state.require_bound(record)
    with pytest.raises(ImageforgeError, match="never verified"):
        state.require_bound(
            make_record(tmp_path, status="built", build_id="20260101-000000-abcdef0-000003")
        )


def test_publication_is_kept_per_place(tmp_path: Path) -> None:
    record = make_record(tmp_path, cloud="aws", artifact_ids={"eu-west-1": "ami-1"})
    record = state.published(record, "aws", "public", [{"where": "eu-west-1"}], {"eu-west-1": 1})
    assert record.added("aws") == {"eu-west-1": 1} and record.added("gcp") == {}
    record = state.published(record, "aws", None, [], {}, revoked=True)
    assert state.load(record.directory).published["aws"].status == "revoked"


def test_build_ids_never_collide_within_one_second(tmp_path: Path) -> None:
    now = buildinfo.dt.datetime(2026, 1, 1, tzinfo=buildinfo.dt.UTC)
    ids = {buildinfo.new_build_id(tmp_path, now) for _ in range(500)}
    assert len(ids) == 500
    for build_id in ids:
        assert state.BuildRecord.model_fields["id"].metadata  # the pattern is enforced
        state.BuildRecord(id=build_id, flavor="a", cloud="gcp")
        assert len(f"imageforge-training-desktop-{build_id}") <= 63  # a GCE image name


HOLDER = """
import sys
from pathlib import Path
from imageforge.process import locks
with locks.cell(Path(sys.argv[1]), "a", "local", "build 1"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_build_of_a_cell_is_refused_while_another_process_holds_it(
    tmp_path: Path,
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert locks.held(tmp_path, "a", "local")
        busy = r"a on local is busy: build 1 \(pid \d+\)"
        with pytest.raises(ImageforgeError, match=busy), locks.cell(tmp_path, "a", "local", "2"):
            pass
        # Another cell is free, and a cell's lock is re-entrant (build, then its verification).
        with locks.cell(tmp_path, "a", "gcp", "3"), locks.cell(tmp_path, "a", "gcp", "verify"):
            pass
    finally:
        holder.kill()  # however it dies, the kernel frees the lock
        holder.wait()
    assert not locks.held(tmp_path, "a", "local")
    with locks.cell(tmp_path, "a", "local", "build 2"):
        pass


def test_records_left_building_by_a_dead_run_become_interrupted(tmp_path: Path) -> None:
    stuck = make_record(tmp_path / "artifacts", status="building")
    assert state.reap_stale(tmp_path) == [stuck.id]
    assert state.load(stuck.directory).status == "interrupted"
    running = make_record(
        tmp_path / "artifacts", status="building", build_id="20260101-000000-abcdef0-000009"
    )
    with locks.cell(tmp_path, "slurm-node", "local", "build"):
        assert state.reap_stale(tmp_path) == []
    assert state.load(running.directory).status == "building"


def test_only_a_verified_image_is_ever_recorded_as_copied(tmp_path: Path) -> None:
    ids = {"eu-west-1": "ami-1"}
    built = make_record(tmp_path, cloud="aws", artifact_ids=ids, status="built")
    with pytest.raises(ImageforgeError, match="never verified"):
        state.distributed(built, {"eu-central-1": "ami-2"})
    verified = state.verification_done(built, PASSED)
    copied = state.distributed(verified, {"eu-central-1": "ami-2"})
    assert state.load(copied.directory).copies == {"eu-central-1": "ami-2"}
    assert state.unbound_reason(copied) is None  # copies do not disturb the binding


def test_one_command_hashes_an_artifact_once_unless_it_changes(tmp_path: Path, monkeypatch) -> None:
    record = make_record(tmp_path)
    hashed: list[Path] = []
    real = state.sha256
    monkeypatch.setattr(state, "sha256", lambda path: hashed.append(path) or real(path))
    with state.one_command():
        for _ in range(3):
            state.require_bound(record)
        assert len(hashed) == 1
        image = record.directory / record.artifacts[0].path
        data = bytearray(image.read_bytes())
        data[-1] ^= 1  # same size, other content, a later modification time
        image.write_bytes(bytes(data))
        os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
        with pytest.raises(ImageforgeError, match="sha256 differs"):
            state.require_bound(record)
        assert len(hashed) == 2
    state.unbound_reason(record)  # outside a command: hashed every time
    assert len(hashed) == 3
