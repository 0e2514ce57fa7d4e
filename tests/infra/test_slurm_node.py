"""slurm-node: Slurm daemons and MUNGE installed, nothing cluster-specific baked in."""


def test_slurm_daemons_installed(host):
    for package in ("slurmd", "slurmctld", "slurm-client", "munge"):
        assert host.package(package).is_installed, package


def test_slurm_commands_run(host):
    assert host.run("sinfo --version").stdout.startswith("slurm ")
    assert host.run("slurmd -V").rc == 0


def test_no_munge_key_baked_in(host):
    assert not host.file("/etc/munge/munge.key").exists


def test_cluster_name_recorded(host):
    assert host.file("/etc/slurm/cluster-name.conf").contains("^ClusterName=")
