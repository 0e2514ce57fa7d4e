#!/bin/sh
# Runs first in every build: makes the host's proxy settings and extra CA certificates
# (for TLS-inspecting corporate proxies) work inside the build VM, and lets dpkg skip fsync
# while the build runs. Nothing here is kept:
# provisioners/cleanup/90-cleanup.sh removes all of it before the image is taken.
set -eu
conf=/etc/apt/apt.conf.d/99imageforge-build-proxy
: > "$conf"
[ -n "${http_proxy:-}" ] && echo "Acquire::http::Proxy \"$http_proxy\";" >> "$conf"
[ -n "${https_proxy:-}" ] && echo "Acquire::https::Proxy \"$https_proxy\";" >> "$conf"
[ -s "$conf" ] || rm -f "$conf"

if ls /tmp/imageforge-host/ca/*.crt > /dev/null 2>&1; then
    mkdir -p /usr/local/share/ca-certificates/imageforge-build
    cp /tmp/imageforge-host/ca/*.crt /usr/local/share/ca-certificates/imageforge-build/
    update-ca-certificates > /dev/null
    echo "imageforge: trusting $(ls /tmp/imageforge-host/ca | wc -l) host CA certificate(s) for this build"
fi
rm -rf /tmp/imageforge-host

# Builds are throwaway until the image is taken: dpkg need not fsync every file (much faster
# under emulation). Cleanup removes this again.
echo force-unsafe-io > /etc/dpkg/dpkg.cfg.d/99imageforge-build-unsafe-io
