"""slurm-node: Slurm daemons and MUNGE installed, nothing cluster-specific baked in."""

import re

PACKAGES = ("slurmd", "slurmctld", "slurm-client", "munge")
# Before Slurm 23.11 (Debian 12 has 22.05) dynamic nodes needed TreeWidth at its maximum.
FANOUT_WITH_DYNAMIC_NODES = (23, 11)


def slurm_version(host) -> tuple[int, int]:
    found = re.search(r"(\d+)\.(\d+)\.\d+", host.check_output("/usr/sbin/slurmctld -V"))
    assert found, "slurmctld -V names no version"
    return int(found[1]), int(found[2])


def unit_properties(host, units: str, *names: str) -> dict[str, dict[str, str]]:
    """{unit: {property: value}} of each of the units (a unit that does not exist included)."""
    out = host.check_output(f"systemctl show {units} -p Id,{','.join(names)}")
    blocks = [dict(line.split("=", 1) for line in b.splitlines()) for b in out.split("\n\n")]
    return {block["Id"]: block for block in blocks}


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


def test_first_boot_unit_ran_after_cloud_init_wrote_the_user_data(host):
    # cloud-init's network stage writes the user-data, the host name and /etc/hosts; its unit
    # is cloud-init.service in Debian 12 (cloud-init 22.4), cloud-init-network.service in 13.
    stages = ("cloud-init.service", "cloud-init-network.service")
    units = unit_properties(
        host,
        " ".join([*stages, "imageforge-slurm.service"]),
        *("LoadState", "After", "ActiveEnterTimestampMonotonic", "InactiveExitTimestampMonotonic"),
    )
    loaded = [units[u] for u in stages if units[u]["LoadState"] == "loaded"]
    assert len(loaded) == 1, units
    ours = units["imageforge-slurm.service"]
    assert set(stages) <= set(ours["After"].split()), ours["After"]
    done = int(loaded[0]["ActiveEnterTimestampMonotonic"])
    assert 0 < done <= int(ours["InactiveExitTimestampMonotonic"]), (loaded, ours)


def test_controller_conf_suits_the_installed_slurm(host):
    conf = host.check_output("/usr/local/sbin/imageforge-slurm-setup --print-conf")
    settings = dict(line.split("=", 1) for line in conf.splitlines() if line and line[0] != "#")
    assert settings["SlurmctldParameters"] == "enable_configless"
    assert settings["SelectType"] == "select/cons_tres"  # dynamic nodes need both
    assert int(settings["MaxNodeCount"]) > 0
    needs_tree_width = slurm_version(host) < FANOUT_WITH_DYNAMIC_NODES
    assert ("TreeWidth" in settings) == needs_tree_width, settings


def test_daemons_run_as_the_users_the_first_boot_program_prepares_for(host):
    # The program gives the state directory to `slurm` and the MUNGE key to `munge`; slurmctld
    # runs as root and drops to SlurmUser=slurm (22.05) or runs as slurm from the start (24.11).
    assert len(host.check_output("getent passwd slurm munge").splitlines()) == 2
    user = unit_properties(host, "slurmctld.service", "User")["slurmctld.service"]["User"]
    assert user in ("", "slurm"), user


def test_configless_workers_may_start_without_a_local_slurm_conf(host):
    # Debian 12's slurmd.service requires /etc/slurm/slurm.conf; the drop-in lifts that and
    # restarts a worker that started before its controller answered.
    props = unit_properties(host, "slurmd.service", "DropInPaths", "Restart")["slurmd.service"]
    assert "imageforge-configless.conf" in props["DropInPaths"], props
    assert props["Restart"] == "on-failure"


def test_node_without_a_key_stays_unconfigured_and_says_so(host, root_facts):
    # The verification boot gives no imageforge_slurm block: nothing may start, and the node
    # says why in motd and on the console (its journal, here).
    motd = host.check_output("cat /run/motd.d/50-imageforge-slurm")
    assert "not configured" in motd, motd
    assert "not configured" in root_facts["slurm_journal"], root_facts["slurm_journal"]
    states = host.run("systemctl is-active munge slurmd slurmctld").stdout.split()
    assert "active" not in states, states
