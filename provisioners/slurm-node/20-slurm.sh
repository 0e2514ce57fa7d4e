#!/bin/sh
# Slurm node: the controller and worker daemons and MUNGE. The role (controller or worker),
# the munge key and slurm.conf are per cluster, so they are set at first boot, not baked in.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends slurmd slurmctld slurm-client munge
# Daemons start once the instance is configured, not in the image.
systemctl disable slurmd slurmctld munge > /dev/null 2>&1 || true
# The package generates a munge key; a key shared by every instance of an image is a secret
# baked in, so it goes, and first boot creates (or receives) the cluster's own.
rm -f /etc/munge/munge.key
mkdir -p /etc/slurm
echo "ClusterName=${SLURM_CLUSTER_NAME:-imageforge}" > /etc/slurm/cluster-name.conf
