#!/bin/sh
# Slurm node: the daemons and MUNGE are declared packages (images.yml). The role (controller or
# worker), the munge key and slurm.conf are per cluster, so they are set at first boot.
set -eu
# Daemons start once the instance is configured, not in the image.
systemctl disable slurmd slurmctld munge > /dev/null 2>&1 || true
# The package generates a munge key; a key shared by every instance of an image is a secret
# baked in, so it goes, and first boot creates (or receives) the cluster's own.
rm -f /etc/munge/munge.key
mkdir -p /etc/slurm
echo "ClusterName=${SLURM_CLUSTER_NAME:-imageforge}" > /etc/slurm/cluster-name.conf
