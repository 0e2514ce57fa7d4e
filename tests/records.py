"""Build records for tests, made through state's own transitions (never by hand)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imageforge.records import state
from imageforge.records.state import BuildRecord

PASSED = {"passed": 3, "failed": 0, "errors": 0, "failures": []}


def make_record(
    artifacts_root: Path,
    flavor: str = "slurm-node",
    cloud: str = "local",
    build_id: str = "20260101-000000-abcdef0-000000",
    *,
    status: str = "verified",
    artifact_ids: dict[str, str] | None = None,
    files: dict[str, bytes] | None = None,
    **facts: Any,
) -> BuildRecord:
    """A record in status (building, built, verified, failed or interrupted), with real files
    for its artifacts (a tiny qcow2 stand-in for local builds unless files is given)."""
    directory = artifacts_root / flavor / build_id
    directory.mkdir(parents=True, exist_ok=True)
    record = state.started(directory, id=build_id, flavor=flavor, cloud=cloud, **facts)
    if status == "building":
        return record
    if status == "interrupted":
        return state.abandoned(record, "interrupted", "stopped by the user")
    if files is None:
        files = {f"image/{flavor}.qcow2": b"QFI\xfb test image"} if cloud == "local" else {}
    described = []
    for name, data in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        described.append(state.describe(path, directory))
    record = state.built(record, described, artifact_ids or {}, {"packer": 1.0})
    if status == "built":
        return record
    if status == "failed":
        outcome = {"passed": 1, "failed": 1, "errors": 0, "failures": ["test_x"]}
        return state.verification_done(record, outcome)
    return state.verification_done(record, PASSED)
