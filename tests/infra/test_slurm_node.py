"""slurm-node: Slurm daemons and MUNGE installed, nothing cluster-specific baked in."""

import re


def test_slurm_daemons_installed(host):
    for package in ("slurmd", "slurmctld", "slurm-client", "munge"):
        assert host.package(package).is_installed, package


def test_slurm_daemons_run(host):
    # Both daemons print their version without a cluster configuration.
    for daemon in ("slurmd", "slurmctld"):
        assert re.fullmatch(r"slurm(-wlm)? \d+\.\d+\.\d+", host.check_output(f"{daemon} -V")), daemon


def test_no_munge_key_baked_in(host):
    assert not host.file("/etc/munge/munge.key").exists


def test_cluster_name_recorded(host):
    assert host.file("/etc/slurm/cluster-name.conf").contains("^ClusterName=")
