"""The rules of prune and sweep on every cloud: proof of ownership, what must stay, and age.

Deletion needs proof that this pipeline made a thing: its name starts with images.yml's
`settings.name_prefix` and it carries our build-id tag. "Newest verified" comes from
imageforge's own records (status verified: their recorded image ids and build ids), never from
a label a user could set. Sweep leaves alone what may belong to a running build: anything
younger than --min-age, and anything of a build whose local record is still `building`.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imageforge.clouds.common import BUILD_KEY, FLAVOR_KEY, Outcome, label, recorded_ids
from imageforge.clouds.sdkerrors import errors_into
from imageforge.errors import ConfigError
from imageforge.packer import hcl
from imageforge.records import state

if TYPE_CHECKING:
    from imageforge.config import Project

# What Packer names its own temporary resources: key pairs, groups, instances, disks.
PACKER_NAME = re.compile(r"^(packer[-_][0-9A-Za-z-]+|Packer Builder)$")
SWEEP_MIN_AGE_MINUTES = 120
# A failed build's instance kept by --on-error=keep: when sweep may remove it (epoch seconds).
KEEP_KEY = "imageforge-keep-until"
KEEP_MAX_HOURS = 168


def keep_count(keep: Any) -> int:
    """--keep as a whole number of at least 1 (the newest image always stays)."""
    try:
        count = int(str(keep).strip())
    except ValueError:
        raise ConfigError(f"--keep: {keep!r} is not a whole number; give 1 or more") from None
    if count < 1:
        raise ConfigError(f"--keep: {count} would delete every image; give 1 or more")
    return count


def min_age(minutes: Any) -> int:
    """--min-age as whole minutes, 0 or more."""
    try:
        value = int(str(minutes).strip())
    except ValueError:
        raise ConfigError(f"--min-age: {minutes!r} is not a whole number of minutes") from None
    if value < 0:
        raise ConfigError(f"--min-age: {value} is negative; give minutes, 0 or more")
    return value


def owned(project: Project, name: str, tags: dict[str, str]) -> bool:
    """Proof that this pipeline made an image: our name prefix and our build-id tag."""
    return name.startswith(project.images.settings.name_prefix) and bool(tags.get(BUILD_KEY))


def packer_made(project: Project, name: str, tags: dict[str, str]) -> bool:
    """Proof that a build of ours left a resource: our build-id tag, and our name prefix or
    the name Packer gives its own temporary resources."""
    named = name.startswith(project.images.settings.name_prefix) or PACKER_NAME.match(name)
    return bool(tags.get(BUILD_KEY)) and bool(named)


@dataclass(frozen=True)
class Verified:
    """A flavor's verified builds, from imageforge's own records."""

    image_ids: frozenset[str]
    build_ids: frozenset[str]

    def covers(self, image_id: str, tags: dict[str, str]) -> bool:
        return image_id in self.image_ids or tags.get(BUILD_KEY, "") in self.build_ids


def verified_builds(project: Project, flavor: str) -> Verified:

    found = [r for r in state.records(project.root, flavor) if r.status == "verified"]
    ids = {i for r in found for i in recorded_ids(r).values()}
    return Verified(frozenset(ids), frozenset(r.id for r in found))


def builds_by_status(project: Project) -> dict[str, str]:
    """Every local build id with its status, over all flavors."""
    return {
        r.id: r.status
        for flavor in project.images.flavors
        for r in state.records(project.root, flavor)
    }


def age_minutes(created: dt.datetime | str | None) -> float | None:
    """Minutes since a creation time (datetime or ISO text), None if unknown."""
    if not created:
        return None
    if isinstance(created, str):
        created = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.UTC)
    return (dt.datetime.now(dt.UTC) - created).total_seconds() / 60


def instance_tags(tags: dict[str, Any]) -> hcl.Raw:
    """A build instance's tags (labels, metadata): the image's, and with `--on-error=keep`
    KEEP_KEY, when `invoke sweep` may remove the kept instance (var.keep_until)."""
    expiry = f'{{ for k, v in {{ {hcl.string(KEEP_KEY)} = var.keep_until }} : k => v if v != "" }}'
    return hcl.Raw(f"merge({hcl.value(tags, 2)}, {expiry})")


def utc_minute(epoch: int) -> str:
    """A time (seconds since the epoch) as people read it: 2026-12-07 09:30 UTC."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def kept_until(tags: dict[str, str]) -> int | None:
    """When a kept build instance may go (seconds since the epoch), if it was kept: a value
    of ASCII digits, at most a week (the longest --keep-hours) from now; else None."""
    value = tags.get(KEEP_KEY, "")
    if not re.fullmatch(r"[0-9]{1,11}", value, re.ASCII):
        return None
    until = int(value)
    return until if until <= time.time() + KEEP_MAX_HOURS * 3600 else None


def still_needed(
    build_id: str,
    created: Any,
    minutes: int,
    builds: dict[str, str],
    tags: dict[str, str] | None = None,
) -> str:
    """Why a leftover of a build stays (it may be a running build's, or kept to look inside
    until its expiry), or ""."""
    if builds.get(build_id) == "building":
        return f"build {build_id} is still building here"
    until = kept_until(tags or {})
    if until is not None:  # its expiry, not --min-age, decides
        if until > time.time():
            return f"kept by --on-error=keep until {utc_minute(until)}"
        return ""
    age = age_minutes(created)
    if age is None:
        return "its age is unknown"
    if age < minutes:
        return f"only {age:.0f} minutes old (--min-age {minutes})"
    return ""


@dataclass(frozen=True)
class Image:
    """One image as prune sees it, whatever the cloud."""

    where: str
    ident: str
    name: str
    created: str  # ISO 8601: sorts by time
    tags: dict[str, str]
    handle: Any = None  # the SDK's own object


def prune(
    project: Project,
    flavor: str,
    images: list[Image],
    keep: int,
    *,
    apply: bool,
    kept_because: Callable[[Image], str],
    delete: Callable[[Image], None],
) -> list[Outcome]:
    """Per place, delete our images of the flavor beyond the newest `keep`; never the newest
    verified one, nor one the cloud's own check keeps (published, protected...)."""
    keep = keep_count(keep)
    verified = verified_builds(project, flavor)
    ours = [
        i
        for i in images
        if owned(project, i.name, i.tags) and i.tags.get(FLAVOR_KEY) in (flavor, label(flavor))
    ]
    outcomes = []
    for where in dict.fromkeys(i.where for i in ours):
        here = sorted(
            (i for i in ours if i.where == where),
            key=lambda i: (i.created, i.tags[BUILD_KEY]),
            reverse=True,
        )
        newest_verified = next((i for i in here if verified.covers(i.ident, i.tags)), None)
        for image in here[keep:]:
            outcome = Outcome(where, f"image {image.ident} ({image.name})")
            outcomes.append(outcome)
            with errors_into(outcome):
                reason = "newest verified build" if image is newest_verified else ""
                reason = reason or kept_because(image)
                if reason:
                    outcome.subject += f", kept: {reason}"
                    continue
                if apply:
                    delete(image)
                outcome.changes.append("deleted" if apply else "would delete")
    return outcomes


def report(where: str, subject: str, reason: str, apply: bool) -> Outcome:
    """A sweep's outcome for one leftover: removed (or would be), or kept and why."""
    if reason:
        return Outcome(where, f"{subject}, kept: {reason}")
    return Outcome(where, subject, ["removed" if apply else "would remove"])
