#!/bin/sh
# Slurm node: the daemons and MUNGE are declared packages (images.yml). One image serves as
# controller or worker: imageforge-slurm.service decides at boot from the user-data (role,
# cluster name, controller address, MUNGE key). Nothing cluster-specific is baked in.
set -eu
# Daemons start once the instance is configured, not in the image.
# --no-reload: the units change for the next boot; a daemon-reload in the build VM costs
# seconds on an emulated CPU and changes nothing of the image.
systemctl disable --no-reload slurmd slurmctld munge > /dev/null 2>&1 || true
# The package generates a munge key; a key shared by every instance of an image is a secret
# baked in, so it goes, and first boot receives the cluster's own.
rm -f /etc/munge/munge.key /etc/slurm/slurm.conf
mkdir -p /etc/slurm
echo "ClusterName=${SLURM_CLUSTER_NAME:-imageforge}" > /etc/slurm/cluster-name.conf

install -d /usr/local/sbin
cat > /usr/local/sbin/imageforge-slurm-setup <<'PY'
#!/usr/bin/python3
"""imageforge: make this node a Slurm controller or worker from its cloud-init user-data.

Runs at every boot (imageforge-slurm.service, after cloud-init). The user-data is cloud-config
with a block of ours:

    imageforge_slurm:
      role: controller | worker
      cluster_name: demo
      controller: 10.77.0.10        # the controller's address (workers need only this)
      munge_key: <base64>           # the cluster's key; never baked into the image
      hosts: {ctl: 10.77.0.10, worker1: 10.77.0.11}   # optional /etc/hosts entries

Configless Slurm: the controller serves slurm.conf (enable_configless) and workers start
`slurmd -Z --conf-server`, registering themselves with the CPUs and memory they detect.
Without a role or a key the node stays unconfigured and says why, on the console and in motd.
The same image works with Debian 12's Slurm 22.05 and Debian 13's 24.11; `--print-conf` prints
the slurm.conf a controller would serve with the Slurm installed here.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

USER_DATA = Path("/var/lib/cloud/instance/user-data.txt")
MOTD = Path("/run/motd.d/50-imageforge-slurm")
MUNGE_KEY = Path("/etc/munge/munge.key")
SLURM_CONF = Path("/etc/slurm/slurm.conf")
SLURMD_DEFAULTS = Path("/etc/default/slurmd")
HOSTS = Path("/etc/hosts")
# StateSaveLocation and SlurmdSpoolDir. Slurm 23.11 and later run slurmctld as SlurmUser from
# the start (User=slurm in its unit), so its state directory must be the slurm user's.
STATE_DIRS = (Path("/var/lib/slurm/slurmctld"), Path("/var/lib/slurm/slurmd"))
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# Before Slurm 23.11 messages could not fan out through dynamic nodes, which the other nodes
# do not know: TreeWidth had to be at its maximum (Debian 12 has 22.05). Later ones need nothing.
FANOUT_WITH_DYNAMIC_NODES = (23, 11)
SLURM_CONF_TEXT = """\
# imageforge: written at boot from user-data; workers fetch it (configless Slurm).
ClusterName={cluster}
SlurmctldHost={host}({address})
SlurmctldParameters=enable_configless
AuthType=auth/munge
SlurmUser=slurm
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MaxNodeCount=256
SlurmctldTimeout=60
SlurmdTimeout=60
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def slurm_conf(cluster: str, host: str, address: str, version: tuple[int, int]) -> str:
    """The controller's slurm.conf for a Slurm of `version` (major, minor)."""
    text = SLURM_CONF_TEXT.format(cluster=cluster, host=host, address=address)
    if version < FANOUT_WITH_DYNAMIC_NODES:
        text += "TreeWidth=65533\n"
    return text


def version_of(text: str) -> tuple[int, int]:
    """(major, minor) from `slurmctld -V` ("slurm-wlm 24.11.5"); unknown: the newest rules."""
    found = re.search(r"(\d+)\.(\d+)\.\d+", text)
    return (int(found[1]), int(found[2])) if found else FANOUT_WITH_DYNAMIC_NODES


def slurm_version() -> tuple[int, int]:
    """The installed Slurm's (major, minor)."""
    result = subprocess.run(
        ["/usr/sbin/slurmctld", "-V"], capture_output=True, text=True, check=False
    )
    return version_of(result.stdout)


def say(message: str) -> None:
    """One line on the console (the unit's output goes there) and in motd."""
    print(f"imageforge-slurm: {message}", flush=True)
    MOTD.parent.mkdir(parents=True, exist_ok=True)
    MOTD.write_text(f"imageforge-slurm: {message}\n")


def settings() -> dict:
    try:
        document = yaml.safe_load(USER_DATA.read_text()) if USER_DATA.is_file() else None
    except yaml.YAMLError:
        document = None
    block = document.get("imageforge_slurm") if isinstance(document, dict) else None
    return block if isinstance(block, dict) else {}


def unconfigured(reason: str) -> int:
    say(f"this node is not configured: {reason}. Slurm and MUNGE stay stopped.")
    return 0


def main(argv: list[str]) -> int:
    if argv == ["--print-conf"]:
        print(slurm_conf("example", "ctl", "10.0.0.10", slurm_version()), end="")
        return 0
    config = settings()
    role = config.get("role")
    if role not in ("controller", "worker"):
        return unconfigured("no imageforge_slurm.role (controller or worker) in the user-data")
    try:
        key = base64.b64decode(str(config.get("munge_key", "")), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) < 32:
        return unconfigured("no MUNGE key (imageforge_slurm.munge_key) in the user-data")
    cluster = str(config.get("cluster_name", "imageforge"))
    controller = str(config.get("controller", ""))
    if not NAME.match(cluster) or not NAME.match(controller or "-"):
        return unconfigured("cluster_name or controller is not a plain name or address")
    if role == "worker" and not controller:
        return unconfigured("a worker needs imageforge_slurm.controller")
    hosts = {str(k): str(v) for k, v in (config.get("hosts") or {}).items() if NAME.match(str(k))}
    if hosts:
        _write_hosts(hosts)
    MUNGE_KEY.write_bytes(key)
    os.chown(MUNGE_KEY, *_ids("munge"))
    MUNGE_KEY.chmod(0o400)
    host = os.uname().nodename
    if role == "controller":
        SLURM_CONF.write_text(slurm_conf(cluster, host, controller or host, slurm_version()))
        SLURM_CONF.chmod(0o644)
        for directory in STATE_DIRS:
            directory.mkdir(parents=True, exist_ok=True)
            os.chown(directory, *_ids("slurm"))
        services = ["munge", "slurmctld"]
    else:
        SLURM_CONF.unlink(missing_ok=True)
        SLURMD_DEFAULTS.write_text(f'SLURMD_OPTIONS="-Z --conf-server {controller}:6817"\n')
        services = ["munge", "slurmd"]
    subprocess.run(["systemctl", "enable", *services], check=True, capture_output=True)
    subprocess.run(["systemctl", "start", "--no-block", *services], check=True)
    say(f"{role} of cluster {cluster}" + (f", controller {controller}" if controller else ""))
    return 0


def _write_hosts(hosts: dict[str, str]) -> None:
    """The cluster's names on its own network, replacing other lines for them (such as the
    127.0.1.1 line cloud-init writes for this node, which other nodes cannot reach)."""
    kept = [
        line
        for line in HOSTS.read_text().splitlines()
        if not set(line.split("#")[0].split()[1:]) & set(hosts)
    ]
    ours = [f"{address}\t{name}" for name, address in hosts.items()]
    HOSTS.write_text("\n".join([*kept, "# imageforge-slurm", *ours]) + "\n")


def _ids(user: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
PY
chmod 0755 /usr/local/sbin/imageforge-slurm-setup

cat > /etc/systemd/system/imageforge-slurm.service <<'UNIT'
[Unit]
Description=imageforge: configure this Slurm node (controller or worker) from its user-data
# After cloud-init's network stage, which writes the user-data, the host name and /etc/hosts:
# cloud-init.service up to cloud-init 24.2 (Debian 12), cloud-init-network.service since 24.3
# (Debian 13). Ordering after a unit that does not exist is harmless.
After=cloud-init.service cloud-init-network.service network-online.target
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/imageforge-slurm-setup
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
UNIT
systemctl enable --no-reload imageforge-slurm.service > /dev/null 2>&1

# Configless workers have no local slurm.conf, which Debian 12's slurmd.service (Slurm 22.05)
# requires; the empty ConditionPathExists= lifts that (Debian 13's unit has no such condition).
# A worker that boots before its controller answers cannot fetch the configuration: 22.05 exits,
# 24.11 retries every 10 s but is restarted if that outlasts its start timeout (Type=notify).
mkdir -p /etc/systemd/system/slurmd.service.d
cat > /etc/systemd/system/slurmd.service.d/imageforge-configless.conf <<'UNIT'
[Unit]
ConditionPathExists=
StartLimitIntervalSec=0

[Service]
Restart=on-failure
RestartSec=5
UNIT
