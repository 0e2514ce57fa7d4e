#!/usr/bin/env bash
# Installs everything imageforge needs on a fresh Debian 12 machine (run as root, or with sudo):
# Debian packages for Packer, QEMU and the offline base-image build, then imageforge itself
# with its test dependencies into the current Python environment.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
    packer                          # Debian's Packer 1.6.6: qemu, amazon-ebs, googlecompute, openstack
    qemu-system-x86 qemu-utils      # the local cloud, and qemu-img
    mmdebstrap                      # the Debian base image, from packages
    apt-utils                       # apt-ftparchive: test_outdated's local package archive
    e2fsprogs fdisk                 # mke2fs -d and sfdisk: a disk image without loop devices
    vde2                            # vde_switch: the private network of `invoke cluster up`
    iproute2                        # ip netns: the cluster test runs in a namespace of its own
    openssh-client                  # testinfra's ssh backend, ssh-keygen for ephemeral keys
    tesseract-ocr tesseract-ocr-eng # reads the attendee number off a desktop's screenshot
    squashfs-tools socat            # desktop tests: a squashfs to share, a guest's way to S3
    vagrant vagrant-libvirt         # the Vagrant boxes' tests: the real vagrant and its provider
    libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients dnsmasq-base iptables
    chromium                        # headless: the build report as a person sees it
    git ca-certificates
)

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

sudo_ apt-get update -q
sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    $(printf '%s\n' "${APT_PACKAGES[@]}" | sed 's/#.*//' | xargs)

python3 -m pip install -q -e '.[test,services]'
echo "imageforge is installed: $(packer version | head -1), $(qemu-system-x86_64 --version | head -1)"
