"""Reading requests: bodies under a size cap, JSON into structs, queries, path ids."""

from __future__ import annotations

import uuid
from typing import TypeVar

import msgspec
from starlette.requests import ClientDisconnect, Request

from notifier.api.errors import ApiError, FieldError, validation_error

T = TypeVar("T")

# Documented body caps: user routes take small JSON objects; /internal/events
# may list up to 10,000 recipients.
API_BODY_LIMIT = 64 * 1024
INTERNAL_BODY_LIMIT = 1024 * 1024
MAX_BIGINT = 2**63 - 1


async def body(request: Request, limit: int) -> bytes:
    """The request body, or a 413 as soon as it exceeds `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        # The client left, or was cut by the body deadline (api/server.py): its
        # fault, not ours, so no 500 and no error log; nobody reads the answer.
        raise ApiError(400, "the request body did not arrive in full",
                       code="incomplete_body") from None  # fmt: skip
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body is larger than {limit} bytes")


async def json_body(request: Request, type_: type[T], limit: int = API_BODY_LIMIT) -> T:
    """The body decoded as `type_`: 400 if it is not JSON, 422 if it does not fit."""
    raw = await body(request, limit)
    if not raw.strip():
        raise ApiError(400, "a JSON body is required", code="invalid_json")
    if b"\\u0000" in raw:
        # PostgreSQL text and jsonb cannot hold NUL characters.
        raise ApiError(422, "NUL characters (\\u0000) are not allowed")
    try:
        return msgspec.json.decode(raw, type=type_)
    except msgspec.ValidationError as exc:
        raise validation_error(exc, "body") from None
    except msgspec.DecodeError:
        raise ApiError(400, "the body is not valid JSON", code="invalid_json") from None
    except RecursionError:  # msgspec's own depth limit: arrays or objects nested thousands deep
        raise ApiError(400, "the body is nested too deeply", code="invalid_json") from None


def query(request: Request, type_: type[T]) -> T:
    """The query string converted to `type_` (a struct of optional fields); 422 if invalid."""
    params = dict(request.query_params)
    for key, value in params.items():
        repeated = len(request.query_params.getlist(key)) > 1
        if repeated or value == "null":  # msgspec's lax mode would read "null" as None
            message = "given more than once" if repeated else "null is not a value here"
            raise ApiError(
                422, f"{key}: {message}",
                details=[FieldError(location="query", field=key, message=message)],
            )  # fmt: skip
    try:
        return msgspec.convert(params, type_, strict=False)
    except msgspec.ValidationError as exc:
        raise validation_error(exc, "query") from None


def path_int(request: Request, name: str, what: str) -> int:
    """A bigint path parameter; anything else is a 404 (no such resource)."""
    raw = request.path_params[name]  # an int from `{id:int}`, or text
    text = str(raw)
    if not text.isascii() or not text.isdigit() or int(text) > MAX_BIGINT:
        raise ApiError(404, f"{what} not found")
    return int(text)


def path_uuid(request: Request, name: str, what: str) -> uuid.UUID:
    """A UUID path parameter; anything else is a 404 (no such resource)."""
    try:
        return uuid.UUID(request.path_params[name])
    except ValueError:
        raise ApiError(404, f"{what} not found") from None
