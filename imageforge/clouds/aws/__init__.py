"""aws: amazon-ebs builds; sharing by launch and volume permissions; prune and sweep."""

from __future__ import annotations

from imageforge.clouds.aws.housekeeping import AwsHousekeeping
from imageforge.clouds.aws.preflight import AwsPreflight
from imageforge.clouds.aws.sharing import AwsSharing
from imageforge.clouds.aws.source import AwsSource


class AwsCloud(AwsSource, AwsPreflight, AwsSharing, AwsHousekeeping):
    """Every AWS capability: Packer source, preflight, sharing and housekeeping."""


CLOUD = AwsCloud()
