"""Hygiene every image must pass: nothing of the build, nothing per-instance, baked in."""

from __future__ import annotations

import re

HOME_DIRS = "/root /home"


def mtime(host, path: str) -> int:
    return int(host.check_output(f"stat -c %Y {path}"))


def test_booted_standalone_to_a_running_system(host):
    state = host.run("systemctl is-system-running --wait").stdout.strip()
    assert state in ("running", "degraded"), host.run("systemctl --failed --no-legend").stdout


def test_ssh_host_keys_generated_at_first_boot(host, boot_time):
    keys = host.check_output("ls /etc/ssh/ssh_host_*_key").split()
    assert keys, "no SSH host keys at all"
    for key in keys:
        assert mtime(host, key) >= boot_time - 2, f"{key} predates this boot: baked into the image"


def test_machine_id_was_empty_in_the_artifact(host, boot_time):
    machine_id = host.file("/etc/machine-id").content_string.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", machine_id), machine_id
    # An empty machine-id is generated at first boot: the file is written (or still
    # mounted over) during this boot. A baked-in one keeps its build-time mtime.
    committed_now = mtime(host, "/etc/machine-id") >= boot_time - 2
    still_transient = host.run("findmnt --noheadings /etc/machine-id").rc == 0
    assert committed_now or still_transient, "/etc/machine-id predates this boot"
    assert (
        not host.file("/var/lib/dbus/machine-id").exists
        or host.file("/var/lib/dbus/machine-id").is_symlink
    )


def test_no_shell_histories(host):
    found = host.run(
        f"find {HOME_DIRS} -maxdepth 3 -type f \\( -name '.*_history' -o -name '.lesshst' "
        "-o -name '.viminfo' \\) -size +0"
    )
    assert found.stdout.strip() == ""


def test_build_key_in_no_authorized_keys(host, build):
    assert build["public_key"], "the build record has no build public key"
    material = build["public_key"].split()[1]
    result = host.run(f"grep -rlsF {material} {HOME_DIRS} /etc/ssh")
    assert result.rc == 1, f"the build key is still authorized in: {result.stdout}"


def test_only_the_verification_key_is_authorized(host, build):
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
    leftovers = [
        "/root/.aws",
        "/root/.config/gcloud",
        "/root/.config/openstack",
        "/etc/openstack",
        "/etc/apt/apt.conf.d/99imageforge-build-proxy",
        "/etc/dpkg/dpkg.cfg.d/99imageforge-build-unsafe-io",
        "/usr/local/share/ca-certificates/imageforge-build",
    ]
    for path in leftovers:
        assert not host.file(path).exists, path
    assert host.run("ls -d /home/*/.aws /home/*/.config/gcloud 2>/dev/null").stdout == ""
    pattern = "aws_secret_access_key|AWS_SECRET_ACCESS_KEY|OS_PASSWORD=|private_key_id"
    found = host.run(f"grep -rlEs '{pattern}' /etc {HOME_DIRS} /var/lib/cloud")
    assert found.stdout.strip() == "", found.stdout
    for value in filter(None, build["secrets"].splitlines()):
        hit = host.run(f"grep -rlsF -e {_quote(value)} /etc {HOME_DIRS} /var/lib/cloud /var/log")
        assert hit.rc == 1, f"a proxy setting of the build is still in: {hit.stdout}"


def test_no_apt_lists_or_caches(host):
    lists = host.check_output("find /var/lib/apt/lists -type f ! -name lock")
    debs = host.check_output("find /var/cache/apt -type f \\( -name '*.deb' -o -name '*.bin' \\)")
    assert lists == "", lists
    assert debs == "", debs


def test_cloud_init_ran_once_for_this_instance_only(host, build):
    status = host.run("cloud-init status --wait")
    assert "status: done" in status.stdout, status.stdout + status.stderr
    instances = host.check_output("ls /var/lib/cloud/instances").split()
    assert instances == [build["instance_id"]], (
        f"state of an earlier instance survived: {instances}"
    )


def test_sshd_refuses_password_login_for_root(host):
    config = host.check_output("sshd -T 2>/dev/null")
    settings = dict(line.split(" ", 1) for line in config.splitlines() if " " in line)
    assert settings["permitrootlogin"] in ("no", "prohibit-password", "without-password")
    assert settings["passwordauthentication"] == "no"


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"
