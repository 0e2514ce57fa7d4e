"""Hygiene every image must pass: nothing of the build, nothing per-instance, baked in.

Checks run as the image user over one shared SSH connection; only what needs root runs under
sudo (about a third of a second per command in an emulated guest), one command per check.
"""

from __future__ import annotations

import json
import re
import shlex

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
CREDENTIALS = "aws_secret_access_key|AWS_SECRET_ACCESS_KEY|OS_PASSWORD=|private_key_id"


def test_booted_standalone_to_a_running_system(host):
    state = host.run("systemctl is-system-running --wait").stdout.strip()
    assert state in ("running", "degraded"), host.run("systemctl --failed --no-legend").stdout


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


def test_no_shell_histories(host):
    with host.sudo():
        found = host.run(
            f"find {HOME_DIRS} -maxdepth 3 -type f \\( -name '.*_history' -o -name '.lesshst' "
            "-o -name '.viminfo' \\) -size +0"
        )
    assert found.rc == 0 and found.stdout.strip() == "", found.stdout + found.stderr


def test_build_key_in_no_authorized_keys(host, build):
    assert build["public_key"], "the build record has no build public key"
    material = build["public_key"].split()[1]
    with host.sudo():
        result = host.run(f"grep -rlsF {material} {HOME_DIRS} /etc/ssh")
    assert result.rc == 1, f"the build key is still authorized in: {result.stdout}"


def test_only_the_verification_key_is_authorized(host, build):
    with host.sudo():
        keys = host.check_output(
            "cat /home/*/.ssh/authorized_keys /root/.ssh/authorized_keys 2>/dev/null || true"
        )
    # cloud-init writes the instance key for the default user, and (disable_root) for root
    # behind a command= that refuses the login; no other key may be there.
    material = {
        word
        for line in keys.splitlines()
        if not line.startswith("#")
        for word in line.split()
        if word.startswith("AAAA")
    }
    assert material == {build["verify_key"].split()[1]}, material


def test_no_cloud_credentials_or_proxy_secrets(host, build):
    secrets = [v for v in build["secrets"].splitlines() if v]
    values = " ".join(f"-e {shlex.quote(v)}" for v in secrets)
    script = (
        f"for p in {' '.join(LEFTOVERS)} /home/*/.aws /home/*/.config/gcloud; do "
        '[ -e "$p" ] && echo "leftover: $p"; done; '
        f"grep -rlEs '{CREDENTIALS}' /etc {HOME_DIRS} /var/lib/cloud | sed 's/^/credential: /'; "
        + (
            f"grep -rlsF {values} /etc {HOME_DIRS} /var/lib/cloud /var/log | sed 's/^/proxy: /'; "
            if secrets
            else ""
        )
        + "echo done"
    )
    with host.sudo():
        found = host.check_output(f"sh -c {shlex.quote(script)}")
    assert found.splitlines()[-1] == "done", found
    assert found.splitlines()[:-1] == [], found


def test_no_apt_lists_or_caches(host):
    with host.sudo():
        found = host.check_output(
            "find /var/lib/apt/lists -type f ! -name lock; "
            "find /var/cache/apt -type f \\( -name '*.deb' -o -name '*.bin' \\)"
        )
    assert found == "", found


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


def test_sshd_refuses_password_login_for_root(host):
    with host.sudo():
        config = host.check_output("sshd -T 2>/dev/null")
    settings = dict(line.split(" ", 1) for line in config.splitlines() if " " in line)
    assert settings["permitrootlogin"] in ("no", "prohibit-password", "without-password")
    assert settings["passwordauthentication"] == "no"
