"""A slurm-node Vagrant box after `vagrant up`, reached through `vagrant ssh-config`.

Run by tests/integration/test_vagrant.py as user vagrant:
`pytest --hosts=ssh://ctl --ssh-config=<vagrant ssh-config> tests/infra/test_vagrant_box.py`.
IMAGEFORGE_VAGRANT_ROLE says which machine this is (controller or worker) and
IMAGEFORGE_VAGRANT_WORKERS how many workers the controller should see.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

INSECURE_KEY = Path(__file__).resolve().parents[2] / "vagrant" / "keys" / "vagrant.pub"
ROLE = os.environ.get("IMAGEFORGE_VAGRANT_ROLE", "controller")
WORKERS = int(os.environ.get("IMAGEFORGE_VAGRANT_WORKERS", "1"))


def test_logged_in_as_vagrant_with_passwordless_sudo(host) -> None:
    assert host.user().name == "vagrant"
    assert "sudo" in host.user().groups
    assert host.run("sudo -n true").rc == 0


def test_vagrant_has_no_password(host) -> None:
    entry = host.check_output("sudo -n getent shadow vagrant").split(":")
    assert entry[1] in ("*", "!", "!*"), "the vagrant user must have no usable password"


def test_the_insecure_key_was_replaced_on_first_up(host) -> None:
    insecure = INSECURE_KEY.read_text().split()[1]
    keys = host.file("/home/vagrant/.ssh/authorized_keys")
    assert keys.mode == 0o600 and keys.user == "vagrant"
    assert insecure not in keys.content_string
    assert keys.content_string.strip(), "Vagrant's own key must be there"


def test_the_machine_booted_to_a_running_system(host) -> None:
    state = host.run("systemctl is-system-running --wait").stdout.strip()
    assert state == "running", host.run("systemctl --failed --no-legend").stdout


def test_the_first_boot_seed_made_it_the_right_slurm_role(host) -> None:
    assert host.service("munge").is_running
    daemon = "slurmctld" if ROLE == "controller" else "slurmd"
    assert host.service(daemon).is_running
    journal = host.check_output(
        "sudo -n journalctl -b -u imageforge-slurm.service --no-pager -o cat"
    )
    assert ROLE in journal


@pytest.mark.skipif(ROLE != "controller", reason="the controller sees the workers")
def test_every_worker_registered_and_runs_a_job(host) -> None:
    nodes = host.check_output("sinfo -h -N -o '%N %t'").splitlines()
    assert len(nodes) == WORKERS, nodes
    ran = host.run(f"srun -N{WORKERS} hostname")
    assert ran.rc == 0, ran.stderr
    assert sorted(ran.stdout.split()) == [f"worker{i}" for i in range(1, WORKERS + 1)]
