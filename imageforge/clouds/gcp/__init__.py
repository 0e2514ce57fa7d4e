"""gcp: googlecompute builds; sharing by IAM binding on the image; verification instances;
prune and sweep."""

from __future__ import annotations

from imageforge.clouds.gcp.housekeeping import GcpHousekeeping
from imageforge.clouds.gcp.launch import GcpLauncher
from imageforge.clouds.gcp.preflight import GcpPreflight
from imageforge.clouds.gcp.sharing import GcpSharing
from imageforge.clouds.gcp.source import GcpSource


class GcpCloud(GcpSource, GcpPreflight, GcpSharing, GcpHousekeeping, GcpLauncher):
    """Every GCP capability: Packer source, preflight, sharing, housekeeping and verification
    instances."""


CLOUD = GcpCloud()
