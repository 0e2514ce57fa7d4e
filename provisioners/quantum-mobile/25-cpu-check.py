#!/usr/bin/python3
"""Quantum Mobile needs an x86-64-v2 CPU: say so, once, when an instance's CPU is older.

numpy's wheels, and with them verdi, the AiiDA daemon and the AiiDA kernel, use SSE4.2 and
POPCNT; on an older CPU model (QEMU's default qemu64, for one) they die with "invalid opcode".
One program in two roles:

- run by Packer as a provisioner (no argument, as root): installs itself as
  /usr/local/sbin/imageforge-cpu-check and enables imageforge-cpu-check.service;
- `imageforge-cpu-check boot` (that unit, as root, at every boot, before the AiiDA units and
  before anyone can log in): reads /proc/cpuinfo. When an x86-64-v2 feature is missing it writes
  one line, naming the missing features, to the console (the unit's output goes there and to the
  journal) and to motd, and leaves a marker (CPU_UNSUPPORTED) whose presence keeps
  imageforge-aiida, aiida-daemon and jupyterlab from starting (their ConditionPathExists=!),
  instead of letting them crash. With every feature there it says nothing.

Every boot, not only the first: the same disk may next boot on another CPU model. Standard
library only, run by Debian's python3, which needs no more than a baseline x86-64 CPU.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

SETUP = Path("/usr/local/sbin/imageforge-cpu-check")
UNIT = Path("/etc/systemd/system/imageforge-cpu-check.service")
CPUINFO = Path("/proc/cpuinfo")
MOTD = Path("/run/motd.d/40-imageforge-cpu")
# Read by 20-aiida.py's units (ConditionPathExists=!); /run starts empty at every boot.
CPU_UNSUPPORTED = Path("/run/imageforge/cpu-unsupported")
# x86-64-v2 (the x86-64 psABI's level 2) by its /proc/cpuinfo flag names; "pni" is SSE3.
X86_64_V2 = ("cx16", "lahf_lm", "pni", "popcnt", "sse4_1", "sse4_2", "ssse3")
UNIT_TEXT = f"""\
[Unit]
Description=imageforge: does this CPU run Quantum Mobile's Python packages (x86-64-v2)?
Before=imageforge-aiida.service aiida-daemon.service jupyterlab.service
Before=systemd-user-sessions.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={SETUP} boot
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"""


def cpu_flags(cpuinfo: str) -> set[str] | None:
    """The flags every processor has (the intersection), or None when none lists any (not x86)."""
    flags: set[str] | None = None
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            these = set(value.split())
            flags = these if flags is None else flags & these
    return flags


def missing_features(cpuinfo: str) -> list[str]:
    """The x86-64-v2 features the CPU lacks, in a fixed order; none when it has no flags line."""
    flags = cpu_flags(cpuinfo)
    if flags is None:
        return []
    return [feature for feature in X86_64_V2 if feature not in flags]


def message(missing: list[str]) -> str:
    """The one line for the console and motd."""
    return (
        f"imageforge-cpu: this CPU lacks {' '.join(missing)} of x86-64-v2, which numpy and so "
        "AiiDA need: AiiDA and JupyterLab stay stopped. Give the VM a newer CPU model "
        "(QEMU: -cpu host, or x86-64-v2 or later)"
    )


def boot(cpuinfo: Path = CPUINFO, motd: Path = MOTD, marker: Path = CPU_UNSUPPORTED) -> int:
    """Check this boot's CPU; print, and write to motd, one line when it cannot run AiiDA."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError as error:
        print(f"imageforge-cpu: cannot read {cpuinfo}: {error}", flush=True)
        return 0
    missing = missing_features(text)
    if not missing:
        motd.unlink(missing_ok=True)
        marker.unlink(missing_ok=True)
        return 0
    line = message(missing)
    print(line, flush=True)
    for path, content in ((motd, line), (marker, " ".join(missing))):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content + "\n")
        path.chmod(0o644)
    return 0


def build() -> int:
    """As a provisioner: install the check and its unit."""
    shutil.copyfile(__file__, SETUP)
    SETUP.chmod(0o755)
    UNIT.write_text(UNIT_TEXT)
    subprocess.run(["systemctl", "enable", "--no-reload", "--quiet", UNIT.name], check=True)
    try:
        missing = missing_features(CPUINFO.read_text(errors="replace"))
    except OSError:
        missing = []
    state = f"lacks {' '.join(missing)}" if missing else "is x86-64-v2"
    print(f"CPU check installed ({UNIT.name}); the build VM's CPU {state}")
    return 0


if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) > 1 else "build"
    sys.exit({"build": build, "boot": boot}[role]())
