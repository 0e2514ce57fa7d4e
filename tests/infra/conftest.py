"""Facts about the build under verification, passed in by imageforge.stages.verify, and the guest's
root-only facts gathered in one sudo call (each sudo costs about 0.3 s in an emulated guest)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

HOME_DIRS = "/root /home"
LEFTOVERS = (
    "/root/.aws",
    "/root/.config/gcloud",
    "/root/.config/openstack",
    "/etc/openstack",
    "/etc/apt/apt.conf.d/99imageforge-build-proxy",
    "/etc/dpkg/dpkg.cfg.d/99imageforge-build-unsafe-io",
    "/usr/local/share/ca-certificates/imageforge-build",
)
INSECURE_KEY = Path(__file__).resolve().parents[2] / "vagrant" / "keys" / "vagrant.pub"
INSECURE_KEY_MATERIAL = INSECURE_KEY.read_text().split()[1]
CREDENTIALS = "aws_secret_access_key|AWS_SECRET_ACCESS_KEY|OS_PASSWORD=|private_key_id"


@pytest.fixture(scope="session")
def build() -> dict[str, str]:
    """The build's public key, the verification instance id, and values that must not leak."""
    return {
        "public_key": os.environ.get("IMAGEFORGE_BUILD_PUBKEY", ""),
        "verify_key": os.environ.get("IMAGEFORGE_VERIFY_PUBKEY", ""),
        "instance_id": os.environ.get("IMAGEFORGE_VERIFY_INSTANCE_ID", ""),
        "image_user": os.environ.get("IMAGE_USER", ""),
        "secrets": os.environ.get("IMAGEFORGE_FORBIDDEN_VALUES", ""),
    }


@pytest.fixture(scope="module")
def boot_time(host) -> int:
    """When this VM booted, in epoch seconds."""
    return int(host.check_output('date -d "$(uptime -s)" +%s'))


@pytest.fixture(scope="module")
def root_facts(host, build) -> dict[str, str]:
    """Each section's output of one script run as root: {section: stdout}."""
    material = build["public_key"].split()[1] if build["public_key"] else "no-build-key"
    secrets = [v for v in build["secrets"].splitlines() if v]
    sections = {
        "histories": f"find {HOME_DIRS} -maxdepth 3 -type f \\( -name '.*_history' "
        "-o -name '.lesshst' -o -name '.viminfo' \\) -size +0",
        "build_key": f"grep -rlsF {shlex.quote(material)} {HOME_DIRS} /etc/ssh",
        "authorized_keys": "cat /home/*/.ssh/authorized_keys /root/.ssh/authorized_keys",
        "leftovers": f"for p in {' '.join(LEFTOVERS)} /home/*/.aws /home/*/.config/gcloud; "
        'do [ -e "$p" ] && echo "$p"; done; grep -rls force-unsafe-io /etc/dpkg',
        "credentials": f"grep -rlEs '{CREDENTIALS}' /etc {HOME_DIRS} /var/lib/cloud",
        "proxy_values": "grep -rlsF "
        + " ".join(f"-e {shlex.quote(v)}" for v in secrets)
        + f" /etc {HOME_DIRS} /var/lib/cloud /var/log"
        if secrets
        else "true",
        "apt": "find /var/lib/apt/lists -type f ! -name lock; "
        "find /var/cache/apt -type f \\( -name '*.deb' -o -name '*.bin' \\)",
        "sshd": "sshd -T",
        "munge_key": "test -e /etc/munge/munge.key && echo present",
        # Only the Vagrant box has the vagrant user and Vagrant's insecure key.
        "vagrant": "getent passwd vagrant; ls /etc/sudoers.d/vagrant /home/vagrant; grep -rlsF "
        f"{shlex.quote(INSECURE_KEY_MATERIAL)} /etc {HOME_DIRS}",
        "slurm_journal": "journalctl -b -u imageforge-slurm.service --no-pager -o cat",
    }
    script = "".join(
        f"echo '### {name}'; ( {command} ) 2>/dev/null; echo \"### rc $?\"; "
        for name, command in sections.items()
    )
    out = host.check_output(f"sudo -n sh -c {shlex.quote(script)}")
    facts: dict[str, str] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("### rc "):
            facts[f"{current}.rc"] = line.removeprefix("### rc ")
        elif line.startswith("### "):
            current = line.removeprefix("### ")
            facts[current] = ""
        elif current is not None:
            facts[current] += line + "\n"
    assert set(sections) <= set(facts), f"the root facts script stopped early: {out[-500:]}"
    return facts
