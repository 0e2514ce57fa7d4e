"""What changed between two builds: packages, Python packages and configuration.

Pure functions over two BuildRecords; the only files read are the rendered Packer inputs kept
with each record (`<build dir>/packer/`), which hold no secret by design.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from imageforge.records.record import BuildRecord

# The record's fields that say what a build was made from.
CONFIG_FIELDS = ("flavor", "cloud", "git_commit", "template_hash", "content_hash", "packer_version")
RENDERED = ("*.pkr.hcl", "*.pkrvars.hcl")
BUILD_ID = "{build_id}"  # each build's own id, in its rendered files: differs by definition


@dataclass(frozen=True)
class Changes:
    """Packages added, removed and changed (name: old → new version)."""

    added: dict[str, str] = field(default_factory=dict)
    removed: dict[str, str] = field(default_factory=dict)
    changed: dict[str, tuple[str, str]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


@dataclass(frozen=True)
class BuildDiff:
    old: str
    new: str
    packages: Changes
    python_packages: Changes
    fields: dict[str, tuple[str, str]]  # os, record field, flavor.x, cloud.x, base_image.x
    files: dict[str, str]  # rendered file: unified diff
    notes: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.packages or self.python_packages or self.fields or self.files)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        for section in ("packages", "python_packages"):
            data[section]["changed"] = {
                name: {"old": old, "new": new}
                for name, (old, new) in data[section]["changed"].items()
            }
        data["fields"] = {k: {"old": old, "new": new} for k, (old, new) in self.fields.items()}
        data["notes"] = list(self.notes)
        return data


def changes(old: dict[str, str], new: dict[str, str]) -> Changes:
    """Package changes between two name: version maps."""
    return Changes(
        added={n: new[n] for n in sorted(new.keys() - old.keys())},
        removed={n: old[n] for n in sorted(old.keys() - new.keys())},
        changed={n: (old[n], new[n]) for n in sorted(old.keys() & new.keys()) if old[n] != new[n]},
    )


def base_os(record: BuildRecord) -> str:
    """The OS a build started from: recorded, or (a record from before it was) what the
    recorded images.yml settings chose for its cloud; "" when neither says."""
    if record.os:
        return record.os
    chosen = record.settings.get("flavor", {}).get("os")
    return chosen.get(record.cloud, "") if isinstance(chosen, dict) else ""


def field_changes(old: BuildRecord, new: BuildRecord) -> dict[str, tuple[str, str]]:
    """The configuration facts that differ: the base OS, record fields, images.yml's settings
    of the cell (flavor.<key>, cloud.<key>) and the layer's (base_image.<key>)."""
    both = bool(old.settings and new.settings)  # older records have none: not compared
    known = bool(base_os(old) and base_os(new))  # unknown: a note, not a change
    before = {
        **({"os": base_os(old)} if known else {}),
        **{f: getattr(old, f) for f in CONFIG_FIELDS},
        **(_flat(old.settings) if both else {}),
        **_flat(old.base_image, "base_image"),
    }
    after = {
        **({"os": base_os(new)} if known else {}),
        **{f: getattr(new, f) for f in CONFIG_FIELDS},
        **(_flat(new.settings) if both else {}),
        **_flat(new.base_image, "base_image"),
    }
    keys = dict.fromkeys([*before, *after])  # the record's order
    return {
        key: (before.get(key, ""), after.get(key, ""))
        for key in keys
        if before.get(key, "") != after.get(key, "")
    }


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings as dotted keys; other values as text (lists and numbers as JSON)."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(_flat(value, name))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return flat


def rendered(record: BuildRecord) -> dict[str, str] | None:
    """The rendered Packer inputs kept with a build (name: text, its own id as {build_id}),
    or None when they are not there."""
    directory = record.directory / "packer"
    if not directory.is_dir():
        return None
    files = sorted({p for pattern in RENDERED for p in directory.glob(pattern)})
    return {
        p.name: p.read_text(encoding="utf-8", errors="replace").replace(record.id, BUILD_ID)
        for p in files
        if p.is_file() and not p.is_symlink()
    }


def file_diffs(
    old: dict[str, str], new: dict[str, str], old_id: str, new_id: str
) -> dict[str, str]:
    """Unified diffs of the rendered files that differ (a missing file counts as empty)."""
    diffs = {}
    for name in sorted(old.keys() | new.keys()):
        lines = difflib.unified_diff(
            old.get(name, "").splitlines(keepends=True),
            new.get(name, "").splitlines(keepends=True),
            fromfile=f"{old_id}/packer/{name}",
            tofile=f"{new_id}/packer/{name}",
        )
        text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
        if text:
            diffs[name] = text
    return diffs


def diff(old: BuildRecord, new: BuildRecord) -> BuildDiff:
    """Everything that differs from build `old` to build `new`."""
    notes = []
    files: dict[str, str] = {}
    old_files, new_files = rendered(old), rendered(new)
    if old_files is not None and new_files is not None:
        files = file_diffs(old_files, new_files, old.id, new.id)
    else:
        missing = [r.id for r, f in ((old, old_files), (new, new_files)) if f is None]
        notes.append(f"rendered Packer files not kept for {', '.join(missing)}: not compared")
    unrecorded = [r.id for r in (old, new) if not r.settings]
    if unrecorded:
        notes.append(f"images.yml settings not recorded for {', '.join(unrecorded)}: not compared")
    unknown = [r.id for r in (old, new) if not base_os(r)]
    if unknown:
        notes.append(f"base OS not recorded for {', '.join(unknown)}: not compared")
    return BuildDiff(
        old=old.id,
        new=new.id,
        packages=changes(old.packages, new.packages),
        python_packages=changes(old.python_packages, new.python_packages),
        fields=field_changes(old, new),
        files=files,
        notes=tuple(notes),
    )


def text(result: BuildDiff) -> list[str]:
    """The diff for people: one section per kind of change, then the configuration."""
    lines = [f"diff {result.old} → {result.new}"]
    for title, section in (
        ("packages", result.packages),
        ("python packages", result.python_packages),
    ):
        lines.append(f"{title} added: {len(section.added)}")
        lines += [f"  + {name} {version}" for name, version in section.added.items()]
        lines.append(f"{title} removed: {len(section.removed)}")
        lines += [f"  - {name} {version}" for name, version in section.removed.items()]
        lines.append(f"{title} changed: {len(section.changed)}")
        lines += [f"  ~ {name} {a} → {b}" for name, (a, b) in section.changed.items()]
    lines.append(f"config: {len(result.fields) + len(result.files)} change(s)")
    lines += [
        f"  {key}: {a or '(none)'} → {b or '(none)'}" for key, (a, b) in result.fields.items()
    ]
    for name, unified in result.files.items():
        lines.append(f"  {name}:")
        lines += [f"    {line}" for line in unified.splitlines()]
    lines += [f"  note: {note}" for note in result.notes]
    return lines


def as_json(result: BuildDiff) -> str:
    return json.dumps(result.as_json(), indent=2)
