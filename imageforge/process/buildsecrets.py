"""Per-build secrets and what passes from the host into a build VM.

The build's SSH key is generated per build in a private temporary directory and deleted with
it; its public half is only ever in the build VM's cloud-init seed, and cleanup removes it from
the image. Proxy settings reach Packer as environment variables (never a file); extra CA
certificates are copied into a temporary directory that Packer uploads, and cleanup removes.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from imageforge.config import settings
from imageforge.errors import ConfigError
from imageforge.process import runner

PROXY_NAMES = ("http_proxy", "https_proxy", "no_proxy")
# Debian and Ubuntu keep locally added CA certificates here (update-ca-certificates reads it).
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
EXTRA_CA_ENV = "IMAGEFORGE_EXTRA_CA_CERTS"


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: str


def ssh_keypair(directory: Path, comment: str) -> KeyPair:
    """A fresh ed25519 key pair in directory (which must be private to this build)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    private = directory / "id_ed25519"
    runner.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", private],
        stream=False,
        what="ssh-keygen",
    )
    return KeyPair(private, (directory / "id_ed25519.pub").read_text().strip())


def host_proxies(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The host's proxy settings (lower- or upper-case names), by their lower-case names."""
    environ = dict(os.environ if environ is None else environ)
    found = {}
    for name in PROXY_NAMES:
        value = environ.get(name) or environ.get(name.upper())
        if value:
            found[name] = value
    return found


def host_ca_certificates(environ: dict[str, str] | None = None) -> list[Path]:
    """Extra CA certificates to trust during a build.

    $IMAGEFORGE_EXTRA_CA_CERTS (a PEM file or a directory of them, ':'-separated) if set,
    otherwise the host's locally added CAs in /usr/local/share/ca-certificates.
    """
    setting = settings.current().extra_ca_certs if environ is None else environ.get(EXTRA_CA_ENV)
    sources = [Path(p) for p in setting.split(":") if p] if setting is not None else [LOCAL_CA_DIR]
    found: list[Path] = []
    for source in sources:
        if source.is_dir():
            found += sorted(
                p for p in source.rglob("*") if p.suffix in (".crt", ".pem") and p.is_file()
            )
        elif source.is_file():
            found.append(source)
    origin = f"${EXTRA_CA_ENV}" if setting is not None else str(LOCAL_CA_DIR)
    for path in found:
        _check_certificate_only(path, origin)
    return found


PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
CERTIFICATE = b"-----BEGIN CERTIFICATE-----"


def _check_certificate_only(path: Path, origin: str) -> None:
    """A CA file goes into the build VM as it is: it must hold certificates, and never a key."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{origin}: cannot read {path}: {exc.strerror}") from None
    if PRIVATE_KEY.search(data):
        raise ConfigError(
            f"{origin}: {path} holds a private key; refusing to copy it into the build "
            "VM (give the CA certificate alone)"
        )
    if CERTIFICATE not in data:
        raise ConfigError(f"{origin}: {path} holds no PEM certificate (BEGIN CERTIFICATE)")


def stage_host_files(directory: Path, certificates: list[Path]) -> Path:
    """Lay out what the build's file provisioner uploads: ca/<n>-<name>.crt."""
    ca = directory / "ca"
    ca.mkdir(parents=True, exist_ok=True)
    for index, cert in enumerate(certificates):
        shutil.copyfile(cert, ca / f"{index:02d}-{cert.stem}.crt")
    return directory
