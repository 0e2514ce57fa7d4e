"""Host CA certificates passed into the build VM: certificates only, never a private key."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from imageforge.errors import ConfigError
from imageforge.process import buildsecrets

ENV = buildsecrets.EXTRA_CA_ENV


def ca_pair() -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    """A real self-signed CA certificate (PEM) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imageforge test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), key


def key_pem(key: ec.EllipticCurvePrivateKey, form: str) -> bytes:
    formats = {
        "pkcs8": (serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        "traditional": (
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
        "encrypted": (
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        ),
        "openssh": (serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()),
    }
    private_format, encryption = formats[form]
    return key.private_bytes(serialization.Encoding.PEM, private_format, encryption)


def test_certificates_from_a_file_and_a_directory_are_passed(tmp_path: Path) -> None:
    cert, _ = ca_pair()
    (tmp_path / "one.pem").write_bytes(cert)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "two.crt").write_bytes(cert)
    (tmp_path / "dir" / "notes.txt").write_text("not a certificate, and not picked up")
    found = buildsecrets.host_ca_certificates({ENV: f"{tmp_path / 'one.pem'}:{tmp_path / 'dir'}"})
    assert found == [tmp_path / "one.pem", tmp_path / "dir" / "two.crt"]
    staged = buildsecrets.stage_host_files(tmp_path / "host", found)
    assert sorted(p.name for p in (staged / "ca").iterdir()) == ["00-one.crt", "01-two.crt"]


@pytest.mark.parametrize("form", ["pkcs8", "traditional", "encrypted", "openssh"])
@pytest.mark.parametrize("with_certificate", [True, False])
def test_a_file_holding_a_private_key_is_refused(
    tmp_path: Path, form: str, with_certificate: bool
) -> None:
    cert, key = ca_pair()
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes((cert if with_certificate else b"") + key_pem(key, form))
    with pytest.raises(ConfigError) as refused:
        buildsecrets.host_ca_certificates({ENV: str(tmp_path)})
    assert refused.value.exit_code == 2
    assert str(refused.value) == (
        f"${ENV}: {bundle} holds a private key; refusing to copy it into the build VM "
        "(give the CA certificate alone)"
    )


def test_a_file_without_a_certificate_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.crt").write_text("# nothing here\n")
    with pytest.raises(ConfigError, match=r"empty.crt holds no PEM certificate"):
        buildsecrets.host_ca_certificates({ENV: str(tmp_path / "empty.crt")})
