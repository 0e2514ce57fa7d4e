"""`invoke cluster up|status|down`: a Slurm cluster on this machine from the slurm-node build."""

from __future__ import annotations

import shlex

from invoke import Collection, task

from imageforge import cluster as clusters
from imageforge import log
from imageforge.errors import ImageforgeError
from imageforge.tasks.common import friendly, project

HELP = {
    "image": "the flavor to boot: slurm-node",
    "workers": "number of workers besides the controller (default 2)",
    "config": "path to images.yml (default: ./images.yml)",
}


@task(help=HELP)
@friendly
def up(c, image="slurm-node", workers=2, config=None):
    """Boot 1 controller and N workers from the newest verified local slurm-node build."""
    if image != clusters.FLAVOR:
        raise ImageforgeError(f"clusters are made of {clusters.FLAVOR} images, not {image!r}")
    proj = project(config)
    with log.step(f"cluster up: 1 controller + {workers} workers"):
        cluster = clusters.up(proj, int(workers))
    _summary(cluster)


@task(help={"config": HELP["config"]})
@friendly
def status(c, config=None):
    """Show the cluster's nodes, their SSH commands and sinfo."""
    found = clusters.status(project(config))
    if found is None:
        log.info("no cluster is running (start one with `invoke cluster up`)")
        return
    cluster, sinfo = found
    _summary(cluster)
    log.info(sinfo)


@task(help={"config": HELP["config"]})
@friendly
def down(c, config=None):
    """Stop every VM of the cluster and remove its overlays, seeds, keys and sockets."""
    cluster = clusters.down(project(config))
    log.info("cluster stopped and removed" if cluster else "no cluster was running")


def _summary(cluster: clusters.Cluster) -> None:
    log.info(f"cluster {cluster.name} from build {cluster.build_id}:")
    for node in cluster.nodes:
        alive = "running" if clusters.alive(node.pid) else "stopped"
        command = shlex.join(cluster.ssh_argv(node))
        log.info(f"  {node.name:<8} {node.role:<10} {node.address:<12} {alive:<8} {command}")
    log.info("try: " + shlex.join(cluster.ssh_argv(cluster.controller, "srun -N2 hostname")))


collection = Collection("cluster", up, status, down)
