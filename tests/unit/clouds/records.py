"""Build records for cloud tests, made through state's own transitions."""

from __future__ import annotations

from pathlib import Path

from imageforge.records import state
from imageforge.records.state import BuildRecord


def build_id(n: int | str) -> str:
    return f"20250101-{int(n):06d}-abcdef0" if str(n).isdigit() else f"20250101-000000-{n}"


def make_record(
    root: Path,
    flavor: str,
    cloud: str,
    ident: str,
    *,
    artifact_ids: dict[str, str] | None = None,
    verified: bool = True,
    files: dict[str, bytes] | None = None,
    failures: tuple[str, ...] = (),
    status: str = "",
) -> BuildRecord:
    """A record: building (status="building"), built, or verified/failed with its checks."""
    directory = state.artifacts_root(root) / flavor / ident
    directory.mkdir(parents=True)
    for path, data in (files or {}).items():
        (directory / path).parent.mkdir(parents=True, exist_ok=True)
        (directory / path).write_bytes(data)
    record = state.started(
        directory, id=ident, flavor=flavor, cloud=cloud, git_commit="c0ffee",
        template_hash="feedface",
    )  # fmt: skip
    if status == "building":
        return record
    artifacts = [state.describe(directory / p, directory) for p in files or {}]
    record = state.built(record, artifacts, artifact_ids or {}, {})
    if status == "built":
        return record
    outcome = {"passed": 1, "failed": 0, "errors": 0, "failures": []}
    if not verified:
        outcome = {"passed": 0, "failed": len(failures), "errors": 0, "failures": list(failures)}
    return state.verification_done(record, outcome)
