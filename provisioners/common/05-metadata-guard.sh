#!/bin/sh
# Runs in every build: only root may reach the cloud's instance metadata service.
# User-data (which can carry a cluster's MUNGE key or a desktop's storage keys) is served there
# to any process that asks; an nftables rule, loaded before the network and before any login,
# rejects every other user's packets to the metadata addresses (AWS, GCP and OpenStack:
# 169.254.169.254; AWS over IPv6: fd00:ec2::254).
set -eu
if ! command -v nft > /dev/null 2>&1; then
    echo "imageforge: nft is missing (the nftables package), so the metadata guard cannot load" >&2
    exit 1
fi
install -d -m 0755 /usr/local/lib/imageforge
cat > /usr/local/lib/imageforge/metadata-guard.nft <<'NFT'
#!/usr/sbin/nft -f
# imageforge: the instance metadata service answers root only.
table inet imageforge_metadata
delete table inet imageforge_metadata
table inet imageforge_metadata {
    chain output {
        type filter hook output priority filter; policy accept;
        ip daddr 169.254.169.254 meta skuid != 0 meta l4proto tcp counter reject with tcp reset
        ip daddr 169.254.169.254 meta skuid != 0 counter reject
        ip6 daddr fd00:ec2::254 meta skuid != 0 meta l4proto tcp counter reject with tcp reset
        ip6 daddr fd00:ec2::254 meta skuid != 0 counter reject
    }
}
NFT
chmod 0644 /usr/local/lib/imageforge/metadata-guard.nft
cat > /etc/systemd/system/imageforge-metadata-guard.service <<'UNIT'
[Unit]
Description=imageforge: only root may reach the instance metadata service
Documentation=file:///usr/local/lib/imageforge/metadata-guard.nft
DefaultDependencies=no
After=systemd-modules-load.service local-fs.target
Wants=network-pre.target
Before=network-pre.target cloud-init-local.service systemd-user-sessions.service shutdown.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/nft -f /usr/local/lib/imageforge/metadata-guard.nft

[Install]
WantedBy=sysinit.target
UNIT
systemctl enable --no-reload imageforge-metadata-guard.service
