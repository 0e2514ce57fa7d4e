"""`invoke vagrant catalog|seeds`: the box catalog, and first-boot seeds for vagrant/slurm-node."""

from __future__ import annotations

import base64
import ipaddress
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from invoke.context import Context
from invoke.tasks import task

from imageforge import log
from imageforge.config import matrix, publishpolicy
from imageforge.config.configerrors import suggest
from imageforge.errors import ConfigError, ImageforgeError
from imageforge.process import qemu
from imageforge.records import state
from imageforge.records.record import BuildRecord, artifacts_root
from imageforge.stages import attest as attesting
from imageforge.tasks.common import friendly, integer, project
from imageforge.tools import cluster, clusterseeds, vagrantcatalog

HELP = {
    "action": "catalog (write the box catalog) or seeds (first-boot user-data for slurm-node)",
    "image": "with catalog: the flavor (default: every flavor)",
    "output": "catalog: directory (default artifacts/vagrant); seeds: (vagrant/slurm-node/seeds)",
    "base_url": "with catalog: where the catalog directory will be served (default: file://)",
    "workers": "with seeds: number of workers besides the controller (default 1)",
    "config": "path to images.yml (default: ./images.yml)",
}
ACTIONS = ("catalog", "seeds")
SEEDS_DIR = Path("vagrant/slurm-node/seeds")
MAX_WORKERS = 8


@task(help=HELP, positional=["action"])
@friendly
def vagrant(
    c: Context,
    action: str,
    image: str | None = None,
    output: str | None = None,
    base_url: str | None = None,
    workers: int = 1,
    config: str | None = None,
) -> None:
    """Vagrant for desktop users: `invoke vagrant catalog` writes `metadata.json` box catalogs
    that `vagrant box add URL/metadata.json` reads; `invoke vagrant seeds` makes the cluster's
    first-boot user-data for vagrant/slurm-node/Vagrantfile."""
    if action not in ACTIONS:
        raise ConfigError(
            f"unknown action {action!r}; use one of: {', '.join(ACTIONS)}"
            + suggest(action, ACTIONS)
        )
    proj = project(config)
    if base_url is not None:
        check_base_url(base_url)
    if action == "catalog":
        flavors = sorted({cell.flavor_name for cell in matrix.selected(proj, image, "local")})
        out = Path(output) if output else artifacts_root(proj.root) / "vagrant"
        prefix = proj.images.settings.name_prefix
        for flavor in flavors:
            description = proj.images.flavors[flavor].description
            records = state.records(proj.root, flavor, "local")
            if publishpolicy.requires_signature(proj.images, flavor, "local"):
                records = signed_only(records)
            if not vagrantcatalog.entries(records) and not (out / flavor).is_dir():
                log.info(
                    f"{prefix}/{flavor}: no verified box yet "
                    f"(`invoke build --image {flavor}` makes one)"
                )
                continue
            path, added = vagrantcatalog.write(
                records,
                flavor,
                f"{prefix}/{flavor}",
                out,
                base_url,
                description,
            )
            said = ", ".join(added) if added else "nothing new"
            log.info(f"{prefix}/{flavor}: {path} ({said})")
        return
    count = integer(workers, "--workers", minimum=1)
    if count > MAX_WORKERS:
        raise ConfigError(f"--workers must be 1 to {MAX_WORKERS}, not {count}")
    directory = Path(output) if output else proj.root / SEEDS_DIR
    for name, path in write_seeds(directory, count).items():
        log.info(f"{name}: {path}")


def check_base_url(url: str) -> None:
    """--base-url: an http(s) or file URL, with no space or control character."""
    parts = urlsplit(url)
    printable = url.isprintable() and not any(ch.isspace() for ch in url)
    if (
        not printable
        or parts.scheme not in ("http", "https", "file")
        or (parts.scheme != "file" and not parts.netloc)
        or parts.query
        or parts.fragment
    ):
        raise ConfigError(
            f"--base-url {url!r}: not a URL to serve boxes from; use http://, https:// or "
            "file:// with no query, fragment or space"
        )
    if "@" in parts.netloc:
        raise ConfigError(
            "--base-url: holds credentials (user@ or user:password@), which would be published "
            "in every metadata.json; give the URL without them (Vagrant can authenticate by "
            "itself, e.g. with VAGRANT_SERVER_URL and a token)"
        )
    if parts.scheme == "http" and not _loopback(parts.hostname or ""):
        log.warn(
            f"--base-url uses plain http:// for {parts.hostname}: boxes and their checksums "
            "travel unprotected; prefer https://"
        )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def write_seeds(directory: Path, workers: int, cluster_name: str = "vagrant") -> dict[str, Path]:
    """One NoCloud seed ISO per node, with a new MUNGE key for this cluster (files 600).

    The addresses and MACs are the ones vagrant/slurm-node/Vagrantfile gives each machine.
    """
    # Not listable, but traversable by libvirt's QEMU user, which is handed each seed (600) at
    # start and opens it by its path. A directory that exists keeps the mode its owner gave it.
    if directory.is_dir():
        if not directory.stat().st_mode & 0o001:
            log.warn(
                f"{directory} is not traversable by other users (o+x): libvirt's QEMU user "
                "cannot open the seeds in it, and `vagrant up` would wait forever"
            )
    else:
        directory.parent.mkdir(parents=True, exist_ok=True)
        directory.mkdir(mode=0o711)
        directory.chmod(0o711)  # whatever the umask
    munge = base64.b64encode(secrets.token_bytes(1024)).decode()
    names = ["ctl", *(f"worker{i}" for i in range(1, workers + 1))]
    hosts = {
        name: f"{cluster.CLUSTER_NET}.{cluster.CONTROLLER_HOST + i}" for i, name in enumerate(names)
    }
    written = {}
    for index, name in enumerate(names):
        role = "controller" if index == 0 else "worker"
        seed = qemu.make_seed(
            directory / f"{name}.iso",
            user_data=clusterseeds.slurm_user_data(role, cluster_name, hosts["ctl"], munge, hosts),
            meta_data=f"instance-id: vagrant-{cluster_name}-{name}-{secrets.token_hex(4)}\n"
            f"local-hostname: {name}\n",
            network_config=clusterseeds.network_config(
                f"52:54:00:12:34:{index:02x}", f"52:54:00:77:00:{index:02x}", hosts[name]
            ),
        )
        written[name] = seed
    return written


def signed_only(records: list[BuildRecord]) -> list[BuildRecord]:
    """Under require_signed, the verified builds whose provenance verifies; each other one is
    left out of the catalog with a warning."""
    kept = []
    for record in records:
        if state.unbound_reason(record) is not None:
            continue
        try:
            attesting.require_signed(record, None)
        except ImageforgeError as exc:
            log.warn(f"build {record.id} is not catalogued (require_signed): {exc.message}")
            continue
        kept.append(record)
    return kept


TASKS = [vagrant]
