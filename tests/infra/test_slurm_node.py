"""slurm-node: Slurm daemons and MUNGE installed, nothing cluster-specific baked in."""

import re

PACKAGES = ("slurmd", "slurmctld", "slurm-client", "munge")


def test_slurm_daemons_installed(host):
    status = host.check_output(
        "dpkg-query -W -f '${Package} ${db:Status-Abbrev}\\n' " + " ".join(PACKAGES)
    )
    installed = {line.split()[0] for line in status.splitlines() if line.split()[1] == "ii"}
    assert installed == set(PACKAGES), status


def test_slurm_daemons_run(host):
    # Both daemons print their version without a cluster configuration.
    versions = host.check_output("/usr/sbin/slurmd -V; /usr/sbin/slurmctld -V").splitlines()
    assert len(versions) == 2, versions
    for line in versions:
        assert re.fullmatch(r"slurm(-wlm)? \d+\.\d+\.\d+", line), line


def test_no_munge_key_baked_in(root_facts):
    assert root_facts["munge_key"] == "", "a MUNGE key is baked into the image"
    assert root_facts["munge_key.rc"] == "1"


def test_cluster_name_recorded(host):
    assert host.run("grep -q '^ClusterName=' /etc/slurm/cluster-name.conf").rc == 0


def test_first_boot_unit_is_enabled(host):
    assert host.check_output("systemctl is-enabled imageforge-slurm.service") == "enabled"
    assert host.run("test -x /usr/local/sbin/imageforge-slurm-setup").rc == 0


def test_node_without_a_key_stays_unconfigured_and_says_so(host, root_facts):
    # The verification boot gives no imageforge_slurm block: nothing may start, and the node
    # says why in motd and on the console (its journal, here).
    motd = host.check_output("cat /run/motd.d/50-imageforge-slurm")
    assert "not configured" in motd, motd
    assert "not configured" in root_facts["slurm_journal"], root_facts["slurm_journal"]
    states = host.run("systemctl is-active munge slurmd slurmctld").stdout.split()
    assert "active" not in states, states
