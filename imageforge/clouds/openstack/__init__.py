"""openstack: openstack builds; Glance visibility and members; import, verification servers,
prune and sweep.

The SDK (openstacksdk) is imported inside the functions that talk to a cloud, so `invoke --list`
and rendering work without it configured.
"""

from __future__ import annotations

from imageforge.clouds.openstack.housekeeping import OpenstackHousekeeping
from imageforge.clouds.openstack.importing import OpenstackImporter
from imageforge.clouds.openstack.launch import OpenstackLauncher
from imageforge.clouds.openstack.preflight import OpenstackPreflight
from imageforge.clouds.openstack.sharing import OpenstackSharing
from imageforge.clouds.openstack.source import OpenstackSource


class OpenstackCloud(
    OpenstackSource,
    OpenstackPreflight,
    OpenstackSharing,
    OpenstackHousekeeping,
    OpenstackImporter,
    OpenstackLauncher,
):
    """Every OpenStack capability: source, preflight, sharing, housekeeping, import and
    verification servers."""


CLOUD = OpenstackCloud()
