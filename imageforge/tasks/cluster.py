"""`invoke cluster up|status|down`: a Slurm cluster on this machine from the slurm-node build."""

from __future__ import annotations

import shlex

from invoke.context import Context
from invoke.tasks import task

from imageforge import log
from imageforge.errors import ImageforgeError
from imageforge.tasks.common import friendly, project
from imageforge.tools import cluster as clusters

HELP = {
    "action": "up, status or down",
    "image": "the flavor to boot: slurm-node",
    "workers": "with up: number of workers besides the controller (default 2)",
    "config": "path to images.yml (default: ./images.yml)",
}
ACTIONS = ("up", "status", "down")


@task(help=HELP, positional=["action"])
@friendly
def cluster(
    c: Context, action: str, image: str = "slurm-node", workers: int = 2, config: str | None = None
) -> None:
    """A Slurm cluster from the slurm-node build: `invoke cluster up|status|down`."""
    if action not in ACTIONS:
        raise ImageforgeError(f"unknown action {action!r}; use one of: {', '.join(ACTIONS)}")
    proj = project(config)
    if action == "up":
        if image != clusters.FLAVOR:
            raise ImageforgeError(f"clusters are made of {clusters.FLAVOR} images, not {image!r}")
        with log.step(f"cluster up: 1 controller + {workers} workers"):
            _summary(clusters.up(proj, int(workers)))
    elif action == "status":
        found = clusters.status(proj)
        if found is None:
            log.info("no cluster is running (start one with `invoke cluster up`)")
            return
        _summary(found[0])
        log.info(found[1])
    else:
        stopped = clusters.down(proj)
        log.info("cluster stopped and removed" if stopped else "no cluster was running")


def _summary(cluster: clusters.Cluster) -> None:
    log.info(f"cluster {cluster.name} from build {cluster.build_id}:")
    for node in cluster.nodes:
        alive = "running" if clusters.alive(node.pid, node.pid_token) else "stopped"
        command = shlex.join(cluster.ssh_argv(node))
        log.info(f"  {node.name:<8} {node.role:<10} {node.address:<12} {alive:<8} {command}")
    log.info("try: " + shlex.join(cluster.ssh_argv(cluster.controller, "srun -N2 hostname")))


TASKS = [cluster]
