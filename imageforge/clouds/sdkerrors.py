"""Cloud SDK errors as one line a user can act on: which cloud, what operation, which endpoint.

botocore, google-api-core/google-auth/requests, openstacksdk and keystoneauth1 raise their own
exception types. They are recognised here by the module that defines them, so that no SDK is
imported to classify an error (and `invoke --list` works without any of them).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator

from imageforge import log
from imageforge.clouds.common import Outcome
from imageforge.errors import ImageforgeError, Interrupted

SDK_MODULES = ("botocore", "boto3", "google", "requests", "urllib3", "openstack", "keystoneauth1")
# Exception names that mean "no answer from the endpoint", in any of the SDKs above.
UNREACHABLE = {
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ConnectionClosedError",
    "ConnectionError",
    "ConnectFailure",
    "ConnectTimeout",
    "NewConnectionError",
    "MaxRetryError",
    "ServiceUnavailable",
    "ConnectionRefusedError",
    "RetryError",
}
REFUSED = {"Unauthorized", "AuthFailure", "UnauthorizedOperation", "RefreshError"}


class CloudError(ImageforgeError):
    """A cloud refused an operation, or could not be reached: one line, exit code 2."""

    exit_code = 2


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _first_line(text: str) -> str:
    text = re.sub(r"<br\s*/?>", " ", text)
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def is_sdk_error(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] in SDK_MODULES


def unreachable(exc: BaseException) -> bool:
    return any(type(e).__name__ in UNREACHABLE for e in _chain(exc)) and not _http_status(exc)


def _http_status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None) or getattr(exc, "http_status", None)
    code = getattr(exc, "code", None)
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = status or response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if status is None and isinstance(code, int):
        status = code
    return status if isinstance(status, int) else None


def why(exc: BaseException) -> str:
    """An SDK error as 'status: what the service said', in one line and without secrets."""
    if unreachable(exc):
        return f"no answer from the endpoint ({_first_line(str(exc)) or type(exc).__name__})"
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:  # botocore ClientError
        error = response["Error"]
        return f"{error.get('Code', '?')}: {_first_line(str(error.get('Message', '')))}"
    details = (
        getattr(exc, "details", None)
        or getattr(exc, "message", None)
        or str(exc)
        or type(exc).__name__
    )
    details = _first_line(str(details))
    if any(type(e).__name__ in REFUSED for e in _chain(exc)) or _http_status(exc) == 401:
        return f"authentication refused ({details})"
    status = _http_status(exc)
    return f"{status}: {details}" if status and not details.startswith(str(status)) else details


@contextlib.contextmanager
def sdk_errors(
    cloud: str, operation: str, endpoint: str = "", *, hint: str | None = None
) -> Iterator[None]:
    """Turn an SDK's exception into a CloudError naming cloud, operation and endpoint."""
    try:
        yield
    except ImageforgeError:
        raise
    except Exception as exc:
        if not (is_sdk_error(exc) or unreachable(exc)):
            raise
        where = f" at {endpoint}" if endpoint else ""
        raise CloudError(f"{cloud}: {operation}{where}: {why(exc)}", hint=hint) from None


@contextlib.contextmanager
def errors_into(outcome: Outcome) -> Iterator[None]:
    """Record a user-facing or SDK error of one place in its outcome and go on."""
    try:
        yield
    except ImageforgeError as exc:
        outcome.error = str(exc)
    except Exception as exc:
        if not (is_sdk_error(exc) or unreachable(exc)):
            raise
        outcome.error = why(exc)


def remove_all(
    steps: list[tuple[str, Callable[[], None]]], where: str, build_id: str, cloud: str
) -> BaseException | None:
    """Run every deletion step even when another failed (Ctrl-C too); each failure is a
    warning naming what is left. An interrupt that came meanwhile is returned, for the caller
    to raise unless an error is already on its way."""
    pending = None
    for what, step in steps:
        try:
            step()
        except BaseException as exc:  # the rest must still go
            if isinstance(exc, Interrupted) or not isinstance(exc, Exception):
                pending = pending or exc
            reason = str(exc) if isinstance(exc, ImageforgeError) else why(exc)
            log.warn(
                f"{where}: could not {what} of build {build_id}: "
                f"{reason or type(exc).__name__}; `invoke sweep --cloud {cloud}` finds it"
            )
    return pending
