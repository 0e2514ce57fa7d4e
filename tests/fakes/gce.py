"""A schema-checked local fake of the Compute Engine v1 REST API, for tests.

Routes, parameters and request bodies come from the compute v1 discovery document that
google-api-python-client ships offline (googleapiclient/discovery_cache/documents/
compute.v1.json). Like the real API, the fake answers with a Google-style error body:

- 404 for a path (or path and HTTP method) the document does not have;
- 400 for a query parameter the method does not take, a body field the schema does not define
  (checked recursively through `$ref`s), a JSON value of the wrong type, a value outside an
  enum or a path/field pattern, or a missing required field;
- 501 for a documented method the fake does not implement.

Responses are checked against the document as well (500 if the fake itself drifts).

Implemented: images get, list, insert, delete, deprecate, getFromFamily, getIamPolicy,
setIamPolicy; globalOperations and zoneOperations get and wait; instances and disks insert,
get, delete and aggregatedList; firewalls insert, get, delete and list. A new instance gets an
internal address per network interface and an external one per ONE_TO_ONE_NAT access config. State lives in memory; IAM etags change on every set, and a
set with a stale etag gets 412 like the real API. Mutations return an Operation; with
`operation_polls` > 0 it is RUNNING until polled that many times (or waited on).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import importlib.util
import itertools
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

SELF_LINK_BASE = "https://www.googleapis.com/compute/v1/"
SYSTEM_QUERY = {"$alt"}  # sent by some google-cloud-compute versions; not in the document
DEPRECATED_STATES = ("DEPRECATED", "OBSOLETE", "DELETED")
EMPTY_POLICY_ETAG = "ACAB"  # what the real API returns for a resource with no policy
MEMBER = re.compile(
    r"allUsers|allAuthenticatedUsers|(?:deleted:)?(?:user|group|serviceAccount|domain):\S+"
    r"|principal(?:Set)?://\S+"
)
STATUS = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
}


def discovery_path() -> Path:
    """The compute v1 discovery document shipped with google-api-python-client."""
    spec = importlib.util.find_spec("googleapiclient")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the GCE fake needs google-api-python-client (pip install it)")
    base = Path(next(iter(spec.submodule_search_locations)))
    return base / "discovery_cache" / "documents" / "compute.v1.json"


class ApiError(Exception):
    """An error answer, in the shape Google APIs use."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def body(self) -> dict[str, Any]:
        detail = {"message": self.message, "domain": "global", "reason": self.reason}
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "status": STATUS.get(self.code, "UNKNOWN"),
                "errors": [detail],
            }
        }


def invalid(message: str) -> ApiError:
    return ApiError(400, "invalid", message)


def not_found(resource: str) -> ApiError:
    return ApiError(404, "notFound", f"The resource '{resource}' was not found")


# --- the discovery document ---------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One method of the document, with its path compiled to a regular expression."""

    id: str
    http_method: str
    path: str
    pattern: re.Pattern[str]
    literals: int
    parameters: dict[str, Any]
    request: str | None
    response: str | None


def _compile(path: str) -> tuple[re.Pattern[str], int]:
    """A path template ("projects/{project}/global/images/{image}") as a regex."""
    parts, literals = [], 0
    for segment in path.split("/"):
        pieces = re.split(r"\{\+?(\w+)\}", segment)
        parts.append(
            "".join(
                re.escape(piece) if i % 2 == 0 else f"(?P<{piece}>[^/]+)"
                for i, piece in enumerate(pieces)
            )
        )
        literals += len(pieces) == 1
    return re.compile("/".join(parts)), literals


class Discovery:
    """The compute v1 discovery document: routes, parameters and body schemas."""

    def __init__(self, path: Path | None = None) -> None:
        doc = json.loads((path or discovery_path()).read_text())
        self.schemas: dict[str, Any] = doc["schemas"]
        self.base = "/" + doc["servicePath"]
        self.global_parameters: dict[str, Any] = doc["parameters"]
        self.methods = {m.id: m for m in self._walk(doc["resources"])}
        self._by_verb: dict[str, list[Method]] = {}
        for method in self.methods.values():
            self._by_verb.setdefault(method.http_method, []).append(method)
        self._patterns: dict[str, re.Pattern[str] | None] = {}

    def _walk(self, resources: dict[str, Any]) -> Iterator[Method]:
        for resource in resources.values():
            for spec in resource.get("methods", {}).values():
                pattern, literals = _compile(spec["path"])
                yield Method(
                    id=spec["id"],
                    http_method=spec["httpMethod"],
                    path=spec["path"],
                    pattern=pattern,
                    literals=literals,
                    parameters=spec.get("parameters", {}),
                    request=spec.get("request", {}).get("$ref"),
                    response=spec.get("response", {}).get("$ref"),
                )
            yield from self._walk(resource.get("resources", {}))

    def route(self, verb: str, path: str) -> tuple[Method, dict[str, str]]:
        """The method for a request path, and its path parameters (checked)."""
        unknown = ApiError(404, "notFound", f"The requested URL {path} was not found.")
        if not path.startswith(self.base):
            raise unknown
        rest = path[len(self.base) :]
        found = [
            (m, match) for m in self._by_verb.get(verb, []) if (match := m.pattern.fullmatch(rest))
        ]
        if not found:
            raise unknown
        method, match = max(found, key=lambda pair: pair[0].literals)
        params = {k: unquote(v) for k, v in match.groupdict().items()}
        for name, value in params.items():
            self._check_pattern(method.parameters.get(name, {}), value, name)
        return method, params

    def check_query(self, method: Method, pairs: list[tuple[str, str]]) -> dict[str, str]:
        """Query parameters as a dict; reject any the method and the document do not define."""
        query: dict[str, str] = {}
        for name, value in pairs:
            spec = method.parameters.get(name) or self.global_parameters.get(name)
            if name in SYSTEM_QUERY:
                continue
            if spec is None or spec.get("location") not in ("query", None):
                raise invalid(
                    f'Invalid JSON payload received. Unknown name "{name}": '
                    "Cannot bind query parameter."
                )
            self._check_scalar(spec, value, name, from_query=True)
            query[name] = value
        for name, spec in method.parameters.items():
            if spec.get("location") == "query" and spec.get("required") and name not in query:
                raise invalid(f"Required field '{name}' not specified")
        return query

    def check_body(self, method: Method, body: Any) -> None:
        """Reject a request body the method's schema does not allow."""
        if method.request is None:
            if body not in (None, {}):
                raise invalid(f"{method.id} takes no request body")
            return
        problems: list[str] = []
        self.check(
            {"$ref": method.request}, {} if body is None else body, "resource", method.id, problems
        )
        if problems:
            raise invalid("; ".join(problems))

    def response_problems(self, method: Method, value: Any) -> list[str]:
        problems: list[str] = []
        if method.response and value is not None:
            self.check({"$ref": method.response}, value, "response", "", problems)
        return problems

    def check(
        self, schema: dict[str, Any], value: Any, where: str, method_id: str, problems: list[str]
    ) -> None:
        """Check a JSON value against a schema of the document, recursively."""
        if "$ref" in schema:
            schema = self.schemas[schema["$ref"]]
        kind = schema.get("type")
        if kind == "object" or "properties" in schema:
            self._check_object(schema, value, where, method_id, problems)
        elif kind == "array":
            if not isinstance(value, list):
                problems.append(f"Invalid value at '{where}': expected a list")
                return
            for index, item in enumerate(value):
                self.check(schema.get("items", {}), item, f"{where}[{index}]", method_id, problems)
        elif kind in ("string", "integer", "number", "boolean"):
            try:
                self._check_scalar(schema, value, where)
            except ApiError as exc:
                problems.append(exc.message)

    def _check_object(
        self, schema: dict[str, Any], value: Any, where: str, method_id: str, problems: list[str]
    ) -> None:
        if not isinstance(value, dict):
            problems.append(f"Invalid value at '{where}': expected an object")
            return
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in properties:
                self.check(properties[key], item, f"{where}.{key}", method_id, problems)
            elif extra is not None:
                self.check(extra, item, f"{where}[{key!r}]", method_id, problems)
            else:
                problems.append(
                    f"Invalid JSON payload received. Unknown name \"{key}\" at '{where}': "
                    "Cannot find field."
                )
        for key, spec in properties.items():
            required = spec.get("annotations", {}).get("required", [])
            if method_id and method_id in required and key not in value:
                problems.append(f"Required field '{where}.{key}' not specified")

    def _check_scalar(
        self, spec: dict[str, Any], value: Any, where: str, from_query: bool = False
    ) -> None:
        kind, fmt = spec.get("type"), spec.get("format")
        if from_query:
            value = _from_query(kind, value, where)
        ok = {
            "string": isinstance(value, str)
            or (fmt in ("int64", "uint64") and isinstance(value, int)),
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "number": isinstance(value, int | float) and not isinstance(value, bool),
            "boolean": isinstance(value, bool),
        }.get(kind or "", True)
        if not ok:
            raise invalid(f"Invalid value at '{where}' ({kind}): {json.dumps(value)}")
        if "enum" in spec and value not in spec["enum"]:
            raise invalid(f"Invalid value at '{where}' (enum): {json.dumps(value)}")
        self._check_pattern(spec, value, where)

    def _check_pattern(self, spec: dict[str, Any], value: Any, where: str) -> None:
        text = spec.get("pattern")
        if not text or not isinstance(value, str):
            return
        if text not in self._patterns:
            try:
                self._patterns[text] = re.compile(text)
            except re.error:
                self._patterns[text] = None
        pattern = self._patterns[text]
        if pattern is not None and not pattern.fullmatch(value):
            raise invalid(
                f"Invalid value for field '{where}': '{value}'. Must be a match of regex '{text}'"
            )


def _from_query(kind: str | None, value: str, where: str) -> Any:
    if kind == "integer":
        if not re.fullmatch(r"-?\d+", value):
            raise invalid(f"Invalid value at '{where}' (TYPE_INT32), \"{value}\"")
        return int(value)
    if kind == "boolean":
        if value not in ("true", "false"):
            raise invalid(f"Invalid value at '{where}' (TYPE_BOOL), \"{value}\"")
        return value == "true"
    return value


# --- list filters -----------------------------------------------------------------------------

_TERM = re.compile(
    r"\s*(?P<open>\()?\s*(?P<field>[A-Za-z][\w.-]*)\s*(?P<op>!=|=|:)\s*"
    r'(?P<value>"(?:[^"\\]|\\.)*"|[^\s()"]+)\s*(?P<close>\))?\s*(?:AND\b)?'
)


def parse_filter(text: str) -> list[tuple[str, str, str]]:
    """The subset of the compute list filter the fake understands: `field = value`,
    `field != value`, `labels.key:*`, several parenthesised terms (AND). Anything else is a
    400, so a filter the fake cannot evaluate never silently matches everything."""
    terms: list[tuple[str, str, str]] = []
    pos = 0
    while pos < len(text.rstrip()):
        match = _TERM.match(text, pos)
        if not match or bool(match["open"]) != bool(match["close"]):
            raise invalid(f"Invalid list filter expression '{text}'.")
        value = match["value"]
        if value.startswith('"'):
            value = json.loads(value)
        if match["op"] == ":" and value != "*":
            raise invalid(f"Invalid list filter expression '{text}' (fake: only ':*').")
        terms.append((match["field"], match["op"], value))
        pos = match.end()
    if len(terms) > 1 and not text.lstrip().startswith("("):
        raise invalid(f"Invalid list filter expression '{text}': parenthesise each term.")
    return terms


def _field(resource: dict[str, Any], dotted: str) -> Any:
    current: Any = resource
    for part in dotted.split("."):
        if not isinstance(current, dict) or part not in current:
            return None
        current = current[part]
    return current


def matches(resource: dict[str, Any], terms: list[tuple[str, str, str]]) -> bool:
    for name, op, value in terms:
        have = _field(resource, name)
        text = None if have is None else str(have).lower() if isinstance(have, bool) else str(have)
        if op == ":" and have is None:
            return False
        if op == "=" and text != value:
            return False
        if op == "!=" and text == value:
            return False
    return True


# --- the fake ------------------------------------------------------------------------------------


@dataclass
class Call:
    """One request the fake received."""

    method: str | None
    verb: str
    path: str
    params: dict[str, str]
    query: dict[str, str]
    body: Any
    status: int = 200


@dataclass
class Request:
    method: Method
    params: dict[str, str]
    query: dict[str, str]
    body: Any


Handler = Callable[["FakeGce", Request], Any]
HANDLERS: dict[str, Handler] = {}


def handles(method_id: str) -> Callable[[Handler], Handler]:
    def register(function: Handler) -> Handler:
        HANDLERS[method_id] = function
        return function

    return register


@dataclass
class _Operation:
    resource: dict[str, Any]
    polls_left: int


class FakeGce:
    """In-memory Compute Engine state plus the request log; `handle` answers one request."""

    def __init__(self, discovery: Discovery) -> None:
        self.discovery = discovery
        self.url = ""
        self.lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        """Forget everything (between tests); the server keeps running."""
        with self.lock:
            self.projects: set[str] = set()
            self.images: dict[tuple[str, str], dict[str, Any]] = {}
            self.policies: dict[tuple[str, str], dict[str, Any]] = {}
            self.operations: dict[tuple[str, str, str], _Operation] = {}
            self.instances: dict[tuple[str, str, str], dict[str, Any]] = {}
            self.disks: dict[tuple[str, str, str], dict[str, Any]] = {}
            self.firewalls: dict[tuple[str, str], dict[str, Any]] = {}
            self._addresses = itertools.count(2)
            self.log: list[Call] = []
            self.hooks: dict[str, list[Callable[[FakeGce, Request], None]]] = {}
            self.operation_polls = 0
            self._clock = datetime(2024, 1, 1, 10, 0, tzinfo=timezone(timedelta(hours=-7)))
            self._ids = itertools.count(4_000_000_000_000_000_000)
            self._etags = itertools.count(1)

    # -- helpers for tests --

    def add_project(self, *names: str) -> None:
        with self.lock:
            self.projects.update(names)

    def calls(self, method_id: str, status: int | None = None) -> list[Call]:
        with self.lock:
            return [c for c in self.log if c.method == method_id and status in (None, c.status)]

    def before(self, method_id: str, hook: Callable[[FakeGce, Request], None]) -> None:
        """Run hook (with the state locked) before the next call of method_id is handled."""
        with self.lock:
            self.hooks.setdefault(method_id, []).append(hook)

    def policy(self, project: str, image: str) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self._policy(project, image))

    def write_policy(
        self, project: str, image: str, bindings: list[dict[str, Any]], version: int = 1
    ) -> None:
        """Another writer replaces an image's policy (the etag changes)."""
        with self.lock:
            self._store_policy(project, image, {"version": version, "bindings": bindings})

    # -- serving --

    def handle(self, verb: str, target: str, raw: bytes) -> tuple[int, Any]:
        """Answer one HTTP request: (status, JSON body)."""
        split = urlsplit(target)
        call = Call(None, verb, split.path, {}, {}, None)
        with self.lock:
            self.log.append(call)
        try:
            method, params = self.discovery.route(verb, split.path)
            call.method, call.params = method.id, params
            call.query = self.discovery.check_query(method, parse_qsl(split.query, True))
            try:
                call.body = json.loads(raw) if raw.strip() else None
            except ValueError as exc:
                raise invalid(f"Invalid JSON payload received. {exc}") from exc
            self.discovery.check_body(method, call.body)
            request = Request(method, params, call.query, call.body)
            with self.lock:
                for hook in self._pop_hooks(method.id):
                    hook(self, request)
                handler = HANDLERS.get(method.id)
                if handler is None:
                    raise ApiError(501, "notImplemented", f"the fake does not do {method.id}")
                result = handler(self, request)
            problems = self.discovery.response_problems(method, result)
            if problems:
                raise ApiError(500, "fakeBug", "fake response off schema: " + "; ".join(problems))
            return 200, result
        except ApiError as exc:
            call.status = exc.code
            return exc.code, exc.body()

    def _pop_hooks(self, method_id: str) -> list[Callable[[FakeGce, Request], None]]:
        pending = self.hooks.get(method_id, [])
        return [pending.pop(0)] if pending else []

    # -- state --

    def _tick(self) -> str:
        now = self._clock
        self._clock += timedelta(minutes=1)
        return now.isoformat(timespec="milliseconds")

    def _id(self) -> str:
        return str(next(self._ids))

    def _project(self, request: Request) -> str:
        project = request.params["project"]
        if project not in self.projects:
            raise not_found(f"projects/{project}")
        return project

    def _image(self, project: str, name: str) -> dict[str, Any]:
        image = self.images.get((project, name))
        if image is None:
            raise not_found(f"projects/{project}/global/images/{name}")
        return image

    def _policy(self, project: str, image: str) -> dict[str, Any]:
        self._image(project, image)
        return self.policies.setdefault(
            (project, image), {"version": 1, "etag": EMPTY_POLICY_ETAG, "bindings": []}
        )

    def _store_policy(self, project: str, image: str, policy: dict[str, Any]) -> dict[str, Any]:
        bindings = [copy.deepcopy(b) for b in policy.get("bindings", []) if b.get("members")]
        version = int(policy.get("version") or 1)
        for binding in bindings:
            for member in binding["members"]:
                if not MEMBER.fullmatch(member):
                    raise invalid(f"Invalid argument: member '{member}' is of an unknown type")
            if "condition" in binding and version < 3:
                raise invalid("Policies with conditions must set version 3")
        etag = base64.b64encode(next(self._etags).to_bytes(8, "big")).decode()
        stored = {"version": version, "etag": etag, "bindings": bindings}
        self.policies[(project, image)] = stored
        return stored

    def _operation(
        self, project: str, kind: str, target: str, target_id: str, zone: str | None = None
    ) -> dict[str, Any]:
        name = f"operation-{self._id()}"
        scope = f"projects/{project}/zones/{zone}" if zone else f"projects/{project}/global"
        now = self._clock.isoformat(timespec="milliseconds")
        done = self.operation_polls == 0
        resource: dict[str, Any] = {
            "kind": "compute#operation",
            "id": self._id(),
            "name": name,
            "operationType": kind,
            "targetLink": target,
            "targetId": target_id,
            "status": "DONE" if done else "RUNNING",
            "user": "anonymous@imageforge-fake",
            "progress": 100 if done else 0,
            "insertTime": now,
            "startTime": now,
            "selfLink": f"{SELF_LINK_BASE}{scope}/operations/{name}",
        }
        if done:
            resource["endTime"] = now
        if zone:
            resource["zone"] = f"{SELF_LINK_BASE}projects/{project}/zones/{zone}"
        self.operations[(project, zone or "global", name)] = _Operation(
            resource, self.operation_polls
        )
        return copy.deepcopy(resource)

    def _poll(self, request: Request, scope: str, wait: bool) -> dict[str, Any]:
        project = self._project(request)
        name = request.params["operation"]
        operation = self.operations.get((project, scope, name))
        if operation is None:
            where = "global" if scope == "global" else f"zones/{scope}"
            raise not_found(f"projects/{project}/{where}/operations/{name}")
        operation.polls_left = 0 if wait else max(0, operation.polls_left - 1)
        if operation.polls_left == 0 and operation.resource["status"] != "DONE":
            operation.resource.update(status="DONE", progress=100, endTime=self._tick())
        return copy.deepcopy(operation.resource)


def _labels_fingerprint(labels: dict[str, str]) -> str:
    digest = hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).digest()[:8]
    return base64.b64encode(digest).decode()


def _writable(fake: FakeGce, schema: str, body: dict[str, Any]) -> dict[str, Any]:
    """The body without output-only fields, which the real API ignores on insert."""
    properties = fake.discovery.schemas[schema]["properties"]
    return {k: v for k, v in body.items() if not properties[k].get("readOnly")}


def _page(request: Request, items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    size = int(request.query.get("maxResults", 500))
    if not 0 <= size <= 500:
        raise invalid(f"Invalid value for field 'maxResults': {size}. Must be in [0, 500].")
    start = int(request.query.get("pageToken") or 0)
    end = start + (size or 500)
    return items[start:end], str(end) if end < len(items) else ""


def _filtered(request: Request, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    terms = parse_filter(request.query.get("filter", ""))
    found = [copy.deepcopy(i) for i in items if matches(i, terms)]
    order = request.query.get("orderBy")
    if order == "creationTimestamp desc":
        found.sort(key=lambda i: datetime.fromisoformat(i["creationTimestamp"]), reverse=True)
    elif order == "name":
        found.sort(key=lambda i: i["name"])
    elif order:
        raise invalid(f"Invalid value for field 'orderBy': '{order}'")
    return found


# --- images -------------------------------------------------------------------------------------


def _image_link(project: str, name: str) -> str:
    return f"{SELF_LINK_BASE}projects/{project}/global/images/{name}"


@handles("compute.images.insert")
def _images_insert(fake: FakeGce, request: Request) -> dict[str, Any]:
    project = fake._project(request)
    body = _writable(fake, "Image", request.body)
    name = body["name"]
    if (project, name) in fake.images:
        raise ApiError(
            409, "alreadyExists", f"The resource '{_image_link(project, name)}' already exists"
        )
    if not any(k in body for k in ("rawDisk", "sourceDisk", "sourceImage", "sourceSnapshot")):
        raise invalid("Required field 'source' not specified (rawDisk, sourceDisk, ...)")
    image = {
        **body,
        "kind": "compute#image",
        "id": fake._id(),
        "creationTimestamp": fake._tick(),
        "selfLink": _image_link(project, name),
        "status": "READY",
        "sourceType": "RAW",
        "labelFingerprint": _labels_fingerprint(body.get("labels", {})),
    }
    fake.images[(project, name)] = image
    return fake._operation(project, "insert", image["selfLink"], image["id"])


@handles("compute.images.get")
def _images_get(fake: FakeGce, request: Request) -> dict[str, Any]:
    project = fake._project(request)
    return copy.deepcopy(fake._image(project, request.params["image"]))


@handles("compute.images.list")
def _images_list(fake: FakeGce, request: Request) -> dict[str, Any]:
    project = fake._project(request)
    mine = [image for (p, _), image in sorted(fake.images.items()) if p == project]
    items, token = _page(request, _filtered(request, mine))
    result: dict[str, Any] = {
        "kind": "compute#imageList",
        "id": f"projects/{project}/global/images",
        "selfLink": f"{SELF_LINK_BASE}projects/{project}/global/images",
    }
    if items:
        result["items"] = items
    if token:
        result["nextPageToken"] = token
    return result


@handles("compute.images.getFromFamily")
def _images_from_family(fake: FakeGce, request: Request) -> dict[str, Any]:
    project = fake._project(request)
    family = request.params["family"]
    candidates = [
        image
        for (p, _), image in fake.images.items()
        if p == project
        and image.get("family") == family
        and image.get("deprecated", {}).get("state") not in DEPRECATED_STATES
    ]
    if not candidates:
        raise not_found(f"projects/{project}/global/images/family/{family}")
    newest = max(candidates, key=lambda i: datetime.fromisoformat(i["creationTimestamp"]))
    return copy.deepcopy(newest)


@handles("compute.images.delete")
def _images_delete(fake: FakeGce, request: Request) -> dict[str, Any]:
    project = fake._project(request)
    image = fake._image(project, request.params["image"])
    del fake.images[(project, image["name"])]
    fake.policies.pop((project, image["name"]), None)
    return fake._operation(project, "delete", image["selfLink"], image["id"])


_IMAGE_LINK = re.compile(r"(?:.*/)?projects/([^/]+)/global/images/([^/]+)")


@handles("compute.images.deprecate")
def _images_deprecate(fake: FakeGce, request: Request) -> dict[str, Any]:
    project = fake._project(request)
    image = fake._image(project, request.params["image"])
    status = dict(request.body or {})
    if status.get("state", "ACTIVE") == "ACTIVE":
        image.pop("deprecated", None)
    else:
        replacement = status.get("replacement")
        if replacement and not _IMAGE_LINK.fullmatch(replacement):
            raise invalid(f"Invalid value for field 'replacement': '{replacement}'")
        image["deprecated"] = status
    return fake._operation(project, "setDeprecation", image["selfLink"], image["id"])


@handles("compute.images.setLabels")
def _images_set_labels(fake: FakeGce, request: Request) -> dict[str, Any]:
    """Labels replace the image's, if the fingerprint is the current one (as the API does)."""
    project = fake._project(request)
    image = fake._image(project, request.params["resource"])
    body = request.body or {}
    if body.get("labelFingerprint") != image.get("labelFingerprint"):
        raise ApiError(
            412,
            "conditionNotMet",
            "Labels fingerprint either invalid or resource labels have changed",
        )
    image["labels"] = dict(body.get("labels", {}))
    image["labelFingerprint"] = _labels_fingerprint(image["labels"])
    return fake._operation(project, "setLabels", image["selfLink"], image["id"])


@handles("compute.images.getIamPolicy")
def _images_get_iam_policy(fake: FakeGce, request: Request) -> dict[str, Any]:
    project = fake._project(request)
    policy = copy.deepcopy(fake._policy(project, request.params["resource"]))
    if not policy["bindings"]:
        del policy["bindings"]
    return policy


@handles("compute.images.setIamPolicy")
def _images_set_iam_policy(fake: FakeGce, request: Request) -> dict[str, Any]:
    project = fake._project(request)
    name = request.params["resource"]
    current = fake._policy(project, name)
    body = request.body or {}
    policy = body.get("policy", {k: v for k, v in body.items() if k in ("bindings", "etag")})
    if policy.get("etag") and policy["etag"] != current["etag"]:
        raise ApiError(
            412,
            "conditionNotMet",
            "There were concurrent policy changes. Please retry the whole read-modify-write "
            "with exponential backoff.",
        )
    stored = copy.deepcopy(fake._store_policy(project, name, policy))
    if not stored["bindings"]:
        del stored["bindings"]
    return stored


@handles("compute.globalOperations.get")
def _global_operations_get(fake: FakeGce, request: Request) -> dict[str, Any]:
    return fake._poll(request, "global", wait=False)


@handles("compute.globalOperations.wait")
def _global_operations_wait(fake: FakeGce, request: Request) -> dict[str, Any]:
    return fake._poll(request, "global", wait=True)


# --- instances and disks (for sweep) ----------------------------------------------------------


def _zonal_link(project: str, zone: str, kind: str, name: str) -> str:
    return f"{SELF_LINK_BASE}projects/{project}/zones/{zone}/{kind}/{name}"


def _new_disk(fake: FakeGce, project: str, zone: str, body: dict[str, Any]) -> dict[str, Any]:
    name = body["name"]
    if (project, zone, name) in fake.disks:
        raise ApiError(
            409,
            "alreadyExists",
            f"The resource '{_zonal_link(project, zone, 'disks', name)}' already exists",
        )
    disk = {
        **body,
        "kind": "compute#disk",
        "id": fake._id(),
        "creationTimestamp": fake._tick(),
        "selfLink": _zonal_link(project, zone, "disks", name),
        "zone": f"{SELF_LINK_BASE}projects/{project}/zones/{zone}",
        "status": "READY",
        "sizeGb": str(body.get("sizeGb", "10")),
        "labelFingerprint": _labels_fingerprint(body.get("labels", {})),
    }
    fake.disks[(project, zone, name)] = disk
    return disk


@handles("compute.disks.insert")
def _disks_insert(fake: FakeGce, request: Request) -> dict[str, Any]:
    project, zone = fake._project(request), request.params["zone"]
    disk = _new_disk(fake, project, zone, _writable(fake, "Disk", request.body))
    return fake._operation(project, "insert", disk["selfLink"], disk["id"], zone)


def _disk(fake: FakeGce, project: str, zone: str, name: str) -> dict[str, Any]:
    disk = fake.disks.get((project, zone, name))
    if disk is None:
        raise not_found(f"projects/{project}/zones/{zone}/disks/{name}")
    return disk


@handles("compute.disks.get")
def _disks_get(fake: FakeGce, request: Request) -> dict[str, Any]:
    project = fake._project(request)
    return copy.deepcopy(_disk(fake, project, request.params["zone"], request.params["disk"]))


@handles("compute.disks.delete")
def _disks_delete(fake: FakeGce, request: Request) -> dict[str, Any]:
    project, zone = fake._project(request), request.params["zone"]
    disk = _disk(fake, project, zone, request.params["disk"])
    if disk.get("users"):
        raise ApiError(
            400,
            "resourceInUseByAnotherResource",
            f"The disk resource '{disk['selfLink']}' is already being used by '{disk['users'][0]}'",
        )
    del fake.disks[(project, zone, disk["name"])]
    return fake._operation(project, "delete", disk["selfLink"], disk["id"], zone)


def _attach(
    fake: FakeGce, project: str, zone: str, instance: str, index: int, spec: dict[str, Any]
) -> dict[str, Any]:
    link = _zonal_link(project, zone, "instances", instance)
    if "initializeParams" in spec:
        params = spec["initializeParams"]
        name = params.get("diskName") or instance
        disk_body = {"name": name, "labels": params.get("labels", {})}
        if "sourceImage" in params:
            disk_body["sourceImage"] = params["sourceImage"]
        disk = _new_disk(fake, project, zone, disk_body)
    else:
        match = re.search(r"zones/([^/]+)/disks/([^/]+)$", spec.get("source", ""))
        if not match:
            raise invalid("Required field 'disks[].source' not specified")
        disk = _disk(fake, project, match[1], match[2])
    disk["users"] = [*disk.get("users", []), link]
    return {
        "kind": "compute#attachedDisk",
        "type": "PERSISTENT",
        "mode": spec.get("mode", "READ_WRITE"),
        "source": disk["selfLink"],
        "deviceName": spec.get("deviceName", f"persistent-disk-{index}"),
        "index": index,
        "boot": bool(spec.get("boot", False)),
        "autoDelete": bool(spec.get("autoDelete", False)),
    }


def _network_link(project: str, network: str | None) -> str:
    """A network (name, partial or full URL; the default network if none) as a full URL."""
    network = network or "default"
    if network.startswith(SELF_LINK_BASE):
        return network
    if network.startswith("projects/"):
        return SELF_LINK_BASE + network
    if "/" in network:
        return f"{SELF_LINK_BASE}projects/{project}/{network}"
    return f"{SELF_LINK_BASE}projects/{project}/global/networks/{network}"


def _interface(fake: FakeGce, project: str, index: int, spec: dict[str, Any]) -> dict[str, Any]:
    """A network interface as the API reports it: its network, an internal address, and an
    external one (from TEST-NET-3) for each ONE_TO_ONE_NAT access config."""
    number = next(fake._addresses)
    network = _network_link(project, spec.get("network"))
    configs = []
    for config in spec.get("accessConfigs", []):
        if config.get("type", "ONE_TO_ONE_NAT") != "ONE_TO_ONE_NAT":
            raise invalid(f"Invalid value for field 'accessConfigs.type': '{config['type']}'")
        configs.append({"kind": "compute#accessConfig", **config, "natIP": f"203.0.113.{number}"})
    return {
        **spec,
        "kind": "compute#networkInterface",
        "name": f"nic{index}",
        "network": network,
        "networkIP": f"10.132.0.{number}",
        "accessConfigs": configs,
    }


@handles("compute.instances.insert")
def _instances_insert(fake: FakeGce, request: Request) -> dict[str, Any]:
    project, zone = fake._project(request), request.params["zone"]
    body = _writable(fake, "Instance", request.body)
    name = body["name"]
    link = _zonal_link(project, zone, "instances", name)
    if (project, zone, name) in fake.instances:
        raise ApiError(409, "alreadyExists", f"The resource '{link}' already exists")
    disks = [_attach(fake, project, zone, name, i, d) for i, d in enumerate(body.get("disks", []))]
    interfaces = [
        _interface(fake, project, i, n) for i, n in enumerate(body.get("networkInterfaces", []))
    ]
    instance = {
        **body,
        "networkInterfaces": interfaces,
        "kind": "compute#instance",
        "id": fake._id(),
        "creationTimestamp": fake._tick(),
        "selfLink": link,
        "zone": f"{SELF_LINK_BASE}projects/{project}/zones/{zone}",
        "status": "RUNNING",
        "disks": disks,
        "labelFingerprint": _labels_fingerprint(body.get("labels", {})),
    }
    fake.instances[(project, zone, name)] = instance
    return fake._operation(project, "insert", link, instance["id"], zone)


def _instance(fake: FakeGce, project: str, zone: str, name: str) -> dict[str, Any]:
    instance = fake.instances.get((project, zone, name))
    if instance is None:
        raise not_found(f"projects/{project}/zones/{zone}/instances/{name}")
    return instance


@handles("compute.instances.get")
def _instances_get(fake: FakeGce, request: Request) -> dict[str, Any]:
    project = fake._project(request)
    name = request.params["instance"]
    return copy.deepcopy(_instance(fake, project, request.params["zone"], name))


@handles("compute.instances.delete")
def _instances_delete(fake: FakeGce, request: Request) -> dict[str, Any]:
    project, zone = fake._project(request), request.params["zone"]
    instance = _instance(fake, project, zone, request.params["instance"])
    for attached in instance.get("disks", []):
        match = re.search(r"zones/([^/]+)/disks/([^/]+)$", attached["source"])
        key = (project, match[1], match[2]) if match else None
        disk = fake.disks.get(key) if key else None
        if disk is None:
            continue
        disk["users"] = [u for u in disk.get("users", []) if u != instance["selfLink"]]
        if not disk["users"]:
            del disk["users"]
        if attached.get("autoDelete"):
            del fake.disks[key]  # type: ignore[arg-type]
    del fake.instances[(project, zone, instance["name"])]
    return fake._operation(project, "delete", instance["selfLink"], instance["id"], zone)


def _aggregated(
    fake: FakeGce, request: Request, store: dict[tuple[str, str, str], Any], kind: str
) -> dict[str, Any]:
    project = fake._project(request)
    found = _filtered(request, [r for (p, _, _), r in sorted(store.items()) if p == project])
    items: dict[str, dict[str, Any]] = {}
    for resource in found:
        scope = "zones/" + resource["zone"].rsplit("/", 1)[1]
        items.setdefault(scope, {kind: []})[kind].append(resource)
    plural = "instanceAggregatedList" if kind == "instances" else "diskAggregatedList"
    return {
        "kind": f"compute#{plural}",
        "id": f"projects/{project}/aggregated/{kind}",
        "selfLink": f"{SELF_LINK_BASE}projects/{project}/aggregated/{kind}",
        "items": items,
    }


@handles("compute.instances.aggregatedList")
def _instances_aggregated(fake: FakeGce, request: Request) -> dict[str, Any]:
    return _aggregated(fake, request, fake.instances, "instances")


@handles("compute.disks.aggregatedList")
def _disks_aggregated(fake: FakeGce, request: Request) -> dict[str, Any]:
    return _aggregated(fake, request, fake.disks, "disks")


# --- firewalls -------------------------------------------------------------------------------


def _firewall_link(project: str, name: str) -> str:
    return f"{SELF_LINK_BASE}projects/{project}/global/firewalls/{name}"


def _firewall(fake: FakeGce, project: str, name: str) -> dict[str, Any]:
    rule = fake.firewalls.get((project, name))
    if rule is None:
        raise not_found(f"projects/{project}/global/firewalls/{name}")
    return rule


@handles("compute.firewalls.insert")
def _firewalls_insert(fake: FakeGce, request: Request) -> dict[str, Any]:
    """Like the API: one of allowed/denied, source ranges or tags for INGRESS, defaults filled."""
    project = fake._project(request)
    body = _writable(fake, "Firewall", request.body)
    name, link = body["name"], _firewall_link(project, body["name"])
    if (project, name) in fake.firewalls:
        raise ApiError(409, "alreadyExists", f"The resource '{link}' already exists")
    if bool(body.get("allowed")) == bool(body.get("denied")):
        raise invalid("Exactly one of 'allowed' or 'denied' must be specified")
    for rule in body.get("allowed", []) + body.get("denied", []):
        if "IPProtocol" not in rule:
            raise invalid("Required field 'IPProtocol' not specified")
    direction = body.get("direction", "INGRESS")
    if direction == "INGRESS" and not (body.get("sourceRanges") or body.get("sourceTags")):
        body["sourceRanges"] = ["0.0.0.0/0"]  # what the API does: worth a test to forbid
    network = _network_link(project, body.get("network"))
    rule = {
        "priority": 1000,
        **body,
        "kind": "compute#firewall",
        "id": fake._id(),
        "creationTimestamp": fake._tick(),
        "selfLink": link,
        "network": network,
        "direction": direction,
        "disabled": bool(body.get("disabled", False)),
    }
    fake.firewalls[(project, name)] = rule
    return fake._operation(project, "insert", link, rule["id"])


@handles("compute.firewalls.get")
def _firewalls_get(fake: FakeGce, request: Request) -> dict[str, Any]:
    project = fake._project(request)
    return copy.deepcopy(_firewall(fake, project, request.params["firewall"]))


@handles("compute.firewalls.delete")
def _firewalls_delete(fake: FakeGce, request: Request) -> dict[str, Any]:
    project = fake._project(request)
    rule = _firewall(fake, project, request.params["firewall"])
    del fake.firewalls[(project, rule["name"])]
    return fake._operation(project, "delete", rule["selfLink"], rule["id"])


@handles("compute.firewalls.list")
def _firewalls_list(fake: FakeGce, request: Request) -> dict[str, Any]:
    project = fake._project(request)
    mine = [rule for (p, _), rule in sorted(fake.firewalls.items()) if p == project]
    items, token = _page(request, _filtered(request, mine))
    result: dict[str, Any] = {
        "kind": "compute#firewallList",
        "id": f"projects/{project}/global/firewalls",
        "selfLink": f"{SELF_LINK_BASE}projects/{project}/global/firewalls",
    }
    if items:
        result["items"] = items
    if token:
        result["nextPageToken"] = token
    return result


@handles("compute.zoneOperations.get")
def _zone_operations_get(fake: FakeGce, request: Request) -> dict[str, Any]:
    return fake._poll(request, request.params["zone"], wait=False)


@handles("compute.zoneOperations.wait")
def _zone_operations_wait(fake: FakeGce, request: Request) -> dict[str, Any]:
    return fake._poll(request, request.params["zone"], wait=True)


# --- the HTTP server ------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeGce


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        status, payload = self.server.fake.handle(self.command, self.path, raw)
        data = json.dumps(payload).encode() if payload is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the fake's request log is `FakeGce.log`."""


@contextlib.contextmanager
def serve(discovery: Discovery | None = None) -> Iterator[FakeGce]:
    """Run the fake on 127.0.0.1 (ephemeral port) in a thread; yields it with `.url` set."""
    fake = FakeGce(discovery or Discovery())
    server = _Server(("127.0.0.1", 0), _Handler)
    server.fake = fake
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
    thread.daemon = True
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
