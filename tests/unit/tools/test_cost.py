"""`invoke build --dry-run`: what would be built and its cost, from images.yml's price table."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from imageforge import config
from imageforge.config import matrix
from imageforge.tools import cost

from ..conftest import write

IMAGES_YML = """\
clouds:
  aws: {region: eu-west-1, copy_regions: [eu-central-1, us-east-1], instance_type: c6i.large}
  gcp: {machine_type: e2-standard-2}
prices:
  currency: EUR
  aws:
    instances: {c6i.large: 0.1}
    storage_gb_month: 0.05
    build_hours: 1.5
    image_gb: 8
    retention_months: 6
flavors:
  slurm-node: {}
matrix:
  clouds: [local, aws, gcp]
"""


@pytest.fixture
def project(scratch: Path) -> Path:
    write(scratch, IMAGES_YML)
    (scratch / "tasks.py").write_text((Path(__file__).parents[3] / "tasks.py").read_text())
    return scratch


def invoke(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=project, capture_output=True, text=True
    )


def test_the_estimate_is_build_hours_times_price_plus_storage_everywhere(project: Path) -> None:
    proj = config.load(project / "images.yml")
    [planned] = cost.plan(proj, matrix.selected(proj, "slurm-node", "aws"))
    assert planned.regions == ("eu-west-1", "eu-central-1", "us-east-1")
    estimate = planned.estimate
    assert estimate is not None
    assert estimate.compute == Decimal("0.15")  # 1.5 h * 0.1
    assert estimate.storage == Decimal("7.2")  # 8 GB * 6 months * 0.05 * 3 regions
    assert estimate.total == Decimal("7.35") and estimate.currency == "EUR"


def test_dry_run_prints_every_cell_and_builds_nothing(project: Path) -> None:
    done = invoke(project, "build", "--dry-run", "--cloud", "aws")
    assert done.returncode == 0, done.stderr
    assert "slurm-node-aws: builder amazon-ebs, c6i.large" in done.stderr
    assert "estimate: 7.35 EUR" in done.stderr
    assert "8 GB (prices.aws.image_gb) × 3 region(s)" in done.stderr
    assert not (project / "artifacts").exists() and not (project / "build").exists()
    local = invoke(project, "build", "--dry-run", "--cloud", "local", "--image", "slurm-node")
    assert local.returncode == 0 and "no cloud cost" in local.stderr


def test_the_default_gcp_table_prices_the_default_machine(project: Path) -> None:
    done = invoke(project, "build", "--dry-run", "--cloud", "gcp")
    assert done.returncode == 0, done.stderr
    assert "0.5 h × 0.0737 EUR/h" in done.stderr
    assert "× 1 region(s)" in done.stderr


def test_a_missing_price_is_a_located_error_naming_the_key(project: Path) -> None:
    write(project, IMAGES_YML.replace("instances: {c6i.large: 0.1}", "instances: {t3.small: 0.1}"))
    done = invoke(project, "build", "--dry-run", "--cloud", "aws")
    assert done.returncode == 2
    assert done.stderr.startswith("error: images.yml:")
    assert "prices.aws.instances: no price per hour for clouds.aws.instance_type 'c6i.large'" in (
        done.stderr
    )
    assert "add `c6i.large: <EUR per hour>`" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "bad, message",
    [
        ("storage_gb_month: 0.05", "storage_gb_month: -1"),
        ("currency: EUR", "currency: euros"),
        ("build_hours: 1.5", "build_hours: .inf"),
    ],
)
def test_bad_prices_are_refused_with_their_place(project: Path, bad: str, message: str) -> None:
    write(project, IMAGES_YML.replace(bad, message))
    done = invoke(project, "build", "--dry-run", "--cloud", "aws")
    assert done.returncode == 2 and "images.yml:" in done.stderr and "prices." in done.stderr
    assert "Traceback" not in done.stderr
