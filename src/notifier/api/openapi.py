"""`/openapi.json`, generated from the endpoints and their msgspec structs.

Component schemas come from `msgspec.json.schema_components`, so the document
always matches what the handlers decode and encode. OpenAPI 3.1 uses JSON
Schema 2020-12, which is what msgspec emits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from notifier.api.errors import ErrorEnvelope
from notifier.api.routing import Endpoint
from notifier.api.schemas import ReleaseFilterOptions, SearchOptions, ThresholdOptions

REF = "#/components/schemas/{name}"
# Shapes a request carries inside a free-form field (a watch's `options`).
DOCUMENTED: tuple[Any, ...] = (SearchOptions, ThresholdOptions, ReleaseFilterOptions)
MAX_BIGINT = 2**63 - 1

_PATH_SCHEMAS: dict[str, dict[str, Any]] = {
    "integer": {"type": "integer", "minimum": 0, "maximum": MAX_BIGINT},
    "uuid": {"type": "string", "format": "uuid"},
    "token": {"type": "string", "minLength": 1, "maxLength": 512},
}
_STATUS_TEXT = {
    200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 304: "Not Modified",
    400: "Bad request",
    401: "Missing or invalid credentials", 404: "Not found", 405: "Method not allowed",
    409: "Conflict", 413: "Body too large", 422: "Invalid input", 429: "Too many requests",
    503: "A dependency is unavailable",
}  # fmt: skip


_STRING = {"type": "string"}
# Response headers of conditional (`Endpoint.conditional`) and polled (`.poll`) routes.
_ETAG_HEADERS = {
    "ETag": {
        "description": "Validator of this answer; send it back in If-None-Match.",
        "schema": _STRING,
    },
    "Cache-Control": {"description": "`private, no-cache`.", "schema": _STRING},
}
_POLL_HEADER = {
    "X-Poll-Interval": {
        "description": "Seconds to wait before polling again.",
        "schema": {"type": "integer", "minimum": 1},
    },
}
_IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "schema": _STRING,
    "description": "An ETag of an earlier answer: 304 with no body while it still holds.",
}


def _query_parameters(query: Any) -> list[dict[str, Any]]:
    (ref,), components = msgspec.json.schema_components([query], ref_template=REF)
    definition = components[ref["$ref"].rsplit("/", 1)[1]]
    required = set(definition.get("required", ()))
    params = []
    for name, schema in definition["properties"].items():
        branches = [b for b in schema.get("anyOf", ()) if b != {"type": "null"}]
        if len(branches) == 1:  # `T | None = None`: in a query string, simply optional
            schema = branches[0]
        params.append({"name": name, "in": "query", "required": name in required, "schema": schema})
    return params


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _operation(e: Endpoint, schema_of: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    error = schema_of[ErrorEnvelope]
    responses: dict[str, Any] = {}
    headers = {**(_ETAG_HEADERS if e.conditional else {}), **(_POLL_HEADER if e.poll else {})}
    for status in (e.status, *e.also, *((304,) if e.conditional else ())):
        answer: dict[str, Any] = {"description": _STATUS_TEXT.get(status, "OK")}
        if headers and status in (e.status, 304):
            answer["headers"] = headers
        if status not in (204, 304):
            if e.response is not None:
                answer["content"] = _json(schema_of[e.response])
            else:
                answer["content"] = {e.media_type: {"schema": {"type": "string"}}}
        responses[str(status)] = answer
    errors = set(e.errors)
    if e.auth != "none":
        errors |= {401, 429} if e.auth == "user" else {401, 404}
    if e.body is not None:
        errors |= {400, 413, 422}
    for status in sorted(errors):
        responses[str(status)] = {"description": _STATUS_TEXT[status], "content": _json(error)}
    op: dict[str, Any] = {
        "operationId": f"{e.method.lower()}_{e.handler.__name__}",
        "summary": e.summary,
        "tags": [e.tag],
        "responses": responses,
    }
    if e.description:
        op["description"] = e.description
    params = [
        {"name": name, "in": "path", "required": True, "schema": _PATH_SCHEMAS[kind]}
        for name, kind in e.path_params.items()
    ]
    if e.query is not None:
        params += _query_parameters(e.query)
    if e.conditional:
        params.append(_IF_NONE_MATCH)
    if params:
        op["parameters"] = params
    if e.body is not None:
        op["requestBody"] = {"required": True, "content": _json(schema_of[e.body])}
    if e.auth == "user":
        op["security"] = [{"bearerAuth": []}]
    elif e.auth == "service":
        op["security"] = [{"serviceToken": []}]
    else:
        op["security"] = []
    return op


def document(
    endpoints: Sequence[Endpoint], *, version: str, rate_per_minute: int = 0, burst: int = 0
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `endpoints` (with this deployment's rate limit)."""
    rate = (
        f"each user may send {rate_per_minute} requests per minute per replica, in bursts of "
        f"up to {burst}; past that, 429 with Retry-After"
        if rate_per_minute > 0
        else "no per-user rate limit is configured"
    )
    types: list[Any] = [ErrorEnvelope, *DOCUMENTED]
    for e in endpoints:
        for t in (e.body, e.response):
            if t is not None and t not in types:
                types.append(t)
    schemas, components = msgspec.json.schema_components(types, ref_template=REF)
    schema_of = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", e.path)  # `{id:int}` is Starlette's
        paths.setdefault(path, {})[e.method.lower()] = _operation(e, schema_of)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Discogsography Notifier",
            "version": version,
            "description": "Watch artists, labels, genres, styles and searches; get told what "
            "each monthly import changed, in a feed, over SSE and through signed webhooks. "
            'Errors: `{"error": {"code", "message", "details"?}}`. Limits: request '
            "bodies 64 KiB on /api (1 MiB on /internal), else 413; " + rate + ".",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "serviceToken": {"type": "http", "scheme": "bearer"},
            },
        },
    }
