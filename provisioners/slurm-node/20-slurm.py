#!/usr/bin/python3
"""Slurm node: one image that becomes a cluster's controller or one of its workers at boot.

One program in two roles:

- run by Packer as a provisioner (no argument, as root): takes out what the packages made that
  must differ per cluster (the MUNGE key, slurm.conf), leaves the daemons disabled, installs
  itself as /usr/local/sbin/imageforge-slurm-setup and writes its unit;
- `imageforge-slurm-setup boot` (imageforge-slurm.service, as root, every boot, after
  cloud-init): configures the node from the user-data's block, every value checked first
  against the schema images.yml's models make (provisioners/common/06-firstboot.py):

      imageforge_slurm:
        role: controller | worker
        munge_key: <base64>          # the cluster's key, 32 to 1024 bytes; never baked in
        cluster_name: demo
        controller: 10.77.0.10       # the controller's address (workers need it)
        hosts: {ctl: 10.77.0.10, worker1: 10.77.0.11}   # optional /etc/hosts entries

  Without the block the node stays unconfigured and says so; with a wrong value the unit fails
  with one line on the console and in motd, having changed nothing. Slurm's state
  (/var/lib/slurm) is never removed: a relaunched controller keeps its jobs and accounting
  state, and one whose state belongs to another cluster name refuses instead of starting;
- `imageforge-slurm-setup --print-conf`: the slurm.conf a controller would serve with the Slurm
  installed here.

Configless Slurm: the controller serves slurm.conf (enable_configless) and workers start
`slurmd -Z --conf-server`, registering with the CPUs and memory they detect. The same image
works with Debian 12's Slurm 22.05 and Debian 13's 24.11.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

# The library every first-boot program shares (installed by provisioners/common/06-firstboot.py).
sys.path.insert(0, "/usr/local/lib/imageforge")
import imageforge_firstboot as firstboot

PROGRAM = "imageforge-slurm"
SETUP = Path("/usr/local/sbin/imageforge-slurm-setup")
DESCRIPTION = "imageforge: configure this Slurm node (controller or worker) from its user-data"
UNIT = Path("/etc/systemd/system/imageforge-slurm.service")
SLURMD_DROP_IN = Path("/etc/systemd/system/slurmd.service.d/imageforge-configless.conf")
MUNGE_KEY = Path("/etc/munge/munge.key")
SLURM_CONF = Path("/etc/slurm/slurm.conf")
SLURMD_DEFAULTS = Path("/etc/default/slurmd")
# The image's cluster name (SLURM_CLUSTER_NAME at build time), for user-data that gives none.
CLUSTER_NAME = Path("/etc/slurm/cluster-name.conf")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
HOSTS = Path("/etc/hosts")
HOSTS_BEGIN, HOSTS_END = "# imageforge-slurm: begin", "# imageforge-slurm: end"
# StateSaveLocation and SlurmdSpoolDir. Slurm 23.11 and later run slurmctld as SlurmUser from
# the start (User=slurm in its unit), so its state directory must be the slurm user's.
STATE_SAVE = Path("/var/lib/slurm/slurmctld")
STATE_DIRS = (STATE_SAVE, Path("/var/lib/slurm/slurmd"))
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
StateSaveLocation={state}
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
# Configless workers have no local slurm.conf, which Debian 12's slurmd.service (Slurm 22.05)
# requires; the empty ConditionPathExists= lifts that (Debian 13's unit has no such condition).
# A worker that boots before its controller answers cannot fetch the configuration: 22.05 exits,
# 24.11 retries every 10 s but is restarted if that outlasts its start timeout (Type=notify).
SLURMD_DROP_IN_TEXT = """\
[Unit]
ConditionPathExists=
StartLimitIntervalSec=0

[Service]
Restart=on-failure
RestartSec=5
"""


class Refused(Exception):
    """The node cannot be configured as asked; one line, nothing changed."""


# ---------------------------------------------------------------------------------------------
# At build time, as a provisioner.


def build() -> int:
    # Daemons start once the instance is configured, not in the image. --no-reload: the units
    # change for the next boot; a daemon-reload in the build VM costs seconds under emulation.
    subprocess.run(
        ["systemctl", "disable", "--no-reload", "--quiet", "slurmd", "slurmctld", "munge"],
        check=False,
    )
    # The package generates a MUNGE key: one shared by every instance is a secret baked in.
    MUNGE_KEY.unlink(missing_ok=True)
    SLURM_CONF.unlink(missing_ok=True)
    name = os.environ.get("SLURM_CLUSTER_NAME") or "imageforge"
    if not NAME.match(name):
        print(f"SLURM_CLUSTER_NAME must match {NAME.pattern}", file=sys.stderr)
        return 2
    CLUSTER_NAME.parent.mkdir(parents=True, exist_ok=True)
    CLUSTER_NAME.write_text(f"ClusterName={name}\n")
    shutil.copyfile(__file__, SETUP)
    SETUP.chmod(0o755)
    UNIT.write_text(firstboot.unit(DESCRIPTION, SETUP))
    SLURMD_DROP_IN.parent.mkdir(parents=True, exist_ok=True)
    SLURMD_DROP_IN.write_text(SLURMD_DROP_IN_TEXT)
    subprocess.run(["systemctl", "enable", "--no-reload", "--quiet", UNIT.name], check=True)
    print(f"{SETUP} installed: the node's role, key and cluster come from user-data at boot")
    return 0


# ---------------------------------------------------------------------------------------------
# At boot, as root.


def slurm_conf(cluster: str, host: str, address: str, version: tuple[int, int]) -> str:
    """The controller's slurm.conf for a Slurm of `version` (major, minor)."""
    text = SLURM_CONF_TEXT.format(cluster=cluster, host=host, address=address, state=STATE_SAVE)
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


def munge_key(config: dict[str, Any]) -> bytes:
    """The key's bytes (the schema checked its form; this checks what it decodes to)."""
    try:
        key = base64.b64decode(config["munge_key"], validate=True)
    except (binascii.Error, ValueError):
        raise Refused("imageforge_slurm.munge_key: must be base64, padded") from None
    if not 32 <= len(key) <= 1024:
        raise Refused("imageforge_slurm.munge_key: must decode to 32 to 1024 bytes")
    return key


def default_cluster_name() -> str:
    """The image's cluster name (cluster-name.conf), "imageforge" if it has none."""
    try:
        text = CLUSTER_NAME.read_text()
    except OSError:
        return "imageforge"
    found = re.search(r"^ClusterName=(\S+)$", text, re.M)
    return found[1] if found and NAME.match(found[1]) else "imageforge"


def check_state(cluster: str) -> None:
    """A controller's saved state must be this cluster's: slurmctld refuses another's, and the
    state (jobs, reservations) is the users', never removed to make room."""
    recorded = STATE_SAVE / "clustername"
    try:
        name = recorded.read_text().strip()
    except OSError:
        return
    if name and name != cluster:
        raise Refused(
            f"the saved state in {STATE_SAVE} belongs to cluster {firstboot.plain(name)!r}, not "
            f"{cluster!r}: give that cluster_name, or move the state away yourself"
        )


def hosts_text(current: str, hosts: dict[str, str]) -> str:
    """/etc/hosts with the cluster's names in one block of ours (replacing the last one). A
    loopback line cloud-init wrote for one of those names (127.0.1.1 for this node, which other
    nodes cannot reach) loses that name; no other line changes."""
    kept: list[str] = []
    inside = False
    for line in current.splitlines():
        if line.strip() == HOSTS_BEGIN:
            inside = True
        elif line.strip() == HOSTS_END:
            inside = False
        elif not inside:
            kept.append(_without_names(line, set(hosts)))
    ours = [f"{address}\t{name}" for name, address in hosts.items()]
    lines = [line for line in kept if line is not None]
    return "\n".join([*lines, HOSTS_BEGIN, *ours, HOSTS_END]) + "\n"


def _without_names(line: str, names: set[str]) -> str | None:
    fields = line.split("#", 1)[0].split()
    if len(fields) < 2 or not set(fields[1:]) & names:
        return line
    try:
        loopback = ipaddress.ip_address(fields[0]).is_loopback
    except ValueError:
        return line
    if not loopback or {"localhost", "ip6-localhost", "ip6-loopback"} & set(fields[1:]):
        return line
    rest = [name for name in fields[1:] if name not in names]
    return "\t".join([fields[0], *rest]) if rest else None


def configure(config: dict[str, Any]) -> str:
    """Make the node what config says; return what it is now."""
    role, cluster = config["role"], config.get("cluster_name") or default_cluster_name()
    controller = config.get("controller")
    key = munge_key(config)
    if role == "controller":
        check_state(cluster)
    hosts = {str(name): str(address) for name, address in config.get("hosts", {}).items()}
    if hosts:
        HOSTS.write_text(hosts_text(HOSTS.read_text(), hosts))
    munge = pwd.getpwnam("munge")
    firstboot.write_private(MUNGE_KEY, key, munge.pw_uid, munge.pw_gid, 0o400)
    host = os.uname().nodename
    if role == "controller":
        SLURM_CONF.write_text(slurm_conf(cluster, host, controller or host, slurm_version()))
        SLURM_CONF.chmod(0o644)
        slurm = pwd.getpwnam("slurm")
        for directory in STATE_DIRS:  # made where absent; what is in them stays
            directory.mkdir(parents=True, exist_ok=True)
            os.chown(directory, slurm.pw_uid, slurm.pw_gid)
        services = ["munge", "slurmctld"]
    else:
        SLURM_CONF.unlink(missing_ok=True)
        SLURMD_DEFAULTS.write_text(f'SLURMD_OPTIONS="-Z --conf-server {controller}:6817"\n')
        services = ["munge", "slurmd"]
    subprocess.run(["systemctl", "enable", "--quiet", *services], check=True)
    subprocess.run(["systemctl", "start", "--no-block", *services], check=True)
    return f"{role} of cluster {cluster}" + (f", controller {controller}" if controller else "")


def boot(data: bytes | None = None) -> int:
    try:
        config = firstboot.settings("slurm", data)
        if not config:
            firstboot.say(
                PROGRAM,
                "this node is not configured: no imageforge_slurm block in the user-data. "
                "Slurm and MUNGE stay stopped.",
                motd=True,
            )
            return 0
        what = configure(config)
    except (firstboot.BadUserData, Refused) as problem:
        firstboot.refuse(PROGRAM, firstboot.BadUserData(str(problem)))
    firstboot.say(PROGRAM, what, motd=True)
    return 0


def main(argv: list[str]) -> int:
    if argv == ["--print-conf"]:
        print(slurm_conf("example", "ctl", "10.0.0.10", slurm_version()), end="")
        return 0
    return boot() if argv == ["boot"] else build()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
