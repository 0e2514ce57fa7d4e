"""imageforge: build, verify and share VM images with Packer on AWS, GCP, OpenStack and QEMU."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("imageforge")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0"
