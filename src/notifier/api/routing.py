"""Endpoints: a handler plus what `/openapi.json` says about it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Endpoint:
    """One method on one path, with its request and response types."""

    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    status: int = 200
    response: Any = None
    body: Any = None
    query: Any = None
    path_params: dict[str, Literal["integer", "uuid", "token"]] = field(default_factory=dict)
    auth: Literal["user", "service", "none"] = "user"
    errors: tuple[int, ...] = ()
    also: tuple[int, ...] = ()  # other statuses answering the same `response` type
    media_type: str = "application/json"
    description: str = ""
    conditional: bool = False  # ETag on the answer, 304 on a matching If-None-Match
    poll: bool = False  # X-Poll-Interval on the answer


# The name of the routes that only answer 405 (`errors.allowed_methods` skips them).
NOT_ALLOWED = "method_not_allowed"
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


async def _method_not_allowed(request: Request) -> Response:
    raise HTTPException(405)


def routes(endpoints: Iterable[Endpoint]) -> list[Route]:
    """Starlette routes, in the given order (fixed paths before `{id}` ones).

    A fixed path that a templated route would also match (`/api/watchlist/import`
    and `/api/watchlist/{id}`) is a resource of its own: its other methods
    answer 405, rather than falling through to the templated route.
    """
    out = [Route(e.path, e.handler, methods=[e.method]) for e in endpoints]
    for path in dict.fromkeys(r.path for r in out if "{" not in r.path):
        scope = {"type": "http", "path": path, "root_path": "", "method": "GET"}
        own = {m for r in out if r.path == path for m in r.methods or ()}
        for i, route in enumerate(out):
            if "{" in route.path and route.matches(scope)[0] != Match.NONE:
                others = [m for m in _METHODS if m not in own]
                out.insert(i, Route(path, _method_not_allowed, methods=others, name=NOT_ALLOWED))
                break
    return out


def respond(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response encoded by msgspec."""
    return Response(
        msgspec.json.encode(value), status_code=status, media_type="application/json",
        headers=headers,
    )  # fmt: skip


def no_content() -> Response:
    """204."""
    return Response(status_code=204)
