"""GCP preflight: credentials resolve, the project answers, the source image family resolves."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imageforge.clouds.gcp.connection import ENDPOINT_ENV, Gce, project_id
from imageforge.clouds.sdkerrors import CloudError
from imageforge.errors import ImageforgeError

if TYPE_CHECKING:
    from imageforge.config import Project
    from imageforge.config.matrix import Cell


class GcpPreflight:
    def doctor(self, project: Project, cell: Cell) -> list[str]:
        from google.api_core import exceptions
        from google.auth.exceptions import RefreshError

        where = project_id(project)
        gce = Gce(where)
        credentials, options = gce.connection
        found = [f"credentials: {_describe(credentials, options)}"]
        try:
            with gce.errors("list images"):
                try:
                    gce.images.list(request={"project": where, "max_results": 1})
                except RefreshError as exc:
                    raise ImageforgeError(
                        f"application default credentials got no access token: {exc}",
                        hint="run `gcloud auth application-default login` again",
                    ) from None
                except exceptions.NotFound:
                    raise ImageforgeError(
                        f"GCP project {where!r} not found",
                        hint="check clouds.gcp.project in images.yml or GOOGLE_CLOUD_PROJECT",
                    ) from None
                except (exceptions.Forbidden, exceptions.Unauthorized) as exc:
                    raise ImageforgeError(
                        f"no access to Compute Engine in project {where!r}: {exc.message}",
                        hint="enable the API (`gcloud services enable compute.googleapis.com`) "
                        "and grant the account roles/compute.instanceAdmin.v1 and "
                        "roles/iam.serviceAccountUser",
                    ) from None
        except CloudError as exc:
            exc.hint = f"check the network, proxy settings and {ENDPOINT_ENV} if set"
            raise
        found.append(f"project {where}: Compute Engine answers")
        source = project.images.clouds.gcp.source_image[cell.os]
        with gce.errors("find the source image"):
            try:
                image = gce.images.get_from_family(project=source.project, family=source.family)
            except exceptions.NotFound:
                raise ImageforgeError(
                    f"source image family {source.family!r} not found in project "
                    f"{source.project!r}",
                    hint=f"check clouds.gcp.source_image.{cell.os} in images.yml; "
                    f"`gcloud compute images describe-from-family {source.family} "
                    f"--project {source.project}` shows what exists",
                ) from None
        found.append(f"source image {image.name} (family {source.family} in {source.project})")
        return found


def _describe(credentials: Any, options: dict[str, str]) -> str:
    if "api_endpoint" in options and type(credentials).__name__ == "AnonymousCredentials":
        return f"anonymous, for the endpoint {options['api_endpoint']}"
    account = getattr(credentials, "service_account_email", None)
    kind = type(credentials).__module__.rsplit(".", 1)[-1]
    return f"application default credentials ({kind}{', ' + account if account else ''})"
