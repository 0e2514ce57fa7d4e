"""Tasks that read the build registry: history, show, diff."""

from __future__ import annotations

import datetime as dt
import re

from invoke.context import Context
from invoke.tasks import task
from rich.markup import escape
from rich.table import Table

from imageforge.config import Project
from imageforge.config.configerrors import suggest
from imageforge.config.configtypes import CLOUDS
from imageforge.errors import ConfigError
from imageforge.records import builddiff, registry
from imageforge.records.record import BuildRecord
from imageforge.tasks.common import friendly, integer, out, project

HELP = {
    "image": "only builds of this flavor",
    "cloud": "only builds on this cloud: local, aws, gcp or openstack",
    "limit": "show at most this many builds (default 20)",
    "config": "path to images.yml (default: ./images.yml)",
    "build": "build id (see `invoke history`)",
    "format": "text (default) or json",
}


def pick(*names: str) -> dict[str, str]:
    return {n: HELP[n] for n in names}


# C0 and C1 control characters but tab (and newline, which callers split on)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def shown(text: str) -> str:
    """Record text as plain characters: Rich markup escaped, control characters (terminal
    escape sequences from a guest's output among them) as visible \\xNN."""
    return escape(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text))


@task(help=pick("image", "cloud", "limit", "config"))
@friendly
def history(
    c: Context,
    image: str | None = None,
    cloud: str | None = None,
    limit: str = "20",
    config: str | None = None,
) -> None:
    """Every build, local or cloud, from the registry, newest first."""
    proj = project(config)
    count = integer(limit, "--limit", minimum=1)
    _check_filters(proj, image, cloud)
    found = registry.builds(proj.root, flavor=image, cloud=cloud, limit=count)
    title = f"{len(found)} newest build(s)" + (" (--limit for more)" if len(found) == count else "")
    table = Table(title=title)
    for column in ("id", "flavor", "cloud", "status", "started", "duration", "commit", "packages"):
        table.add_column(column, justify="right" if column == "packages" else "left")
    for record in found:
        cells = (
            record.id,
            record.flavor,
            record.cloud,
            record.status,
            record.started_at.replace("T", " ").removesuffix("+00:00"),
            duration(record),
            record.git_commit[:7] + ("-dirty" if record.git_commit.endswith("-dirty") else ""),
            str(len(record.packages)) if record.packages else "—",
        )
        table.add_row(*(shown(cell) for cell in cells))
    out.print(table)


@task(help=pick("build", "config"))
@friendly
def show(c: Context, build: str, config: str | None = None) -> None:
    """One build: status, timings per stage, artifacts, verification, publications, error."""
    proj = project(config)
    record = registry.find(proj.root, build)
    lines = [
        ("flavor", record.flavor),
        ("cloud", record.cloud),
        ("os", builddiff.base_os(record)),
        ("status", record.status),
        ("started", record.started_at),
        ("finished", record.finished_at or "—"),
        ("duration", duration(record)),
        ("git commit", record.git_commit),
        ("template hash", record.template_hash),
        ("content hash", record.content_hash),
        ("packer", record.packer_version),
        ("qemu", record.qemu_version),
        ("accelerator", record.accelerator),
        ("packages", f"{len(record.packages)} (+ {len(record.python_packages)} Python)"),
        ("directory", str(record.directory)),
    ]
    out.print(f"[bold]build {shown(record.id)}[/]")
    for key, value in lines:
        if value:
            out.print(f"{key:<15}{shown(value)}")
    for title, items in _sections(record).items():
        out.print(f"[bold]{title}[/]")
        for item in items or ["—"]:
            out.print(f"  {shown(item)}")


def _sections(record: BuildRecord) -> dict[str, list[str]]:
    seconds = sum(record.timings.values())
    timings = [f"{stage}: {_seconds(value)}" for stage, value in record.timings.items()]
    if len(timings) > 1:
        timings.append(f"total: {_seconds(seconds)}")
    outcome = record.verification
    verification = []
    if outcome:
        verification.append(
            f"{outcome.get('passed', 0)} passed, {outcome.get('failed', 0)} failed, "
            f"{outcome.get('errors', 0)} errors"
            + (", bound to its artifacts" if record.binding is not None else "")
        )
        verification += [f"failed: {name}" for name in outcome.get("failures", [])]
    places = [
        f"{place}: {p.status} ({p.sharing or 'default sharing'}) at {p.at}"
        for place, p in record.published.items()
    ]
    places += [f"{place}: imported as {image}" for place, image in record.imported.items()]
    places += [f"{region}: copy {image}" for region, image in record.copies.items()]
    artifacts = [f"{a.path}  {_size(a.size)}  sha256:{a.sha256[:12]}" for a in record.artifacts]
    artifacts += [
        f"{a.path}  {_size(a.size)}  sha256:{a.sha256[:12]}  (made from the verified image)"
        for a in record.derived
    ]
    artifacts += [f"{kind}: {image}" for kind, image in record.artifact_ids.items()]
    return {
        "timings": timings,
        "artifacts": artifacts,
        "verification": verification,
        "published": places,
        "error": record.error.splitlines() if record.error else [],
    }


@task(name="diff", help={**pick("config", "format"), "a": "older build id", "b": "newer build id"})
@friendly
def diff_(c: Context, a: str, b: str, format: str = "text", config: str | None = None) -> None:
    """What changed from build A to build B: packages, Python packages and configuration."""
    if format not in ("text", "json"):
        raise ConfigError(f"unknown format {format!r}; allowed: text, json")
    proj = project(config)
    result = builddiff.diff(registry.find(proj.root, a), registry.find(proj.root, b))
    if format == "json":
        print(builddiff.as_json(result))
        return
    for line in builddiff.text(result):
        out.print(shown(line))


def _check_filters(proj: Project, image: str | None, cloud: str | None) -> None:
    """--image and --cloud name a known flavor (in images.yml or the registry) and cloud."""
    if image is not None:
        names = list(dict.fromkeys([*proj.images.flavors, *registry.values(proj.root, "flavor")]))
        if image not in names:
            raise ConfigError(
                f"unknown image {image!r}; allowed: {', '.join(names)}{suggest(image, names)}"
            )
    if cloud is not None and cloud not in CLOUDS:
        raise ConfigError(
            f"unknown cloud {cloud!r}; allowed: {', '.join(CLOUDS)}{suggest(cloud, CLOUDS)}"
        )


def duration(record: BuildRecord) -> str:
    """Start to finish; without a finish (built, not verified), the stages' total."""
    if record.started_at and record.finished_at:
        start, end = (dt.datetime.fromisoformat(t) for t in (record.started_at, record.finished_at))
        return _seconds((end - start).total_seconds())
    if record.status == "building":
        return "running"
    return _seconds(sum(record.timings.values())) if record.timings else "—"


def _seconds(value: float) -> str:
    minutes, seconds = divmod(round(value), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


TASKS = [history, show, diff_]
