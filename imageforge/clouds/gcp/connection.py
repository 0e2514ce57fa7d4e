"""The Compute Engine connection of every GCP concern: project, credentials, clients, operations.

The SDK is imported only inside functions. `IMAGEFORGE_GCP_ENDPOINT` points every client
elsewhere (a local test server); a plain-http endpoint gets anonymous credentials, so no token
is ever sent in clear.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from imageforge.clouds.sdkerrors import sdk_errors
from imageforge.config import settings
from imageforge.errors import ImageforgeError

if TYPE_CHECKING:
    from imageforge.config import Project

ENDPOINT_ENV = "IMAGEFORGE_GCP_ENDPOINT"
DEFAULT_ENDPOINT = "compute.googleapis.com"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
ADC_MISSING = (
    "no application default credentials: run `gcloud auth application-default login` "
    "or set GOOGLE_APPLICATION_CREDENTIALS"
)
OPERATION_TIMEOUT = 900.0


def project_id(project: Project) -> str:
    """The GCP project: clouds.gcp.project, else $GOOGLE_CLOUD_PROJECT (as the build uses)."""
    found = project.images.clouds.gcp.project or os.environ.get("GOOGLE_CLOUD_PROJECT", "")
    if not found:
        raise ImageforgeError(
            "no GCP project: set clouds.gcp.project in images.yml or GOOGLE_CLOUD_PROJECT"
        )
    return found


def connection() -> tuple[Any, dict[str, str]]:
    """Credentials and client options for every Compute Engine client."""
    endpoint = settings.current().gcp_endpoint
    options = {"api_endpoint": endpoint} if endpoint else {}
    if endpoint.startswith("http://"):
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials(), options
    return _default_credentials(), options


def _default_credentials() -> Any:
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, _ = google.auth.default(scopes=SCOPES)
    except DefaultCredentialsError as exc:
        path = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        detail = f" (GOOGLE_APPLICATION_CREDENTIALS={path}: {exc})" if path else ""
        raise ImageforgeError(ADC_MISSING + detail) from exc
    return credentials


class Gce:
    """The Compute Engine clients of one command in one project, sharing one connection."""

    def __init__(self, project: str) -> None:
        self.project = project
        self.connection = connection()
        self.endpoint = self.connection[1].get("api_endpoint", DEFAULT_ENDPOINT)
        self._clients: dict[str, Any] = {}

    def client(self, kind: str) -> Any:
        """A google.cloud.compute_v1 client by class name (ImagesClient, ...) over REST."""
        if kind not in self._clients:
            from google.cloud import compute_v1

            credentials, options = self.connection
            self._clients[kind] = getattr(compute_v1, kind)(
                transport="rest", credentials=credentials, client_options=options or None
            )
        return self._clients[kind]

    @property
    def images(self) -> Any:
        return self.client("ImagesClient")

    @contextlib.contextmanager
    def errors(self, operation: str) -> Iterator[None]:
        """SDK errors as one line naming the project, the operation and the endpoint."""
        with sdk_errors(f"GCP project {self.project}", operation, self.endpoint):
            yield

    def wait(self, operation: Any) -> None:
        """Wait for a global or zonal operation; raise ImageforgeError if it failed.

        Waits through this object's operations clients: the SDK's own `.result()` polls with a
        client built without our client options, i.e. past an endpoint override.
        """
        from google.cloud import compute_v1

        deadline = time.monotonic() + OPERATION_TIMEOUT
        while operation.status != compute_v1.Operation.Status.DONE:
            if time.monotonic() > deadline:
                raise ImageforgeError(f"operation {operation.name} still not done; gave up")
            zone = operation.zone.rsplit("/", 1)[-1]
            if zone:
                operation = self.client("ZoneOperationsClient").wait(
                    project=self.project, zone=zone, operation=operation.name
                )
            else:
                operation = self.client("GlobalOperationsClient").wait(
                    project=self.project, operation=operation.name
                )
        errors = [e.message or e.code for e in operation.error.errors]
        if errors:
            raise ImageforgeError(f"{operation.operation_type} failed: " + "; ".join(errors))

    def list_images(self, list_filter: str) -> list[Any]:
        return list(self.images.list(request={"project": self.project, "filter": list_filter}))
