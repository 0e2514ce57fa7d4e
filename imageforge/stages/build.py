"""build: render → base image → packer build → artifacts → verify, with a record of each stage.

A rebuild with nothing changed (same rendered template, provisioner files, base recipe and
flavor settings) returns the existing verified build at once; `force` builds anew.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from imageforge import clouds, log, packer
from imageforge.clouds.capabilities import PackerSource, Preflight
from imageforge.config import Project
from imageforge.config.matrix import Cell
from imageforge.errors import CommandError, ImageforgeError, Interrupted
from imageforge.process import buildsecrets, console, locks, reap, runner
from imageforge.records import buildinfo, state
from imageforge.records.record import RECORD, BuildRecord, artifacts_root, load
from imageforge.stages import attest, keep, render, steps, vagrantbox
from imageforge.stages import verify as verification


class BuildFailed(ImageforgeError):
    """Packer or a provisioner failed."""


def content_hash(project: Project, cell: Cell, rendered: render.Rendered, base_id: str) -> str:
    """What decides whether a build would come out the same."""
    digest = hashlib.sha256()
    digest.update(rendered.template_hash.encode())
    for step in (*cell.flavor.provisioners, *cell.flavor.cleanup):
        digest.update(step.script.encode() + (project.root / step.script).read_bytes())
    for script in render.BUILTIN_SCRIPTS:
        digest.update(script.encode() + (project.root / script).read_bytes())
    digest.update(base_id.encode())
    digest.update(cell.flavor.model_dump_json().encode())
    digest.update(json.dumps(cell.cloud_settings.model_dump(mode="json"), sort_keys=True).encode())
    return digest.hexdigest()


def build(
    project: Project,
    cell: Cell,
    *,
    force: bool = False,
    refresh: bool = False,
    verify: bool = True,
    packer_version: str | None = None,
    keep_hours: float | None = None,
) -> BuildRecord:
    """Build one cell, verify it, and return its record (an existing one if nothing changed).

    refresh rebuilds the cell's layer from the current packages even if its recipe is the same.
    keep_hours keeps a failed build's VM (stages.keep): on a cloud, for that long.
    The cell's lock is held from render to the end of verification; a VM kept from an earlier
    build of the cell is released first.
    """
    cloud = clouds.get(cell.cloud)
    version = packer.version(packer_version)
    build_id = buildinfo.new_build_id(project.root)
    with locks.cell(project.root, cell.flavor_name, cell.cloud, f"build {build_id}"):
        if cloud.vm_on_this_machine:  # a VM kept from an earlier build of the cell goes
            keep.release_cell(project.root, cell.flavor_name)
        directory = artifacts_root(project.root) / cell.flavor_name / build_id
        directory.parent.mkdir(parents=True, exist_ok=True)
        directory.mkdir(mode=0o750)  # a fresh id: never an existing directory
        directory.chmod(0o750)  # whatever the umask: logs and artifacts are not for everyone
        try:
            record = _build(project, cell, cloud, version, directory, force, refresh, keep_hours)
        finally:
            if not (directory / RECORD).exists():  # reused, or failed before a record
                shutil.rmtree(directory, ignore_errors=True)
        if verify and record.directory == directory:
            record = verification.verify(project, cell, record)
        if record.directory == directory and _wants_box(project, cell, record):
            record = _derive_box(project, cell, record)
        if record.directory == directory and record.verified:
            attest.attest(project, cell, record)
    _summary(record)
    return record


def _build(
    project: Project,
    cell: Cell,
    cloud: PackerSource,
    version: packer.PackerVersion,
    directory: Path,
    force: bool,
    refresh: bool,
    keep_hours: float | None,
) -> BuildRecord:
    """Render into the build's own directory, reuse a bound build, or run Packer."""
    timings: dict[str, float] = {}
    with log.step(f"render {cell.name}") as t:
        rendered = render.render(project, cell, version, out=directory / "packer", cloud=cloud)
    timings["render"] = t["seconds"]
    if isinstance(cloud, Preflight):
        with log.step(f"preflight {cell.cloud}"):
            for line in cloud.doctor(project, cell):
                log.info(f"ok: {line}")
    with log.step("base image and layer") as t:
        base = cloud.base_image(project, cell, refresh=refresh)
    timings["base"] = t["seconds"]
    # The layer's own sha256: after --refresh the same recipe can hold newer packages.
    chash = content_hash(project, cell, rendered, base.get("sha256", ""))
    if not force:
        existing = state.reusable(project.root, cell.flavor_name, cell.cloud, chash)
        if existing is not None:
            log.info(
                f"nothing changed since verified build {existing.id}; reusing it (--force rebuilds)"
            )
            return existing
    build_id = directory.name
    record = state.started(
        directory,
        id=build_id,
        flavor=cell.flavor_name,
        cloud=cell.cloud,
        os=cell.os,
        git_commit=buildinfo.git_commit(project.root),
        template_hash=rendered.template_hash,
        content_hash=chash,
        packer_version=str(packer.installed_version()),
        base_image={k: v for k, v in base.items() if k not in ("packages", "python_packages")},
        settings=cell.settings(),
        packages=base.get("packages", {}),
        python_packages=base.get("python_packages", {}),
        timings=timings,
    )
    render.write_vars(
        rendered, buildinfo.packer_vars(project.root, build_id, rendered.template_hash)
    )
    plan: steps.StepPlan | None = None
    try:
        with (
            log.step(f"packer build {cell.name}") as t,
            _scratch(build_id) as scratch,
            # The plan's chain stays (nothing is evicted) until the artifact is made.
            steps.reading(cloud.caches_steps) as cache_usable,
        ):
            if cache_usable:
                plan = steps.plan(cell, rendered, base, fresh=force or refresh)
            record = _packer_build(
                project, cell, cloud, rendered, record, scratch, plan, keep_hours
            )
            cloud.finish_artifacts(directory, cell.flavor_name)
        return state.built(
            record,
            artifacts=cloud.collect_artifacts(directory, cell.flavor_name),
            artifact_ids=cloud.artifact_ids(directory),
            timings={**record.timings, "packer": t["seconds"]},
        )
    except (KeyboardInterrupt, Interrupted) as exc:
        _abandon(record, "interrupted", "stopped by the user")
        raise Interrupted(f"build {build_id} interrupted; nothing of it is left running") from exc
    except BaseException as exc:
        _abandon(record, "failed", str(exc) or type(exc).__name__)
        raise
    finally:
        if plan is not None:
            steps.evict(plan)


@contextmanager
def _scratch(build_id: str) -> Iterator[Path]:
    """A private temporary directory for the build's key and seed; always removed (after
    SIGKILL, by the next run's reap)."""
    path = reap.claim(Path(tempfile.mkdtemp(prefix=f"imageforge-{build_id}-")))
    try:
        yield path
    finally:
        if reap.owned_here(path):  # else a kept VM holds it (stages.keep)
            shutil.rmtree(path, ignore_errors=True)


def _packer_build(
    project: Project,
    cell: Cell,
    cloud: PackerSource,
    rendered: render.Rendered,
    record: BuildRecord,
    scratch: Path,
    plan: steps.StepPlan | None,
    keep_hours: float | None,
) -> BuildRecord:
    """Run `packer build` (resuming after the plan's cached steps); returns the record with
    what the build learned on the way. With keep_hours, a failed build's VM stays."""
    key = buildsecrets.ssh_keypair(scratch / "ssh", f"imageforge-build-{record.id}")
    proxies = buildsecrets.host_proxies()
    certificates = buildsecrets.host_ca_certificates()
    host_files = buildsecrets.stage_host_files(scratch / "host", certificates)
    if certificates:
        log.info(f"passing {len(certificates)} host CA certificate(s) into the build VM")
    if proxies:
        log.info(f"passing proxy settings into the build VM: {', '.join(proxies)}")
    console.private_file(record.directory / "serial.log")  # QEMU appends; its mode stays
    cloud_env = cloud.build_env(project, cell, record.id, scratch, key)
    record = state.noted(record, build_public_key=key.public, **cloud_env.facts)
    env = {
        "CHECKPOINT_DISABLE": "1",
        "PACKER_CACHE_DIR": str(scratch / "packer-cache"),
        "PKR_VAR_artifact_dir": str(record.directory),
        "PKR_VAR_ssh_private_key_file": str(key.private),
        "PKR_VAR_host_files_dir": str(host_files),
        **{f"PKR_VAR_{name}": value for name, value in proxies.items()},
        **cloud_env.env,
    }
    until = keep.expiry(keep_hours) if keep_hours is not None else None
    if until is not None:
        env["PKR_VAR_keep_until"] = str(until)
    if plan is not None:
        env |= plan.packer_env(scratch, record.directory / "image" / f"{cell.flavor_name}.qcow2")
        steps.announce(plan)
    tracker = _ProvisionerTracker()
    secrets = [v for k, v in proxies.items() if k != "no_proxy"]
    finished = False
    try:
        runner.run(
            [
                packer.binary(),
                "build",
                "-color=false",
                "-on-error=cleanup" if until is None else "-on-error=abort",
                str(rendered.directory),
            ],
            env=env,
            cwd=project.root,
            logfile=record.directory / "build.log",
            prefix=cell.flavor_name,
            secrets=secrets,
            on_line=tracker.feed,
            what=f"packer build {cell.name}",
            grace=cloud.packer_grace_seconds,
            leaves_running=until is not None,  # -on-error=abort: the build VM stays
        )
        finished = True
    except CommandError as exc:
        message = tracker.explain(exc, record.directory / "serial.log")
        if until is not None and cloud.vm_on_this_machine:
            output = tracker.output or exc.tail  # not a provisioner's failure: Packer's end
            user = cloud.ssh_username(cell.os)
            message += keep.hold(record.directory, scratch, key.private, user, output, secrets)
        elif until is not None:
            message += keep.kept_instance(cell.cloud, until)
        raise BuildFailed(message) from None
    finally:
        if tracker.seconds_to_ssh is not None:
            record = state.noted(record, boot={"packer_to_ssh_seconds": tracker.seconds_to_ssh})
        if plan is not None:  # on failure: the steps whose disk got into the cache
            done = len(plan.keys) if finished else plan.cache.resume_point(plan.keys)
            record = state.noted(record, steps=plan.record(done))
    return record


class _ProvisionerTracker:
    """Follows Packer's output to name the provisioner that failed."""

    STARTED = re.compile(r"Provisioning with shell script: (\S+)")
    HOOK = "Running local shell script:"
    SSH_WAIT = "Waiting for SSH to become available"
    SSH_UP = "Connected to SSH!"
    FAILED = re.compile(r"Script exited with non-zero exit status: (\d+)")

    def __init__(self) -> None:
        self.script: str | None = None
        self.exit_code: int | None = None
        self.lines: list[str] = []
        self.output: list[str] = []  # the whole output of the step running now
        self.ssh_wait_started: float | None = None
        self.seconds_to_ssh: float | None = None

    def feed(self, line: str) -> None:
        if self.SSH_WAIT in line:
            self.ssh_wait_started = time.monotonic()
        elif self.SSH_UP in line and self.ssh_wait_started is not None:
            self.seconds_to_ssh = round(time.monotonic() - self.ssh_wait_started, 1)
        if match := self.STARTED.search(line):
            self.script, self.lines, self.output = match.group(1), [], [line]
        elif self.HOOK in line and self.script:  # the step cache's hook (imageforge's own)
            self.script = f"the step cache's hook after {self.script}"
            self.lines, self.output = [], [line]
        elif self.script and self.exit_code is None:
            self.output.append(line)
            if match := self.FAILED.search(line):
                self.exit_code = int(match.group(1))
            else:
                self.lines = [*self.lines[-14:], line]

    def explain(self, exc: CommandError, serial_log: Path) -> str:
        """The failed provisioner and its last lines; if SSH never came up, the VM's console."""
        if self.script and self.exit_code is not None:
            tail = "\n".join(f"    {line}" for line in self.lines)
            return (
                f"provisioner {self.script} failed with exit code {self.exit_code}; "
                f"last lines of its output:\n{tail}"
            )
        if self.ssh_wait_started is not None and self.seconds_to_ssh is None:
            return f"{exc}\n{console.tail(serial_log)}"
        return str(exc)


def _abandon(record: BuildRecord, status: Literal["failed", "interrupted"], error: str) -> None:
    """A failed or interrupted build keeps its record, logs and rendered template, and nothing
    else."""
    kept_vm = ["image"] if (record.directory / keep.KEPT).exists() else []  # its disk
    keep_files = [RECORD, "build.log", "serial.log", "packer", *keep.FILES, *kept_vm]
    for child in record.directory.iterdir():
        if child.name not in keep_files:
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
    state.abandoned(load(record.directory), status, error)  # with what it noted


def _wants_box(project: Project, cell: Cell, record: BuildRecord) -> bool:
    """A Vagrant box is derived from every verified local build whose formats ask for one."""
    return "vagrant" in getattr(cell.cloud_settings, "formats", ()) and record.verified


def _derive_box(project: Project, cell: Cell, record: BuildRecord) -> BuildRecord:

    with log.step(f"vagrant box {cell.flavor_name}") as t:
        box = vagrantbox.derive(
            project.root,
            record.directory / "image" / f"{cell.flavor_name}.qcow2",
            record.directory / f"{cell.flavor_name}.box",
            record.directory / "build.log",
        )
    return state.derived(record, [state.describe(box, record.directory)], {"box": t["seconds"]})


def _summary(record: BuildRecord) -> None:
    total = sum(record.timings.values())
    log.info(f"{record.flavor} on {record.cloud}: build {record.id}, {record.status}, {total:.0f}s")
    for artifact in (*record.artifacts, *record.derived):
        log.info(f"  {record.directory / artifact.path}  {artifact.size / 2**20:.0f} MiB")
