"""A small Nova (and Neutron) fake over HTTP on 127.0.0.1, for the verification instance.

It answers exactly the calls a verification makes through openstacksdk: Nova's flavors,
os-keypairs and servers (create, show, list, delete), and Neutron's networks, ports, security
groups, security group rules and floating IPs. One server serves both: Nova under
`/compute/v2.1`, Neutron under `/network`; `serve()` yields it with `compute_url` and
`network_url` for a Keystone catalog.

Request bodies are checked:
- Nova's against the compute API's own published JSON schemas, from the `nova` package (the
  schema its controller selects for the request's microversion, read from the `@validation
  .schema` decorators of `servers.create` and `keypairs.create`), loaded in a subprocess so
  that nova's configuration never enters the test process;
- Neutron's against schemas written here from the Networking API reference (Neutron publishes
  no JSON schemas): unknown fields, types, enums and required fields.
A body that fails is a 400 with the validator's message, like Nova's.

Behaviour the real services have and the fake keeps: a server is BUILD until polled
`build_polls` times, then ACTIVE; a deleted server stays (task_state deleting) for
`delete_polls` polls; its port goes with it, which disassociates its floating IP; a security
group in use by a port cannot be deleted (409); names of key pairs are unique (409); a server
needs an existing flavor, key pair, security groups and (via `image_exists`) Glance image.
`refuse(verb, path regex, status)` makes the next matching request fail.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import functools
import itertools
import json
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jsonschema

MAX_VERSION = "2.96"
PRIVATE_NET = "4f6b2c1e-8a57-4c0e-9d3a-6b1f0e2d7a10"  # a tenant network
PUBLIC_NET = "9c2e7d4a-1b3f-4e5a-8c6d-0f1e2a3b4c5d"  # the external one, for floating IPs
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
NOVA_SCHEMAS = r"""
import ast, importlib, importlib.util, json, pathlib, sys
base = pathlib.Path(importlib.util.find_spec("nova").submodule_search_locations[0])
out = {}
for controller in ("servers", "keypairs"):
    schemas = importlib.import_module(f"nova.api.openstack.compute.schemas.{controller}")
    source = (base / "api" / "openstack" / "compute" / f"{controller}.py").read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name == "create":
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and ast.unparse(deco.func) == "validation.schema":
                    versions = [a.value for a in deco.args[1:]]
                    schema = getattr(schemas, deco.args[0].attr)
                    out.setdefault(controller, []).append([schema, *versions])
json.dump(out, sys.stdout)
"""
_STRINGS = {"type": "string"}
_OPTIONAL_STRING = {"type": ["string", "null"]}
_PORT = {"type": ["integer", "null"], "minimum": 0, "maximum": 65535}
NEUTRON_SCHEMAS: dict[str, dict[str, Any]] = {
    "security_group": {
        "properties": {
            "name": _STRINGS,
            "description": _STRINGS,
            "stateful": {"type": "boolean"},
            "project_id": _STRINGS,
            "tenant_id": _STRINGS,
        },
    },
    "security_group_rule": {
        "properties": {
            "security_group_id": _STRINGS,
            "direction": {"enum": ["ingress", "egress"]},
            "ethertype": {"enum": ["IPv4", "IPv6"]},
            "protocol": _OPTIONAL_STRING,
            "port_range_min": _PORT,
            "port_range_max": _PORT,
            "remote_ip_prefix": _OPTIONAL_STRING,
            "remote_group_id": _OPTIONAL_STRING,
            "remote_address_group_id": _OPTIONAL_STRING,
            "description": _STRINGS,
            "project_id": _STRINGS,
            "tenant_id": _STRINGS,
        },
        "required": ["security_group_id", "direction"],
    },
    "floatingip": {
        "properties": {
            "floating_network_id": _STRINGS,
            "port_id": _OPTIONAL_STRING,
            "fixed_ip_address": _OPTIONAL_STRING,
            "floating_ip_address": _STRINGS,
            "subnet_id": _OPTIONAL_STRING,
            "description": _STRINGS,
            "dns_domain": _STRINGS,
            "dns_name": _STRINGS,
            "qos_policy_id": _OPTIONAL_STRING,
            "project_id": _STRINGS,
            "tenant_id": _STRINGS,
        },
        "required": ["floating_network_id"],
    },
}


class FakeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


@functools.cache
def nova_schemas() -> dict[str, list[list[Any]]]:
    """{"servers"|"keypairs": [[schema, min, max?], ...]} from the installed nova package."""
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", NOVA_SCHEMAS],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"cannot read nova's schemas (pip install nova):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


_FORMATS = jsonschema.FormatChecker()


@_FORMATS.checks("base64", raises=(binascii.Error, ValueError))
def _base64(value: object) -> bool:
    return not isinstance(value, str) or bool(base64.b64decode(value, validate=True) or True)


@_FORMATS.checks("name")
def _name(value: object) -> bool:
    """Nova's 'name' format: printable, no leading or trailing whitespace."""
    return not isinstance(value, str) or (value == value.strip() and value.isprintable())


def _validate(schema: dict[str, Any], body: Any) -> None:
    validator = jsonschema.Draft4Validator(schema, format_checker=_FORMATS)
    error = jsonschema.exceptions.best_match(validator.iter_errors(body))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path)
        raise FakeError(400, f"Invalid input for field/attribute {where}. {error.message}")


def check_nova(kind: str, version: str, body: Any) -> None:
    """A Nova request body against the schema nova uses for this microversion."""
    for schema, low, *high in nova_schemas()[kind]:
        if _version(low) <= _version(version) <= _version(high[0] if high else "2.999"):
            _validate(schema, body)
            return
    raise FakeError(406, f"Version {version} is not supported by the API.")


def check_neutron(resource: str, body: Any) -> dict[str, Any]:
    schema = {"type": "object", "additionalProperties": False, **NEUTRON_SCHEMAS[resource]}
    _validate(
        {"type": "object", "properties": {resource: schema}, "required": [resource],
         "additionalProperties": False},
        body,
    )  # fmt: skip
    return dict(body[resource])


Route = tuple[str, re.Pattern[str], Callable[..., Any]]


class FakeCompute:
    """Nova and Neutron state for one project, and `handle` to answer one request."""

    def __init__(self, project_id: str, image_exists: Callable[[str], bool]) -> None:
        self.project_id, self.image_exists = project_id, image_exists
        self.compute_url = self.network_url = ""
        self.lock = threading.RLock()
        self.reset()
        self.routes: list[Route] = [
            ("GET", re.compile(r"/compute/?"), self._compute_versions),
            ("GET", re.compile(r"/compute/v2\.1/?"), self._compute_version),
            ("GET", re.compile(r"/compute/v2\.1/flavors(/detail)?"), self._flavors),
            ("GET", re.compile(r"/compute/v2\.1/flavors/([^/]+)"), self._flavor),
            ("POST", re.compile(r"/compute/v2\.1/os-keypairs"), self._create_keypair),
            ("GET", re.compile(r"/compute/v2\.1/os-keypairs"), self._keypair_list),
            ("GET", re.compile(r"/compute/v2\.1/os-keypairs/([^/]+)"), self._keypair),
            ("DELETE", re.compile(r"/compute/v2\.1/os-keypairs/([^/]+)"), self._delete_keypair),
            ("POST", re.compile(r"/compute/v2\.1/servers"), self._create_server),
            ("GET", re.compile(r"/compute/v2\.1/servers(/detail)?"), self._server_list),
            ("GET", re.compile(r"/compute/v2\.1/servers/([^/]+)"), self._server),
            ("DELETE", re.compile(r"/compute/v2\.1/servers/([^/]+)"), self._delete_server),
            ("GET", re.compile(r"/network/?"), self._network_versions),
            ("GET", re.compile(r"/network/v2\.0/networks"), self._list("networks")),
            ("GET", re.compile(r"/network/v2\.0/networks/([^/]+)"), self._show("networks")),
            ("GET", re.compile(r"/network/v2\.0/ports"), self._list("ports")),
            ("POST", re.compile(r"/network/v2\.0/security-groups"), self._create_group),
            ("GET", re.compile(r"/network/v2\.0/security-groups"), self._list("groups")),
            ("GET", re.compile(r"/network/v2\.0/security-groups/([^/]+)"), self._show("groups")),
            ("DELETE", re.compile(r"/network/v2\.0/security-groups/([^/]+)"), self._delete_group),
            ("POST", re.compile(r"/network/v2\.0/security-group-rules"), self._create_rule),
            ("POST", re.compile(r"/network/v2\.0/floatingips"), self._create_ip),
            ("GET", re.compile(r"/network/v2\.0/floatingips"), self._list("floating_ips")),
            ("DELETE", re.compile(r"/network/v2\.0/floatingips/([^/]+)"), self._delete_ip),
        ]

    def reset(self) -> None:
        """Forget everything (between tests); the server keeps running."""
        with self.lock:
            self.build_polls, self.delete_polls = 1, 1
            self.flavors = [{"id": "3", "name": "m1.medium", "vcpus": 2, "ram": 4096, "disk": 40}]
            self.networks = {
                PRIVATE_NET: {"id": PRIVATE_NET, "name": "private", "router:external": False},
                PUBLIC_NET: {"id": PUBLIC_NET, "name": "public", "router:external": True},
            }
            self.servers: dict[str, dict[str, Any]] = {}
            self.keypairs: dict[str, dict[str, Any]] = {}
            self.groups: dict[str, dict[str, Any]] = {}
            self.ports: dict[str, dict[str, Any]] = {}
            self.floating_ips: dict[str, dict[str, Any]] = {}
            self.log: list[tuple[str, str, Any]] = []
            self.refusals: list[tuple[str, re.Pattern[str], int]] = []
            self._polls: dict[str, int] = {}
            self._clock = itertools.count()
            self._addresses = itertools.count(10)

    # --- helpers for tests -----------------------------------------------------------------

    def refuse(self, verb: str, path: str, status: int) -> None:
        """The next `verb` request whose path matches `path` (a regex) fails with `status`."""
        with self.lock:
            self.refusals.append((verb, re.compile(path), status))

    def requests(self, verb: str, pattern: str) -> list[Any]:
        """Bodies of the requests of a verb to paths matching pattern, in order."""
        with self.lock:
            return [b for v, p, b in self.log if v == verb and re.search(pattern, p)]

    def leftovers(self) -> dict[str, list[str]]:
        """Names (ids for floating IPs) of everything a verification could have left."""
        with self.lock:
            return {
                "servers": sorted(s["name"] for s in self.servers.values()),
                "keypairs": sorted(self.keypairs),
                "security_groups": sorted(g["name"] for g in self.groups.values()),
                "floating_ips": sorted(self.floating_ips),
            }

    # --- serving ---------------------------------------------------------------------------

    def handle(
        self, verb: str, target: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, Any]:
        split = urlsplit(target)
        path, query = split.path.rstrip("/") or "/", dict(parse_qsl(split.query))
        body = json.loads(raw) if raw.strip() else None
        with self.lock:
            self.log.append((verb, path, body))
            try:
                for index, (refused, pattern, status) in enumerate(self.refusals):
                    if refused == verb and pattern.search(path):
                        del self.refusals[index]
                        raise FakeError(status, f"refused by the test ({status})")
                for route_verb, pattern, handler in self.routes:
                    match = pattern.fullmatch(path)
                    if route_verb == verb and match:
                        version = _requested(headers)
                        return handler(*match.groups(), query=query, body=body, version=version)
                raise FakeError(404, f"the fake does not do {verb} {path}")
            except FakeError as exc:
                return exc.status, {"itemNotFound" if exc.status == 404 else "badRequest": {
                    "code": exc.status, "message": exc.message}, "NeutronError": {
                    "type": "HTTPError", "message": exc.message, "detail": ""}}  # fmt: skip

    def _now(self) -> str:
        return (EPOCH + timedelta(minutes=next(self._clock))).strftime("%Y-%m-%dT%H:%M:%SZ")

    # --- Nova ------------------------------------------------------------------------------

    def _version_doc(self) -> dict[str, Any]:
        return {
            "id": "v2.1",
            "status": "CURRENT",
            "version": MAX_VERSION,
            "min_version": "2.1",
            "links": [{"rel": "self", "href": f"{self.compute_url}/"}],
        }

    def _compute_versions(self, **_: Any) -> tuple[int, Any]:
        return 200, {"versions": [self._version_doc()]}

    def _compute_version(self, **_: Any) -> tuple[int, Any]:
        return 200, {"version": self._version_doc()}

    def _flavors(self, detail: str | None, **_: Any) -> tuple[int, Any]:
        return 200, {"flavors": copy.deepcopy(self.flavors)}

    def _flavor(self, ident: str, **_: Any) -> tuple[int, Any]:
        for flavor in self.flavors:
            if flavor["id"] == ident:
                return 200, {"flavor": copy.deepcopy(flavor)}
        raise FakeError(404, f"Flavor {ident} could not be found.")

    def _create_keypair(self, *, body: Any, version: str, **_: Any) -> tuple[int, Any]:
        check_nova("keypairs", version, body)
        spec = body["keypair"]
        if spec["name"] in self.keypairs:
            raise FakeError(409, f"Key pair '{spec['name']}' already exists.")
        if "public_key" not in spec:
            raise FakeError(400, "the fake does not generate keys")
        keypair = {
            "name": spec["name"],
            "public_key": spec["public_key"],
            "fingerprint": "00:11:22",
            "type": spec.get("type", "ssh"),
            "user_id": "fake-user",
            "created_at": self._now(),
        }
        self.keypairs[spec["name"]] = keypair
        return 200, {"keypair": {k: v for k, v in keypair.items() if k != "created_at"}}

    def _keypair_list(self, **_: Any) -> tuple[int, Any]:
        listed = [{k: v for k, v in p.items() if k != "created_at"} for p in self.keypairs.values()]
        return 200, {"keypairs": [{"keypair": p} for p in listed]}

    def _keypair(self, name: str, **_: Any) -> tuple[int, Any]:
        if name not in self.keypairs:
            raise FakeError(404, f"Keypair {name} not found for user fake-user")
        return 200, {"keypair": {**self.keypairs[name], "id": 1, "deleted": False}}

    def _delete_keypair(self, name: str, **_: Any) -> tuple[int, Any]:
        self._keypair(name)
        del self.keypairs[name]
        return 202, None

    def _create_server(self, *, body: Any, version: str, **_: Any) -> tuple[int, Any]:
        check_nova("servers", version, body)
        spec = body["server"]
        if not self.image_exists(spec.get("imageRef", "")):
            raise FakeError(400, f"Image {spec.get('imageRef')} could not be found.")
        if not any(f["id"] == spec["flavorRef"] for f in self.flavors):
            raise FakeError(400, f"Flavor {spec['flavorRef']} could not be found.")
        if spec.get("key_name") and spec["key_name"] not in self.keypairs:
            raise FakeError(400, "Invalid key_name provided.")
        groups = [self._group_named(g["name"]) for g in spec.get("security_groups", [])]
        networks = spec.get("networks", "auto")
        wanted = [PRIVATE_NET] if networks == "auto" else [n["uuid"] for n in networks]
        ident = str(uuid.uuid4())
        addresses: dict[str, list[dict[str, Any]]] = {}
        for network in wanted:
            if network not in self.networks:
                raise FakeError(400, f"Network {network} could not be found.")
            address = f"10.0.0.{next(self._addresses)}"
            self.ports[f"port-{ident}-{network}"] = {
                "id": f"port-{ident}-{network}",
                "device_id": ident,
                "network_id": network,
                "security_groups": [g["id"] for g in groups] or ["default"],
                "fixed_ips": [{"ip_address": address}],
            }
            name = self.networks[network]["name"]
            addresses[name] = [{"addr": address, "version": 4, "OS-EXT-IPS:type": "fixed"}]
        self.servers[ident] = {
            "id": ident,
            "name": spec["name"],
            "status": "BUILD",
            "OS-EXT-STS:task_state": "spawning",
            "image": {"id": spec["imageRef"]},
            "flavor": {"id": spec["flavorRef"]},
            "key_name": spec.get("key_name"),
            "metadata": dict(spec.get("metadata", {})),
            "user_data": spec.get("user_data"),
            "security_groups": [{"name": g["name"]} for g in groups],
            "addresses": addresses,
            "tenant_id": self.project_id,
            "created": self._now(),
            "os-extended-volumes:volumes_attached": [],
        }
        self._polls[ident] = self.build_polls
        return 202, {"server": {"id": ident, "links": [], "adminPass": "fake"}}

    def _server_list(self, detail: str | None, *, query: dict[str, str], **_: Any) -> Any:
        name = query.get("name")
        found = [s for s in list(self.servers.values()) if not name or re.search(name, s["name"])]
        return 200, {"servers": [self._shown(s) for s in found]}

    def _server(self, ident: str, **_: Any) -> tuple[int, Any]:
        server = self.servers.get(ident)
        if server is None:
            raise FakeError(404, "Instance could not be found.")
        left = self._polls.get(ident, 0) - 1
        self._polls[ident] = left
        if left <= 0 and server["status"] == "BUILD":
            server.update({"status": "ACTIVE", "OS-EXT-STS:task_state": None})
        if left < 0 and server["OS-EXT-STS:task_state"] == "deleting":
            self._gone(ident)
            raise FakeError(404, "Instance could not be found.")
        return 200, {"server": self._shown(server)}

    def _shown(self, server: dict[str, Any]) -> dict[str, Any]:
        shown = copy.deepcopy(server)
        shown.pop("user_data")
        return shown

    def _delete_server(self, ident: str, **_: Any) -> tuple[int, Any]:
        server = self.servers.get(ident)
        if server is None:
            raise FakeError(404, "Instance could not be found.")
        server["OS-EXT-STS:task_state"] = "deleting"
        self._polls[ident] = self.delete_polls
        if self.delete_polls == 0:
            self._gone(ident)
        return 204, None

    def _gone(self, ident: str) -> None:
        del self.servers[ident]
        for port in [p for p in self.ports.values() if p["device_id"] == ident]:
            del self.ports[port["id"]]
            for ip in self.floating_ips.values():
                if ip["port_id"] == port["id"]:
                    ip.update(port_id=None, fixed_ip_address=None, status="DOWN")

    # --- Neutron ---------------------------------------------------------------------------

    def _network_versions(self, **_: Any) -> tuple[int, Any]:
        link = {"rel": "self", "href": f"{self.network_url}/v2.0/"}
        return 200, {"versions": [{"id": "v2.0", "status": "CURRENT", "links": [link]}]}

    def _list(self, store: str) -> Callable[..., Any]:
        plural = {"groups": "security_groups", "floating_ips": "floatingips"}.get(store, store)

        def listed(*, query: dict[str, str], **_: Any) -> tuple[int, Any]:
            items = getattr(self, store).values()
            wanted = {k: v for k, v in query.items() if k not in ("limit", "marker", "fields")}
            found = [i for i in items if all(str(i.get(k)) == v for k, v in wanted.items())]
            return 200, {plural: copy.deepcopy(found)}

        return listed

    def _show(self, store: str) -> Callable[..., Any]:
        singular = {"groups": "security_group", "networks": "network"}[store]

        def shown(ident: str, **_: Any) -> tuple[int, Any]:
            item = getattr(self, store).get(ident)
            if item is None:
                raise FakeError(404, f"{singular} {ident} could not be found.")
            return 200, {singular: copy.deepcopy(item)}

        return shown

    def _group_named(self, name: str) -> dict[str, Any]:
        found = [g for g in self.groups.values() if name in (g["name"], g["id"])]
        if len(found) != 1:
            raise FakeError(400, f"Security group {name} not found (or not unique).")
        return found[0]

    def _create_group(self, *, body: Any, **_: Any) -> tuple[int, Any]:
        spec = check_neutron("security_group", body)
        ident = str(uuid.uuid4())
        egress = [
            {"id": str(uuid.uuid4()), "security_group_id": ident, "direction": "egress",
             "ethertype": kind, "protocol": None, "port_range_min": None,
             "port_range_max": None, "remote_ip_prefix": None}
            for kind in ("IPv4", "IPv6")
        ]  # fmt: skip
        group = {
            "id": ident,
            "name": spec.get("name", ""),
            "description": spec.get("description", ""),
            "stateful": spec.get("stateful", True),
            "project_id": self.project_id,
            "tenant_id": self.project_id,
            "created_at": self._now(),
            "tags": [],
            "security_group_rules": egress,
        }
        self.groups[ident] = group
        return 201, {"security_group": copy.deepcopy(group)}

    def _create_rule(self, *, body: Any, **_: Any) -> tuple[int, Any]:
        spec = check_neutron("security_group_rule", body)
        group = self.groups.get(spec["security_group_id"])
        if group is None:
            raise FakeError(404, f"Security group {spec['security_group_id']} does not exist")
        rule = {"id": str(uuid.uuid4()), "ethertype": "IPv4", "protocol": None,
                "port_range_min": None, "port_range_max": None, "remote_ip_prefix": None,
                **spec}  # fmt: skip
        group["security_group_rules"].append(rule)
        return 201, {"security_group_rule": copy.deepcopy(rule)}

    def _delete_group(self, ident: str, **_: Any) -> tuple[int, Any]:
        if ident not in self.groups:
            raise FakeError(404, f"Security group {ident} does not exist")
        if any(ident in p["security_groups"] for p in self.ports.values()):
            raise FakeError(409, f"Security Group {ident} in use.")
        del self.groups[ident]
        return 204, None

    def _create_ip(self, *, body: Any, **_: Any) -> tuple[int, Any]:
        spec = check_neutron("floatingip", body)
        network = self.networks.get(spec["floating_network_id"])
        if network is None or not network["router:external"]:
            raise FakeError(400, f"Network {spec['floating_network_id']} is not external")
        port = self.ports.get(spec.get("port_id") or "")
        if spec.get("port_id") and port is None:
            raise FakeError(404, f"Port {spec['port_id']} could not be found.")
        ident = str(uuid.uuid4())
        ip = {
            "id": ident,
            "floating_ip_address": f"203.0.113.{next(self._addresses)}",
            "floating_network_id": network["id"],
            "port_id": port["id"] if port else None,
            "fixed_ip_address": port["fixed_ips"][0]["ip_address"] if port else None,
            "description": spec.get("description", ""),
            "status": "ACTIVE" if port else "DOWN",
            "project_id": self.project_id,
            "tenant_id": self.project_id,
            "created_at": self._now(),
        }
        self.floating_ips[ident] = ip
        return 201, {"floatingip": copy.deepcopy(ip)}

    def _delete_ip(self, ident: str, **_: Any) -> tuple[int, Any]:
        if self.floating_ips.pop(ident, None) is None:
            raise FakeError(404, f"Floating IP {ident} could not be found.")
        return 204, None


def _requested(headers: dict[str, str]) -> str:
    """The compute microversion a request asks for (2.1 when none)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    text = lowered.get("openstack-api-version", "")
    if text.startswith("compute "):
        return text.split()[1]
    return lowered.get("x-openstack-nova-api-version", "2.1")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeCompute


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        status, payload = self.server.fake.handle(self.command, self.path, dict(self.headers), raw)
        data = json.dumps(payload).encode() if payload is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PUT = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the fake's request log is `FakeCompute.log`."""


@contextlib.contextmanager
def serve(project_id: str, image_exists: Callable[[str], bool]) -> Iterator[FakeCompute]:
    """The fake on 127.0.0.1 (ephemeral port) in a thread, with compute_url/network_url set."""
    fake = FakeCompute(project_id, image_exists)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.fake = fake
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
    thread.daemon = True
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    fake.compute_url, fake.network_url = f"{base}/compute/v2.1", f"{base}/network"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
