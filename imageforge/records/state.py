"""The per-build record, artifacts/<flavor>/<build-id>/build.json, and its life cycle.

A record is a frozen, strictly typed model. Only this module changes it, through named
transitions that check the status machine and save the result atomically:

    building → built → verified | failed | interrupted      (building → failed | interrupted)
    verified | failed | interrupted → verified | failed      (verification run again)
    then, per place (a cloud): published ⇄ revoked

A verification binds to content: the sha256 of every artifact, and the image ids recorded at
build time. Publish, import and reuse recheck that binding with `require_bound`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from imageforge import log
from imageforge.config.configerrors import suggest
from imageforge.errors import ConfigError, ImageforgeError
from imageforge.process import locks
from imageforge.records import registry
from imageforge.records.record import (  # noqa: F401 (the record's types, for state's callers)
    NEXT,
    RECORD,
    Artifact,
    Binding,
    BuildRecord,
    Publication,
    Status,
    artifacts_root,
    load,
)


def _save(record: BuildRecord) -> BuildRecord:
    """Write atomically, so an interrupted write never leaves half a record."""
    path = record.directory / RECORD
    tmp = path.with_name(f".{RECORD}.{os.getpid()}.tmp")
    tmp.write_text(record.model_dump_json(indent=2) + "\n")
    os.replace(tmp, path)
    registry.saved(record)  # the index of every record; it never fails a save
    return record


def _change(record: BuildRecord, **update: Any) -> BuildRecord:
    """A validated copy of record with update applied, saved."""
    data = record.model_dump(mode="json")
    for key, value in update.items():
        data[key] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    changed = BuildRecord.model_validate_json(_json(data), strict=True)
    changed._directory = record.directory
    return _save(changed)


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, default=lambda o: o.model_dump(mode="json"))


def _move(record: BuildRecord, status: str) -> None:
    if status not in NEXT[record.status]:
        raise ImageforgeError(
            f"build {record.id} is {record.status}; it cannot become {status}",
        )


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# Transitions.


def started(directory: Path, **facts: Any) -> BuildRecord:
    """A new record in `building`, in its own (new) directory."""
    record = BuildRecord.model_validate_json(
        _json({**facts, "status": "building", "started_at": now()}), strict=True
    )
    record._directory = directory
    return _save(record)


def noted(record: BuildRecord, **facts: Any) -> BuildRecord:
    """Facts learned while building (key, accelerator, boot times); status unchanged."""
    allowed = {"build_public_key", "accelerator", "qemu_version", "boot", "timings", "steps"}
    if record.status != "building" or not set(facts) <= allowed:
        raise ImageforgeError(f"build {record.id}: cannot note {sorted(facts)} now")
    return _change(record, **facts)


def built(
    record: BuildRecord,
    artifacts: list[dict[str, Any]],
    artifact_ids: dict[str, str],
    timings: dict[str, float],
) -> BuildRecord:
    """Packer finished: the artifacts and image ids, recorded once."""
    _move(record, "built")
    return _change(
        record, status="built", artifacts=artifacts, artifact_ids=artifact_ids, timings=timings
    )


def abandoned(
    record: BuildRecord, status: Literal["failed", "interrupted"], error: str
) -> BuildRecord:
    """The build or its verification failed or was stopped."""
    _move(record, status)
    return _change(record, status=status, error=error, finished_at=now())


def verification_done(
    record: BuildRecord, outcome: dict[str, Any], seconds: float | None = None
) -> BuildRecord:
    """A verification ran: verified (bound to what it saw) when every check passed."""
    ok = outcome.get("failed") == outcome.get("errors") == 0 and outcome.get("passed", 0) > 0
    status = "verified" if ok else "failed"
    _move(record, status)
    binding = bind(record) if ok else None
    timings = {**record.timings, **({"verify": seconds} if seconds is not None else {})}
    error = "" if ok else "verification failed: " + ", ".join(outcome.get("failures", []))
    return _change(
        record,
        status=status,
        verification=outcome,
        binding=binding,
        error=error,
        timings=timings,
        finished_at=now(),
    )


def published(
    record: BuildRecord,
    place: str,
    sharing: str | None,
    outcomes: list[dict[str, Any]],
    added: dict[str, Any],
    *,
    revoked: bool = False,
) -> BuildRecord:
    """Publish (or revoke) ran at a place; added is what is still in place there."""
    if not revoked:
        require_bound(record)
    publication = Publication(
        status="revoked" if revoked else "published",
        sharing=sharing,
        outcomes=outcomes,
        added=added,
        at=now(),
    )
    return _change(record, published={**record.published, place: publication})


def imported(record: BuildRecord, place: str, image_id: str) -> BuildRecord:
    """A verified local build was imported into a cloud as image_id."""
    require_bound(record)
    return _change(record, imported={**record.imported, place: image_id})


def derived(
    record: BuildRecord, artifacts: list[dict[str, Any]], timings: dict[str, float]
) -> BuildRecord:
    """Artifacts made from the verified image (a Vagrant box), kept apart from what was
    verified: they never change the binding."""
    require_bound(record)
    kept = [a for a in record.derived if a.path not in {new["path"] for new in artifacts}]
    derived = [*(a.model_dump() for a in kept), *artifacts]
    return _change(record, derived=derived, timings={**record.timings, **timings})


def distributed(record: BuildRecord, copies: dict[str, str]) -> BuildRecord:
    """A verified image was copied to more regions (only a verified one ever is)."""
    require_bound(record)
    return _change(record, copies={**record.copies, **copies})


# The content binding.


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# Within one command (one_command), each artifact is hashed once: a publish checks the binding
# at each step (plan, publish, record), and an image can be gigabytes.
_hashed: dict[tuple[str, int, int, int, int], str] | None = None


@contextlib.contextmanager
def one_command() -> Iterator[None]:
    """Hash each artifact at most once until the end of the block (a task's run), unless it
    changes: its path, identity, size and modification time are the key."""
    global _hashed
    outer, _hashed = _hashed, {} if _hashed is None else _hashed
    try:
        yield
    finally:
        _hashed = outer


def _sha256_now(path: Path) -> str:
    if _hashed is None:
        return sha256(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _hashed:
        _hashed[key] = sha256(path)
    return _hashed[key]


def describe(path: Path, root: Path) -> dict[str, Any]:
    """An artifact's entry: path relative to the build directory, size and sha256."""
    return {
        "path": str(path.relative_to(root)),
        "size": path.stat().st_size,
        "sha256": sha256(path),
    }


def _mismatch(record: BuildRecord) -> str | None:
    """Why the files on disk are not what the record says, or None."""
    for artifact in record.artifacts:
        path = record.directory / artifact.path
        if not path.is_file():
            return f"{artifact.path} is missing"
        if path.stat().st_size != artifact.size or _sha256_now(path) != artifact.sha256:
            return f"{artifact.path} changed since it was built (sha256 differs)"
    return None


def bind(record: BuildRecord) -> Binding:
    """The binding of a verification that is passing now: the artifacts as they are."""
    if reason := _mismatch(record):
        raise ImageforgeError(f"build {record.id}: {reason}; it cannot be verified")
    return Binding(
        artifacts={a.path: a.sha256 for a in record.artifacts}, image_ids=dict(record.artifact_ids)
    )


def require_bound(record: BuildRecord) -> None:
    """Refuse unless the build is verified for exactly the artifacts and ids it has now."""
    reason = unbound_reason(record)
    if reason:
        raise ImageforgeError(
            f"build {record.id} of {record.flavor} on {record.cloud} is not verified: {reason}",
            hint=f"rebuild, or run `invoke verify --image {record.flavor} --cloud {record.cloud}`"
            "; unverified builds cannot be published, imported or reused",
        )


def unbound_reason(record: BuildRecord) -> str | None:
    """Why the build's verification does not cover what it has now, or None."""
    if record.status != "verified" or record.binding is None:
        failures = record.verification.get("failures") or []
        if failures:
            return "these checks failed: " + ", ".join(failures)
        if record.status in ("failed", "interrupted"):
            first = record.error.splitlines()[0] if record.error else ""
            return f"the build {record.status}" + (f" ({first})" if first else "")
        return "it was never verified"
    if record.binding.artifacts != {a.path: a.sha256 for a in record.artifacts}:
        return "its artifact list changed after verification"
    if record.binding.image_ids != record.artifact_ids:
        return "its image ids differ from the ones that were verified"
    if not record.binding.artifacts and not record.binding.image_ids:
        return "its verification covers no artifact and no image"
    return _mismatch(record)


# The registry: every record of a flavor.


def records(project_root: Path, flavor: str, cloud: str | None = None) -> list[BuildRecord]:
    """Every valid record of a flavor (optionally on one cloud), oldest first; invalid ones
    are reported and skipped."""
    found = []
    for path in sorted((artifacts_root(project_root) / flavor).glob(f"*/{RECORD}")):
        try:
            record = load(path.parent)
        except ImageforgeError as exc:
            log.warn(f"skipped: {exc}")
            continue
        if cloud is None or record.cloud == cloud:
            found.append(record)
    return found


def find(project_root: Path, flavor: str, cloud: str, build_id: str | None) -> BuildRecord:
    """A build by id, or the newest one of the flavor on the cloud."""
    if build_id:  # the flavor names the directory: no index needed (registry.find: any flavor)
        directory = artifacts_root(project_root) / flavor / build_id
        if "/" not in build_id and build_id.strip(".") and (directory / RECORD).is_file():
            record = load(directory)
            if record.cloud == cloud:
                return record
        known = [r.id for r in records(project_root, flavor, cloud)]
        raise ConfigError(
            f"no build {build_id!r} of {flavor} on {cloud} (recent: "
            f"{', '.join(known[-5:]) or 'none'}){suggest(build_id, known)}"
        )
    found = records(project_root, flavor, cloud)
    if not found:
        raise ImageforgeError(
            f"no build of {flavor} on {cloud} yet",
            hint=f"run `invoke build --image {flavor} --cloud {cloud}`",
        )
    return found[-1]


def reusable(project_root: Path, flavor: str, cloud: str, content_hash: str) -> BuildRecord | None:
    """The newest verified build with this content hash whose binding still holds."""
    for record in reversed(records(project_root, flavor, cloud)):
        if record.content_hash != content_hash or not record.verified:
            continue
        reason = unbound_reason(record)
        if reason is None:
            return record
        log.warn(f"not reusing build {record.id}: {reason}")
    return None


def reap_stale(project_root: Path) -> list[str]:
    """Records left in `building` by a run that is gone (its lock is free) become interrupted."""
    reaped = []
    for path in sorted(artifacts_root(project_root).glob(f"*/*/{RECORD}")):
        try:
            record = load(path.parent)
        except ImageforgeError:
            continue
        if record.status == "building" and not locks.held(
            project_root, record.flavor, record.cloud
        ):
            abandoned(record, "interrupted", "the run that made it was killed")
            reaped.append(record.id)
    return reaped
