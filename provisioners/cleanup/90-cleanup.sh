#!/bin/sh
# Runs last in every build: leaves nothing of the build, nor anything per-instance, in the image.
set -eu
export DEBIAN_FRONTEND=noninteractive

# What the host passed in for this build only (proxy settings, CA certificates).
rm -f /etc/apt/apt.conf.d/99imageforge-build-proxy /etc/dpkg/dpkg.cfg.d/99imageforge-build-unsafe-io
if [ -d /usr/local/share/ca-certificates/imageforge-build ]; then
    rm -rf /usr/local/share/ca-certificates/imageforge-build
    update-ca-certificates --fresh > /dev/null
fi

# Package caches and lists (pip's too).
rm -rf /root/.cache/pip /home/*/.cache/pip
apt-get -y -q autoremove --purge > /dev/null
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

# Per-instance identity: machine-id, SSH host keys, cloud-init state, DHCP leases.
truncate -s 0 /etc/machine-id
rm -f /var/lib/dbus/machine-id
rm -f /etc/ssh/ssh_host_*
cloud-init clean --logs --seed > /dev/null 2>&1 || cloud-init clean --logs
rm -rf /var/lib/dhcp/* /var/lib/NetworkManager/*.lease 2>/dev/null || true

# Secrets and identity a first boot makes (none should exist yet; a password or key that a
# provisioner's test run left would be shared by every instance).
rm -rf /var/lib/imageforge/private/* /etc/passwd-s3fs /etc/imageforge/attendee
rm -f /var/lib/imageforge/desktop/background.png /home/*/.vnc/passwd /root/.vnc/passwd \
    /home/*/.config/tigervnc/passwd /root/.config/tigervnc/passwd
# Secrets that services make when they first start, which the build VM's boot may have done.
rm -f /etc/ssl/private/ssl-cert-snakeoil.key /etc/ssl/certs/ssl-cert-snakeoil.pem
rm -rf /var/lib/rabbitmq/.erlang.cookie /var/lib/rabbitmq/mnesia

# Keys and histories: the build's SSH key goes from every account.
for home in /root /home/*; do
    rm -f "$home/.ssh/authorized_keys" "$home/.bash_history" "$home/.python_history" \
        "$home/.lesshst" "$home/.viminfo" "$home/.wget-hsts"
done

# Logs and temporary files.
journalctl --rotate > /dev/null 2>&1 || true
journalctl --vacuum-time=1s > /dev/null 2>&1 || true
find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \) -delete
# -c: no O_CREAT, which fs.protected_regular refuses even root in sticky log directories
find /var/log -type f -exec truncate -c -s 0 {} +
rm -rf /tmp/* /var/tmp/*

# Free space back to the host, so the compressed image stays small.
fstrim -av > /dev/null 2>&1 || true
sync
