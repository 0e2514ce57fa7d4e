""".github/workflows/images.yml: valid for GitHub, fed by `invoke matrix`, careful with secrets.

A real GitHub run is not possible here; the file is checked against the GitHub workflow schema
that check-jsonschema ships, and its expressions against what `invoke matrix` prints.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from imageforge.tools import outdated as checks

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "images.yml"
EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}", re.S)


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    return YAML(typ="safe").load(WORKFLOW.read_text())


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return job["steps"]


def named(job: dict[str, Any], name: str) -> dict[str, Any]:
    return next(step for step in steps(job) if step.get("name") == name)


def check_schema(path: Path) -> None:
    """The real check-jsonschema against GitHub's workflow schema."""
    checker = shutil.which("check-jsonschema")
    assert checker, "check-jsonschema is in the test extra"
    done = subprocess.run(
        [checker, "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_it_validates_against_the_github_workflow_schema() -> None:
    check_schema(WORKFLOW)


def test_the_matrix_comes_from_invoke_matrix_with_one_job_per_cell(workflow) -> None:
    plan = workflow["jobs"]["plan"]
    script = next(step["run"] for step in steps(plan) if step.get("id") == "plan")
    assert "invoke matrix --format github --changed-since" in script
    assert "invoke matrix --format github)" in script  # every cell when there is no base
    checkout = next(s for s in steps(plan) if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] == 0  # --changed-since needs the history
    build = workflow["jobs"]["build"]
    assert build["needs"] == "plan"
    assert build["strategy"]["fail-fast"] is False
    assert build["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    assert plan["outputs"]["matrix"] == "${{ steps.plan.outputs.matrix }}"
    assert "needs.plan.outputs.count != '0'" in build["if"]  # GitHub refuses an empty matrix


def test_every_matrix_key_the_jobs_use_is_one_invoke_matrix_prints() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "matrix", "--format", "github"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    include = json.loads(done.stdout)["include"]
    cells = subprocess.run(
        [sys.executable, "-m", "invoke", "matrix", "--format", "table"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    assert [(e["image"], e["cloud"]) for e in include] == [tuple(c.split("\t")) for c in cells]
    used = set(re.findall(r"matrix\.([a-z_]+)", WORKFLOW.read_text()))
    assert used and used <= set(include[0]), used - set(include[0])
    assert {"image", "cloud"} <= used


def test_secrets_reach_steps_only_as_environment_or_inputs(workflow) -> None:
    for job in workflow["jobs"].values():
        for step in steps(job):
            assert "secrets." not in step.get("run", ""), step
            assert "secrets." not in str(step.get("if", "")), step
            for value in (*step.get("env", {}).values(), *step.get("with", {}).values()):
                for expression in EXPRESSION.findall(str(value)):
                    if "secrets." in expression:
                        assert str(value).strip().startswith("${{"), step
    secret_vars = {
        name
        for job in workflow["jobs"].values()
        for step in steps(job)
        for name, value in step.get("env", {}).items()
        if "secrets." in str(value)
    }
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "CLOUDS_YAML"} <= secret_vars
    for job in workflow["jobs"].values():
        for step in steps(job):
            script = step.get("run", "")
            assert "set -x" not in script and "xtrace" not in script
            for line in script.splitlines():
                if re.search(r"\b(echo|printf)\b", line):
                    mentioned = {v for v in secret_vars if f"${v}" in line or f"${{{v}}}" in line}
                    assert not mentioned or ">" in line.split(mentioned.pop(), 1)[1], line


def test_logs_and_records_are_kept_whatever_the_outcome(workflow) -> None:
    keep = named(workflow["jobs"]["build"], "Keep logs and records")
    assert keep["uses"].startswith("actions/upload-artifact@")
    assert keep["if"] == "always()"
    paths = keep["with"]["path"]
    for wanted in ("build.json", "*.log", "*.junit.xml", "registry.sqlite3"):
        assert wanted in paths


def test_publish_runs_only_on_the_default_branch_after_the_verified_build(workflow) -> None:
    build = workflow["jobs"]["build"]
    names = [step.get("name") for step in steps(build)]
    assert names.index("Build and verify") < names.index("Publish")
    assert "invoke build" in named(build, "Build and verify")["run"]
    assert "--no-verify" not in WORKFLOW.read_text()
    publish = named(build, "Publish")
    condition = publish["if"]
    assert "success()" in condition
    assert "github.event.repository.default_branch" in condition
    assert "github.event_name != 'pull_request'" in condition
    assert "matrix.cloud != 'local'" in condition
    assert "invoke publish" in publish["run"]
    assert workflow["permissions"] == {"contents": "read"}


OUTDATED = ROOT / ".github" / "workflows" / "outdated.yml"


@pytest.fixture(scope="module")
def outdated_workflow() -> dict[str, Any]:
    return YAML(typ="safe").load(OUTDATED.read_text())


def test_the_outdated_workflow_validates_and_runs_daily(outdated_workflow) -> None:
    check_schema(OUTDATED)
    triggers = outdated_workflow["on"]
    assert set(triggers) == {"schedule", "workflow_dispatch"}
    minute, hour, *days = triggers["schedule"][0]["cron"].split()
    assert days == ["*", "*", "*"] and minute.isdigit() and hour.isdigit()
    assert outdated_workflow["permissions"] == {"contents": "read", "actions": "read"}


def test_outdated_reads_the_records_and_treats_100_as_pending(outdated_workflow) -> None:
    check = outdated_workflow["jobs"]["check"]
    assert check["container"].startswith("debian:")  # Debian's own apt sources and keyring
    records = named(check, "Build records")
    assert "workflows/images.yml/runs" in records["run"]
    assert 'startswith("build-")' in records["run"]  # images.yml's "Keep logs and records"
    assert "$GITHUB_API_URL" in records["run"]  # no host written down
    script = next(step["run"] for step in steps(check) if step.get("id") == "check")
    assert "invoke outdated --format github" in script
    assert f'"$status" -eq {checks.SECURITY_PENDING}' in script
    assert "set -e" not in script.replace("set -euo", "")  # exit 100 must not end the step
    assert check["outputs"] == {
        "matrix": "${{ steps.check.outputs.matrix }}",
        "pending": "${{ steps.check.outputs.pending }}",
    }


def test_outdated_rebuilds_the_cells_with_refresh_through_images_yml(
    outdated_workflow, workflow
) -> None:
    rebuild = outdated_workflow["jobs"]["rebuild"]
    assert rebuild["needs"] == "check"
    assert rebuild["if"] == "needs.check.outputs.pending == 'true'"
    assert rebuild["uses"] == "./.github/workflows/images.yml"
    assert rebuild["with"] == {"matrix": "${{ needs.check.outputs.matrix }}", "refresh": True}
    assert rebuild["secrets"] == "inherit"
    inputs = workflow["on"]["workflow_call"]["inputs"]
    assert set(rebuild["with"]) <= set(inputs)
    assert inputs["refresh"]["type"] == "boolean" and inputs["refresh"]["default"] is False
    plan = next(step for step in steps(workflow["jobs"]["plan"]) if step.get("id") == "plan")
    assert plan["env"]["CALLED_MATRIX"] == "${{ inputs.matrix }}"
    assert plan["run"].index("CALLED_MATRIX") < plan["run"].index("invoke matrix")
    build = named(workflow["jobs"]["build"], "Build and verify")
    assert build["env"]["REFRESH"] == "${{ inputs.refresh && '--refresh' || '' }}"
    assert build["run"].endswith("$REFRESH")
