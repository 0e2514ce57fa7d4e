"""The cloud-init a slurm-node instance needs to join a cluster: its user-data (role, cluster
name, controller, MUNGE key, hosts) and its network config. Shared by `invoke cluster` (QEMU)
and the Vagrant seeds, and checked against the user-data models before anything boots."""

from __future__ import annotations

import yaml

from imageforge.config import userdata
from imageforge.errors import ImageforgeError


def slurm_user_data(
    role: str,
    cluster_name: str,
    controller: str,
    munge: str,
    hosts: dict[str, str],
    public_key: str | None = None,
) -> str:
    """The cloud-config that makes a slurm-node instance a controller or a worker."""
    document: dict[str, object] = {"disable_root": True}  # no ssh_pwauth: see seed_user_data
    if public_key:
        document["ssh_authorized_keys"] = [public_key]
    document["imageforge_slurm"] = {
        "role": role,
        "cluster_name": cluster_name,
        "controller": controller,
        "munge_key": munge,
        "hosts": hosts,
    }
    try:  # what the node would refuse is refused here, before anything boots
        userdata.check_blocks(document)
    except ValueError as exc:
        raise ImageforgeError(f"a node's user-data would be refused: {exc}") from None
    dumped: str = yaml.safe_dump(document, sort_keys=False)
    return "#cloud-config\n" + dumped


def network_config(nat_mac: str, cluster_mac: str, address: str) -> str:
    """cloud-init network config: DHCP on the NIC with nat_mac, address on cluster_mac's."""
    document = {
        "version": 2,
        "ethernets": {
            "nat": {"match": {"macaddress": nat_mac}, "dhcp4": True},
            "cluster": {"match": {"macaddress": cluster_mac}, "addresses": [f"{address}/24"]},
        },
    }
    dumped: str = yaml.safe_dump(document, sort_keys=False)
    return dumped
