"""The key that signs provenance: an ed25519 key pair the user owns, in files.

`invoke keygen` writes the private key (PKCS#8 PEM, mode 0600, never over an existing file or
through a link) and its public half beside it (`.pub`, SubjectPublicKeyInfo PEM, which anyone
may have). The place is $IMAGEFORGE_SIGNING_KEY, else $XDG_CONFIG_HOME/imageforge/signing-key.
Signing and verifying go through securesystemslib's Signer and Key, so another Signer (a KMS
key) fits where the file's does.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, Signer, SSlibKey

from imageforge.config import settings
from imageforge.errors import ConfigError, ImageforgeError

PUBLIC_SUFFIX = ".pub"


def private_path() -> Path:
    """Where the signing key is (it may not exist yet)."""
    explicit = settings.current().signing_key
    if explicit is not None:
        return explicit.expanduser().absolute()
    config = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(config) if Path(config).is_absolute() else Path.home() / ".config"
    return base / "imageforge" / "signing-key"


def public_path(private: Path) -> Path:
    return private.with_name(private.name + PUBLIC_SUFFIX)


def generate(private: Path) -> tuple[Path, Path]:
    """A new key pair at private and private.pub; an existing key is never replaced."""
    if private.exists() or private.is_symlink():
        raise ImageforgeError(
            f"{private}: a signing key is already there; it is not replaced",
            hint="move it away first, or set IMAGEFORGE_SIGNING_KEY to another path",
        )
    if not private.parent.is_dir():
        private.parent.mkdir(mode=0o700, parents=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    descriptor = os.open(private, flags, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    public = public_path(private)
    public.unlink(missing_ok=True)  # a stale public half of a key that is gone
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def signer() -> Signer | None:
    """The user's signer, or None when there is no key (builds are then unsigned)."""
    private = private_path()
    if not private.exists():
        return None
    if private.stat().st_mode & 0o077:
        raise ImageforgeError(
            f"{private}: the signing key is readable by other users; it is not used",
            hint=f"chmod 600 {private}",
        )
    try:
        key = serialization.load_pem_private_key(private.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ImageforgeError(f"{private}: not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ImageforgeError(f"{private}: not an ed25519 key")
    return CryptoSigner(key)


def load_public(path: Path) -> SSlibKey:
    """A public key file (PEM) as a securesystemslib Key; a bad file is one clear error."""
    try:
        public = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the public key: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(f"{path}: not a PEM public key") from None
    try:
        return SSlibKey.from_crypto(public)
    except ValueError as exc:
        raise ImageforgeError(f"{path}: unsupported public key: {exc}") from None
