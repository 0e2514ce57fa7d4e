"""A build's report: one self-contained HTML file (inline CSS, the screenshot as a data URI).

It gathers what the build left in its directory — the record, the verification's JUnit XML, the
SBOM and the desktop screenshot — into a context and renders `templates/report.html.j2` with
autoescaping on: every value from a record or a log is escaped.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jinja2
from packaging.requirements import InvalidRequirement, Requirement

from imageforge import __version__
from imageforge.records import junit, state
from imageforge.records.record import BuildRecord
from imageforge.stages import sbom

TEMPLATE = "report.html.j2"
FILE = "report.html"
JUNIT = "verify.junit.xml"
SCREENSHOT = "screenshot.png"
SLOWEST = 5
NOTABLE = 12
BOOT = (
    ("to_login_seconds", "login after"),
    ("kernel_seconds", "kernel"),
    ("userspace_seconds", "userspace"),
    ("checks_seconds", "checks"),
)
TONE = {"verified": "ok", "failed": "bad", "interrupted": "bad"}  # else "pending"


def tests_context(cases: list[junit.Case]) -> dict[str, Any]:
    counts = {k: sum(c.outcome == k for c in cases) for k in ("passed", "failed", "error")}
    counts["skipped"] = sum(c.outcome == "skipped" for c in cases)
    return {
        **counts,
        "total": len(cases),
        "failures": [c for c in cases if c.outcome in ("failed", "error")],
        "slowest": sorted(cases, key=lambda c: -c.seconds)[:SLOWEST],
    }


def bars(timings: dict[str, float]) -> list[dict[str, Any]]:
    """Stage bars: name, seconds and width in percent of the longest stage."""
    longest = max(timings.values(), default=0) or 1
    return [
        {"name": n, "seconds": round(s, 1), "percent": round(100 * max(s, 0) / longest, 1)}
        for n, s in timings.items()
    ]


def sbom_context(path: Path, declared: list[str]) -> dict[str, Any] | None:
    """Counts per kind and environment, and the versions of the declared packages."""
    if not path.is_file():
        return None
    document = json.loads(path.read_text())
    components = document.get("components", [])
    versions: dict[str, str] = {}
    environments: dict[str, int] = {}
    for component in components:
        purl = str(component.get("purl", ""))
        versions.setdefault(component.get("name", "").lower(), component.get("version", ""))
        if purl.startswith("pkg:pypi/"):
            where = next(
                (
                    p["value"]
                    for p in component.get("properties", [])
                    if p["name"].endswith(":environment")
                ),
                "?",
            )
            environments[where] = environments.get(where, 0) + 1
    notable = [(name, versions.get(name.lower(), "")) for name in declared]
    return {
        "file": path.name,
        "counts": sbom.counts(document),
        "environments": environments,
        "notable": notable[:NOTABLE],
        "more": max(0, len(notable) - NOTABLE),
    }


def declared_packages(flavor: Any) -> list[str]:
    """The names of a flavor's declared deb packages and pip requirements."""
    if flavor is None:
        return []
    names = list(flavor.packages)
    for requirement in flavor.python.packages if flavor.python else ():
        try:
            names.append(Requirement(requirement).name)
        except InvalidRequirement:
            names.append(requirement)
    return names


def publishing_context(record: BuildRecord) -> list[dict[str, str]]:
    """Where the build went: publications, imports, copies and the recorded image ids."""
    rows = [
        {
            "place": place,
            "what": p.status,
            "detail": f"sharing: {p.sharing or 'none'}"
            + (f"; added: {json.dumps(p.added, sort_keys=True)}" if p.added else ""),
            "at": p.at,
        }
        for place, p in sorted(record.published.items())
    ]
    for what, ids in (("image", record.artifact_ids), ("copy", record.copies)):
        rows += [{"place": r, "what": what, "detail": i, "at": ""} for r, i in sorted(ids.items())]
    rows += [
        {"place": p, "what": "imported", "detail": i, "at": ""}
        for p, i in sorted(record.imported.items())
    ]
    return rows


def size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def data_uri(path: Path) -> str | None:
    """A PNG as a data URI, or None when there is none."""
    if not path.is_file() or path.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def context(record: BuildRecord, flavor: Any = None) -> dict[str, Any]:
    """Everything the template shows; flavor is the flavor's config, if images.yml has it."""
    directory = record.directory
    verification = record.verification
    boot = verification.get("boot") or {}
    junit_file = directory / str(verification.get("junit") or JUNIT)
    tests = tests_context(junit.read_junit(junit_file)) if junit_file.is_file() else None
    return {
        "record": record,
        "tone": TONE.get(record.status, "pending"),
        "total_seconds": round(sum(record.timings.values()), 1),
        "stages": bars(record.timings),
        "boot": [(label, boot[key]) for key, label in BOOT if key in boot],
        "tests": tests,
        "sbom": sbom_context(
            directory / str(verification.get("sbom") or sbom.FILE), declared_packages(flavor)
        ),
        "publishing": publishing_context(record),
        "artifacts": [
            {"path": a.path, "size": size(a.size), "sha256": a.sha256, "derived": derived}
            for derived, kept in ((False, record.artifacts), (True, getattr(record, "derived", [])))
            for a in kept
        ],
        "screenshot": data_uri(directory / SCREENSHOT),
        "generated_at": state.now(),
        "version": __version__,
    }


def render(templates: Path, values: dict[str, Any]) -> str:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return environment.get_template(TEMPLATE).render(**values)


def write(
    record: BuildRecord, templates: Path, output: Path | None = None, flavor: Any = None
) -> Path:
    """Write the report (default: report.html in the build directory); its path."""
    path = output or record.directory / FILE
    path.write_text(render(templates, context(record, flavor)))
    return path
