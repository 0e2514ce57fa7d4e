"""The `prices:` section of images.yml: the table `invoke build --dry-run` estimates with.

    prices:
      currency: USD
      aws:
        instances: {t3.medium: 0.0456}   # per hour, by clouds.aws.instance_type
        storage_gb_month: 0.05           # image (snapshot) storage, per GB and month
        build_hours: 0.5                 # how long a build and its verification keep instances
        image_gb: 8                      # stored size; default: clouds.aws.volume_size_gb
        retention_months: 3              # how long each image is kept
      gcp: {...}                         # the same keys, by clouds.gcp.machine_type

The numbers are the user's: no price API is called. The defaults are examples (on-demand list
prices of the default instance types in the default regions); an `instances` table replaces
the default one.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictFloat, StringConstraints

from imageforge.config.configtypes import Model, Name

Price = Annotated[StrictFloat, Field(ge=0, allow_inf_nan=False)]
Amount = Annotated[StrictFloat, Field(gt=0, le=100000, allow_inf_nan=False)]


class CloudPrices(Model):
    """Prices of one cloud, in the table's currency."""

    instances: dict[Name, Price] = Field(
        default_factory=dict, description="price per hour of each instance or machine type"
    )
    storage_gb_month: Price = Field(0.05, description="image storage per GB and month")
    build_hours: Amount = Field(
        0.5, description="hours a build (with its verification) keeps instances running"
    )
    image_gb: Amount | None = Field(
        None, description="stored image size in GB; default: the cloud's disk size setting"
    )
    retention_months: Annotated[StrictFloat, Field(ge=0, le=1200, allow_inf_nan=False)] = Field(
        3.0, description="months each image is kept, in every region it is in"
    )


class AwsPrices(CloudPrices):
    instances: dict[Name, Price] = Field(
        {"t3.medium": 0.0456}, description="price per hour of each clouds.aws.instance_type"
    )


class GcpPrices(CloudPrices):
    instances: dict[Name, Price] = Field(
        {"e2-standard-2": 0.0737}, description="price per hour of each clouds.gcp.machine_type"
    )


class Prices(Model):
    """What cloud builds cost, for estimates; no price API is ever called."""

    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = "USD"
    aws: AwsPrices = AwsPrices()
    gcp: GcpPrices = GcpPrices()
