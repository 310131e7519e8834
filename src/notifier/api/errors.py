"""One error envelope for every answer that is not a success.

Every error, from a handler, the router (unknown route, wrong method), body
decoding or an unexpected exception, leaves as
`{"error": {"code": "...", "message": "...", "details": [...]?}}`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

log = logging.getLogger(__name__)

# Status -> the code used when the raiser gave none (router errors, mostly).
DEFAULT_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


class FieldError(msgspec.Struct, omit_defaults=True):
    """Where a request was invalid and why."""

    location: str
    field: str
    message: str


class ErrorBody(msgspec.Struct, omit_defaults=True):
    """The inside of the envelope."""

    code: str
    message: str
    details: list[FieldError] | None = None


class ErrorEnvelope(msgspec.Struct):
    """`{"error": {"code", "message", "details"?}}`."""

    error: ErrorBody


class ApiError(Exception):
    """Raised by handlers; rendered as the envelope with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        details: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or DEFAULT_CODES.get(status, "error")
        self.message = message
        self.details = details
        self.headers = headers or {}


def not_found(what: str) -> ApiError:
    """The 404 for a resource that does not exist or belongs to someone else."""
    return ApiError(404, f"{what} not found")


_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]*)`$")
_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)


def validation_error(exc: msgspec.ValidationError, location: str) -> ApiError:
    """A 422 naming the field msgspec rejected (`$.a.b[0]` -> `a.b[0]`)."""
    m = _AT.match(str(exc))
    msg = m.group("msg") if m else str(exc)
    path = (m.group("path") or "") if m else ""
    field = path.lstrip(".")
    unknown = _UNKNOWN.match(msg)
    if unknown:  # msgspec names the unknown key in the message, not in the path
        field = f"{field}.{unknown.group(1)}" if field else unknown.group(1)
    detail = FieldError(location=location, field=field or "(root)", message=msg)
    where = f" ({location} {field})" if field else f" ({location})"
    return ApiError(422, f"{msg}{where}", details=[detail])


def envelope(
    status: int,
    code: str,
    message: str,
    details: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """The JSON error response."""
    body = ErrorEnvelope(ErrorBody(code=code, message=message, details=details))
    return Response(
        msgspec.json.encode(body),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


async def handle_api_error(request: Request, exc: Exception) -> Response:
    """Starlette handler for `ApiError`."""
    assert isinstance(exc, ApiError)
    return envelope(exc.status, exc.code, exc.message, exc.details, exc.headers)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette handler for the router's own 404/405 (and any HTTPException)."""
    assert isinstance(exc, HTTPException)
    code = DEFAULT_CODES.get(exc.status_code, "error")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
    message = {
        404: f"no route {request.url.path}",
        405: f"{request.method} is not allowed on {request.url.path}",
    }.get(exc.status_code, str(exc.detail))
    return envelope(exc.status_code, code, message, headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route accepts on this path (Starlette lists only one route's)."""
    methods: set[str] = set()
    # A fixed path (`/api/watchlist/import`) is its own resource, even where a
    # templated one (`/api/watchlist/{id}`) would also match it.
    fixed = [r for r in request.app.routes if getattr(r, "path", None) == request.url.path]
    for route in fixed or request.app.routes:
        if getattr(route, "name", None) == "method_not_allowed":  # routing.NOT_ALLOWED
            continue
        match, _ = route.matches({**request.scope, "method": "\x00"})
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    """Last resort: log the exception (never the request's secrets), answer 500."""
    # The route's template, not the path: a feed URL's path is its credential.
    path = getattr(request.scope.get("route"), "path", None) or "<unmatched>"
    log.error("unhandled error", exc_info=exc, extra={"path": path, "method": request.method})
    return envelope(500, "internal_error", "internal error")


def handlers() -> dict[Any, Any]:
    """The exception handlers to give `Starlette(exception_handlers=...)`."""
    return {
        ApiError: handle_api_error,
        HTTPException: handle_http_exception,
        Exception: handle_unexpected,
    }
