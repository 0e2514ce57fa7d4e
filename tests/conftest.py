"""Shared fixtures. tests/infra holds testinfra suites that run inside built VMs
(imageforge verify), not here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

collect_ignore = ["infra"]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's EC2 implementation as a real HTTP server on 127.0.0.1; yields its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws(moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[str]:
    """A fresh moto account, with boto3 (and Packer) pointed at it through the environment."""
    requests.post(f"{moto_server}/moto-api/reset", timeout=10).raise_for_status()
    for key, value in {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "AKIAIMAGEFORGETEST00",
        "AWS_SECRET_ACCESS_KEY": "imageforge-test-secret",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }.items():
        monkeypatch.setenv(key, value)
    yield moto_server
