"""Flavor layers: built natively from the base recipe plus declared packages, read offline.

The layer is read without booting or mounting it: qemu-img makes a raw copy and debugfs reads
the ext4 partition at its offset, the way an auditor would look at an artifact.
"""

from __future__ import annotations

import pytest

from imageforge import config
from imageforge.clouds.local import base

from .conftest import ROOT, Offline

pytestmark = pytest.mark.integration


def slurm_recipe() -> base.BaseRecipe:
    packages = config.load(ROOT / "images.yml").images.flavors["slurm-node"].packages
    return base.BaseRecipe(extra_packages=packages)


@pytest.fixture(scope="module")
def layer() -> base.BaseImage:
    return base.ensure_base(slurm_recipe())


@pytest.fixture(scope="module")
def offline(layer: base.BaseImage, tmp_path_factory: pytest.TempPathFactory) -> Offline:
    return Offline(layer.path, tmp_path_factory.mktemp("layer-offline"))


def test_layer_records_the_installed_versions(layer: base.BaseImage) -> None:
    for name in ("slurmd", "slurmctld", "munge", "linux-image-cloud-amd64", "cloud-init"):
        assert layer.packages.get(name), name
    assert layer.path.is_relative_to(base.cache_dir() / "layers")


def test_layer_holds_nothing_per_instance(offline: Offline) -> None:
    assert offline.files("/etc")["machine-id"] == 0
    assert [n for n in offline.files("/etc/ssh") if n.startswith("ssh_host_")] == []
    assert offline.files("/var/lib/apt/lists") == {}
    assert [n for n in offline.files("/var/cache/apt/archives") if n.endswith(".deb")] == []
    assert [n for n in offline.files("/var/cache/apt") if n.endswith(".bin")] == []
    assert "munge.key" not in offline.files("/etc/munge")
    assert "random-seed" not in offline.files("/var/lib/systemd")
    # The build's dpkg and apt options (force-unsafe-io) stay out of the image.
    assert "99mmdebstrap" not in offline.files("/etc/dpkg/dpkg.cfg.d")
    assert "99mmdebstrap" not in offline.files("/etc/apt/apt.conf.d")
    logs = offline.files("/var/log")
    assert logs and all(size == 0 for size in logs.values()), logs


def test_layer_boots_lean(offline: Offline) -> None:
    units = offline.debugfs("ls -l /etc/systemd/system")
    for unit in ("apt-daily.timer", "modprobe@drm.service"):
        assert unit in units
    assert "/dev/null" in offline.debugfs("stat /etc/systemd/system/apt-daily.timer")
    cloud = offline.debugfs("cat /etc/cloud/cloud.cfg.d/50-imageforge.cfg")
    assert "datasource_list: [NoCloud, ConfigDrive, None]" in cloud
    assert "ssh_genkeytypes: [ed25519, ecdsa]" in cloud
    grub = offline.debugfs("cat /boot/grub/grub.cfg")
    assert "root=LABEL=rootfs" in grub and "set timeout=0" in grub


def test_second_cold_build_downloads_nothing(layer: base.BaseImage) -> None:
    """--refresh rebuilds the layer from the package lists; the .deb files come from the cache."""
    again = base.ensure_base(slurm_recipe(), force=True)
    if again.downloaded and not layer.built:
        # The cached layer came from an earlier run, whose .deb files may sit in an older
        # cache layout: this rebuild filled the cache, so the next one is the second cold build.
        again = base.ensure_base(slurm_recipe(), force=True)
    assert again.built and again.recipe_hash == layer.recipe_hash
    assert again.downloaded == 0
    assert again.packages.keys() == layer.packages.keys()
