"""Hygiene every image must pass: nothing of the build, nothing per-instance, baked in.

Checks run as the image user over one shared SSH connection; what needs root comes from the
root_facts fixture (one sudo call for all of them).
"""

from __future__ import annotations

import json
import os
import re
import shlex


def test_booted_standalone_to_a_running_system(host):
    state = host.run("systemctl is-system-running --wait").stdout.strip()
    # "degraded" means a unit failed: that is a broken image, not a booted one.
    assert state == "running", host.run("systemctl --failed --no-legend").stdout


def test_a_kernel_panic_reboots_instead_of_hanging(host):
    assert host.file("/proc/sys/kernel/panic").content_string.strip() == "10"


def test_ssh_host_keys_generated_at_first_boot(host, boot_time):
    stats = host.check_output("stat -c '%n %Y' /etc/ssh/ssh_host_*_key").splitlines()
    assert stats, "no SSH host keys at all"
    for line in stats:
        key, mtime = line.rsplit(" ", 1)
        assert int(mtime) >= boot_time - 2, f"{key} predates this boot: baked into the image"


def test_machine_id_was_empty_in_the_artifact(host, boot_time):
    machine_id, mtime, mounted, dbus = host.check_output(
        "cat /etc/machine-id; stat -c %Y /etc/machine-id; "
        "findmnt --noheadings /etc/machine-id >/dev/null && echo mounted || echo no; "
        "if [ -L /var/lib/dbus/machine-id ] || [ ! -e /var/lib/dbus/machine-id ]; "
        "then echo ok; else echo file; fi"
    ).split()
    assert re.fullmatch(r"[0-9a-f]{32}", machine_id), machine_id
    # An empty machine-id is generated at first boot: the file is written (or still
    # mounted over) during this boot. A baked-in one keeps its build-time mtime.
    assert int(mtime) >= boot_time - 2 or mounted == "mounted", "/etc/machine-id predates this boot"
    assert dbus == "ok", "/var/lib/dbus/machine-id is a file of its own"


def test_no_shell_histories(root_facts):
    assert root_facts["histories"] == "", root_facts["histories"]
    assert root_facts["histories.rc"] == "0", "find could not look everywhere"


def test_build_key_in_no_authorized_keys(root_facts, build):
    assert build["public_key"], "the build record has no build public key"
    assert root_facts["build_key.rc"] == "1", (
        f"the build key is still authorized in: {root_facts['build_key']}"
    )


def test_only_the_verification_key_is_authorized(root_facts, build):
    # cloud-init writes the instance key for the default user, and (disable_root) for root
    # behind a command= that refuses the login; no other key may be there.
    material = {
        word
        for line in root_facts["authorized_keys"].splitlines()
        if not line.startswith("#")
        for word in line.split()
        if word.startswith("AAAA")
    }
    assert material == {build["verify_key"].split()[1]}, material


def test_no_vagrant_user_or_insecure_key_outside_the_box(root_facts):
    assert root_facts["vagrant"].strip() == "", root_facts["vagrant"]


def test_no_cloud_credentials_or_proxy_secrets(root_facts):
    assert root_facts["leftovers"] == "", root_facts["leftovers"]
    assert root_facts["credentials"] == "", root_facts["credentials"]
    assert root_facts["proxy_values"] == "", (
        f"a proxy setting of the build is still in: {root_facts['proxy_values']}"
    )


def test_no_apt_lists_or_caches(root_facts):
    assert root_facts["apt.rc"] == "0", "find could not read the apt directories"
    assert root_facts["apt"] == "", root_facts["apt"]


def test_cloud_init_ran_once_for_this_instance_only(host, build):
    # verify waited for a running system, so cloud-init's last stage is over: read its result
    # (as `cloud-init status` would, without starting Python in an emulated guest).
    out = host.check_output("cat /run/cloud-init/result.json; echo; ls /var/lib/cloud/instances")
    result_json, _, listing = out.partition("\n}\n")
    result = json.loads(result_json + "\n}")
    assert result["v1"]["errors"] == [], result
    assert result["v1"]["datasource"], result
    instances = listing.split()
    assert instances == [build["instance_id"]], (
        f"state of an earlier instance survived: {instances}"
    )


def test_sshd_refuses_password_login_for_root(root_facts):
    lines = root_facts["sshd"].splitlines()
    settings = dict(line.split(" ", 1) for line in lines if " " in line)
    assert settings["permitrootlogin"] in ("no", "prohibit-password", "without-password")
    assert settings["passwordauthentication"] == "no"


def test_no_multicast_name_service_listens(host):
    """No LLMNR (5355) or mDNS (5353) responder: an image neither announces itself nor answers
    its neighbours' name queries (systemd-resolved does both by default)."""
    listening = host.check_output("ss -Hlnu; ss -Hlnt")
    ports = {line.split()[3].rpartition(":")[2] for line in listening.splitlines() if line.strip()}
    assert not ports & {"5353", "5355"}, listening


METADATA_PROBE = """
import errno, socket
try:
    s = socket.create_connection(("169.254.169.254", 80), timeout=3)
    s.sendall(b"GET /latest/user-data HTTP/1.0\\r\\n\\r\\n")
    print("answered" if s.recv(200) else "closed")
except TimeoutError:
    print("timeout")
except OSError as exc:
    print(errno.errorcode.get(exc.errno, str(exc)))
"""


def test_only_root_reaches_the_instance_metadata_service(host):
    """User-data (a MUNGE key, storage keys) is served there to whoever asks: the image's
    nftables guard rejects every user but root. Where the address has no route (a local VM's
    restricted network), a device route is added for the test: packets pass the guard before
    the link, and root's then find nobody (a cloud's service would answer)."""
    assert host.run("systemctl is-active imageforge-metadata-guard.service").stdout.strip() == (
        "active"
    )
    routed = host.run("ip route get 169.254.169.254").rc == 0
    if not routed:
        device = host.check_output("ip -o -4 route show scope link").split()[2]
        host.check_output(f"sudo ip route add 169.254.169.254/32 dev {device}")
    try:
        probe = f"python3 -c {shlex.quote(METADATA_PROBE)}"
        users = sorted({"nobody", os.environ.get("IMAGE_USER") or "nobody"})
        for user in users:
            said = host.run(f"sudo -u {user} {probe}").stdout.strip()
            assert said in ("ECONNREFUSED", "ECONNRESET"), f"{user}: {said}"
        said = host.run(f"sudo {probe}").stdout.strip()
        assert said not in ("ECONNREFUSED", "ECONNRESET", "ENETUNREACH"), f"root: {said}"
        rules = host.check_output("sudo nft list table inet imageforge_metadata")
        rejected = re.search(r"tcp counter packets (\d+)", rules)
        assert rejected and int(rejected.group(1)) >= len(users), rules  # the guard did it
    finally:
        if not routed:
            host.run("sudo ip route del 169.254.169.254/32")
