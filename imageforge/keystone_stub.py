"""A token endpoint for `packer validate` of OpenStack templates with no cloud at hand.

Packer's openstack builder authenticates while it validates. This answers Keystone v3's
password authentication (POST /v3/auth/tokens) with a token whose body has the fields of
Keystone's own response, on 127.0.0.1 only. It never backs a real build.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def token_body(now: dt.datetime | None = None) -> dict:
    """A Keystone v3 token document, as /v3/auth/tokens returns it."""
    now = now or dt.datetime.now(dt.UTC)
    stamp = "%Y-%m-%dT%H:%M:%S.000000Z"
    domain = {"id": "default", "name": "Default"}
    return {
        "token": {
            "methods": ["password"],
            "user": {
                "id": "validate",
                "name": "validate",
                "domain": domain,
                "password_expires_at": None,
            },
            "audit_ids": ["imageforge-validate"],
            "expires_at": (now + dt.timedelta(hours=1)).strftime(stamp),
            "issued_at": now.strftime(stamp),
            "project": {"id": "validate", "name": "validate", "domain": domain},
            "is_domain": False,
            "roles": [{"id": "member", "name": "member"}],
            "catalog": [],
        }
    }


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        base = f"http://127.0.0.1:{self.server.server_address[1]}/v3/"
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
