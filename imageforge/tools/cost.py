"""`invoke build --dry-run`: what would be built, and what it would cost on a cloud.

    estimate = build_hours × price per hour of the instance type
             + image_gb × regions × retention_months × storage_gb_month

Prices come from images.yml's `prices:` table (imageforge.config.prices); no price API is called.
Local builds cost nothing in a cloud; OpenStack clouds have no price table.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from imageforge import clouds, log
from imageforge.clouds.capabilities import Priced
from imageforge.config import Project
from imageforge.config.configerrors import dotted
from imageforge.config.matrix import Cell
from imageforge.config.prices import CloudPrices
from imageforge.errors import ConfigError


@dataclass(frozen=True)
class Estimate:
    """The cost of one cloud build and of keeping its image, in the table's currency."""

    hours: float
    hourly: float
    image_gb: float
    image_gb_from: str  # the key path the size came from
    regions: int
    months: float
    storage_gb_month: float
    currency: str

    @property
    def compute(self) -> Decimal:
        return exact(self.hours) * exact(self.hourly)

    @property
    def storage(self) -> Decimal:
        per_region = exact(self.image_gb) * exact(self.months) * exact(self.storage_gb_month)
        return per_region * self.regions

    @property
    def total(self) -> Decimal:
        return self.compute + self.storage


def exact(value: float) -> Decimal:
    """A price as written in images.yml (0.0456, not its nearest binary fraction)."""
    return Decimal(repr(value))


@dataclass(frozen=True)
class Planned:
    """One cell of a dry run: what would build it, where its image goes, and the estimate."""

    cell: Cell
    builder: str
    machine: str
    regions: tuple[str, ...]
    estimate: Estimate | None
    note: str = ""  # why there is no estimate


def plan(project: Project, cells: list[Cell]) -> list[Planned]:
    """The dry-run plan of cells; a missing price is a located error naming the key to add."""
    return [_planned(project, cell) for cell in cells]


def _planned(project: Project, cell: Cell) -> Planned:
    cloud = clouds.get(cell.cloud)
    machine = cloud.machine(cell.cloud_settings)
    if not isinstance(cloud, Priced):
        return Planned(
            cell, cloud.builder, machine, (), None, "no cloud cost: builds on this machine"
        )
    regions = cloud.image_regions(cell.cloud_settings)
    prices: CloudPrices | None = getattr(project.images.prices, cell.cloud, None)
    if prices is None:
        note = f"no estimate: images.yml has no price table for {cell.cloud}"
        return Planned(cell, cloud.builder, machine, regions, None, note)
    return Planned(
        cell, cloud.builder, machine, regions, estimate(project, cell, prices, len(regions))
    )


def estimate(project: Project, cell: Cell, prices: CloudPrices, regions: int) -> Estimate:
    """The estimate of one cell with its cloud's prices."""
    cloud = clouds.capability(cell.cloud, Priced)
    field = cloud.machine_setting
    machine = getattr(cell.cloud_settings, field)
    if machine not in prices.instances:
        raise _missing_price(project, cell.cloud, field, machine)
    if prices.image_gb is not None:
        image_gb, source = prices.image_gb, f"prices.{cell.cloud}.image_gb"
    else:
        disk = cloud.disk_setting
        image_gb, source = float(getattr(cell.cloud_settings, disk)), f"clouds.{cell.cloud}.{disk}"
    return Estimate(
        hours=prices.build_hours,
        hourly=prices.instances[machine],
        image_gb=image_gb,
        image_gb_from=source,
        regions=regions,
        months=prices.retention_months,
        storage_gb_month=prices.storage_gb_month,
        currency=project.images.prices.currency,
    )


def _missing_price(project: Project, cloud: str, field: str, machine: str) -> ConfigError:
    """Located at prices.<cloud>.instances if images.yml has it, else at the setting."""
    table = ("prices", cloud, "instances")
    anchor = table if _present(project.raw, table) else ("clouds", cloud, field)
    currency = project.images.prices.currency
    return ConfigError(
        f"{project.where(*anchor)}: {dotted(table)}: no price per hour for "
        f"clouds.{cloud}.{field} {machine!r}",
        hint=f"add `{machine}: <{currency} per hour>` under {dotted(table)} in {project.display}",
    )


def _present(raw: Any, key_path: tuple[str, ...]) -> bool:
    for part in key_path:
        if not isinstance(raw, dict) or part not in raw:
            return False
        raw = raw[part]
    return True


def show(planned: list[Planned]) -> Decimal:
    """Print the plan and the estimates; returns the total."""
    total = Decimal(0)
    currency = ""
    log.info(f"dry run: {len(planned)} cell(s); nothing is rendered or built")
    for entry in planned:
        regions = f", regions {', '.join(entry.regions)}" if entry.regions else ""
        log.info(f"{entry.cell.name}: builder {entry.builder}, {entry.machine}{regions}")
        cost = entry.estimate
        if cost is None:
            log.info(f"  {entry.note}")
            continue
        money = cost.currency
        log.info(
            f"  build: {number(cost.hours)} h × {number(cost.hourly)} {money}/h "
            f"= {number(cost.compute)} {money}"
        )
        log.info(
            f"  storage: {number(cost.image_gb)} GB ({cost.image_gb_from}) × {cost.regions} "
            f"region(s) × {number(cost.months)} month(s) × {number(cost.storage_gb_month)} "
            f"{money}/GB-month = {number(cost.storage)} {money}"
        )
        log.info(f"  estimate: {number(cost.total)} {money}")
        total += cost.total
        currency = money
    if currency:
        log.info(
            f"total estimate: {number(total)} {currency} (images.yml `prices:`; "
            "no price API is called)"
        )
    return total


def number(value: float | Decimal) -> str:
    """Rounded (half up) to four decimals, no trailing zeros: 0.0228, 6, 1.5."""
    rounded = (value if isinstance(value, Decimal) else exact(value)).quantize(
        Decimal("0.0001"), rounding=ROUND_HALF_UP
    )
    return f"{rounded:f}".rstrip("0").rstrip(".")
