"""aws: amazon-ebs builds; verification instances; region copies of verified AMIs; sharing by
launch and volume permissions; prune and sweep."""

from __future__ import annotations

from imageforge.clouds.aws.distribute import AwsDistributor
from imageforge.clouds.aws.housekeeping import AwsHousekeeping
from imageforge.clouds.aws.launch import AwsLauncher
from imageforge.clouds.aws.preflight import AwsPreflight
from imageforge.clouds.aws.sharing import AwsSharing
from imageforge.clouds.aws.source import AwsSource


class AwsCloud(AwsSource, AwsPreflight, AwsSharing, AwsHousekeeping, AwsLauncher, AwsDistributor):
    """Every AWS capability: Packer source, preflight, sharing, housekeeping, verification
    instances and region copies."""


CLOUD = AwsCloud()
