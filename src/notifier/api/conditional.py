"""Conditional GETs: `ETag`, `If-None-Match` and `304 Not Modified`, and the poll interval.

An ETag here is a strong validator made from a few values that change
whenever the representation does (a per-user version read in one cheap
query, plus the request's own parameters), hashed so that it reveals
nothing about them. `If-None-Match` uses the weak comparison of RFC 9110
§13.1.2: `W/"x"` matches `"x"`, and `*` matches any current representation.
"""

from __future__ import annotations

import hashlib

from starlette.requests import Request
from starlette.responses import Response

# Seconds a polling client should wait between requests (GitHub's
# notifications API says 60 too); sent as `X-Poll-Interval`.
POLL_INTERVAL_SECONDS = 60
# Bumped whenever a representation's format changes, so old ETags stop matching.
FORMAT = "1"
# Answers are per user: a shared cache must not keep them; a browser may, revalidating.
CACHE_CONTROL = "private, no-cache"
# The largest If-None-Match header looked at; longer ones simply do not match.
MAX_HEADER = 8192


def etag(*parts: object) -> str:
    """A strong ETag (quoted) over `parts`, which must determine the representation."""
    text = "\x1f".join([FORMAT, *(str(p) for p in parts)])
    return '"' + hashlib.sha256(text.encode()).hexdigest()[:32] + '"'


def matches(request: Request, tag: str) -> bool:
    """Whether the request's `If-None-Match` names `tag` (or is `*`)."""
    header = request.headers.get("if-none-match")
    if header is None or len(header) > MAX_HEADER:
        return False
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*":
            return True
        if candidate.startswith("W/"):
            candidate = candidate[2:]
        if candidate == tag:
            return True
    return False


def headers(tag: str, *, poll: bool = True) -> dict[str, str]:
    """The validator headers of a 200 or 304 (with the poll interval when `poll`)."""
    out = {"ETag": tag, "Cache-Control": CACHE_CONTROL}
    if poll:
        out["X-Poll-Interval"] = str(POLL_INTERVAL_SECONDS)
    return out


def not_modified(tag: str, *, poll: bool = True) -> Response:
    """`304 Not Modified`: no body, the same validator headers as the 200."""
    return Response(status_code=304, headers=headers(tag, poll=poll))
