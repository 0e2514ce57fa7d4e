"""A token endpoint for `packer validate` of OpenStack templates with no cloud at hand.

Packer's openstack builder authenticates while it validates. This answers Keystone v3's
password authentication (POST /v3/auth/tokens) with keystoneauth1's own V3Token fixture, on
127.0.0.1 only. It never backs a real build.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def token_body() -> dict[str, Any]:
    """A Keystone v3 token document, as /v3/auth/tokens returns it (keystoneauth1's fixture)."""
    from keystoneauth1 import fixture

    token = fixture.V3Token(
        user_id="validate",
        user_name="validate",
        user_domain_id="default",
        user_domain_name="Default",
        project_id="validate",
        project_name="validate",
        project_domain_id="default",
        project_domain_name="Default",
        audit_id="imageforge-validate",
        methods=["password"],
    )
    token.add_role(id="member", name="member")
    return dict(token)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        port = self.server.server_address[1]  # type: ignore[index]  # an AF_INET (host, port)
        base = f"http://127.0.0.1:{port}/v3/"
        version = {"id": "v3.14", "status": "stable", "links": [{"rel": "self", "href": base}]}
        self._send(
            200,
            {"version": version}
            if self.path.startswith("/v3")
            else {"versions": {"values": [version]}},
        )

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        if self.path.rstrip("/") != "/v3/auth/tokens":
            self._send(404, {"error": {"code": 404, "message": "not found", "title": "Not Found"}})
            return
        self._send(201, token_body(), {"X-Subject-Token": "imageforge-validate-token"})


@contextlib.contextmanager
def serve() -> Iterator[str]:
    """Serve on an ephemeral port of 127.0.0.1; yields the v3 auth URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v3"
    finally:
        server.shutdown()
        server.server_close()
