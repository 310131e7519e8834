"""The Atom feed: `POST /api/feed-token` and `GET /feeds/{token}.atom` (RFC 4287).

The token is the credential of the feed URL (feed readers cannot send a
JWT): 32 random bytes, base64url (43 characters). Only its SHA-256 is stored
(`sql/011_feed_tokens.sql`); a new token replaces the user's previous one. A
request for an unknown token costs a format check and, when well formed, one
unique-index probe. The document holds the user's 50 newest notifications and
is built with `xml.etree.ElementTree`, never by pasting strings; characters
XML 1.0 cannot carry are replaced. It has an ETag (the feed's version, as for
`GET /api/notifications`) and answers 304 to a matching `If-None-Match`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any

import msgspec
from psycopg.rows import dict_row
from starlette.requests import Request
from starlette.responses import Response

from notifier.api import auth, conditional, cursor, feed
from notifier.api.context import ctx
from notifier.api.errors import ApiError, not_found
from notifier.api.ratelimit import retry_after_header
from notifier.api.routing import Endpoint, respond
from notifier.api.schemas import Notification
from notifier.client import summarize

ATOM_NS = "http://www.w3.org/2005/Atom"
MEDIA_TYPE = "application/atom+xml; charset=utf-8"
ENTRIES = 50
TOKEN_BYTES = 32
# What `secrets.token_urlsafe(32)` makes; anything else is a 404 without a query.
TOKEN_FORMAT = re.compile(r"[A-Za-z0-9_-]{43}")
# Namespace of the feed's and entries' `urn:uuid:` ids (uuid5: stable, opaque).
ID_NAMESPACE = uuid.UUID("6f1c0e52-6a7e-4c55-9d0b-8b3f0f6a2d11")
# Characters XML 1.0 cannot hold (controls, surrogates, U+FFFE/U+FFFF).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_DISCOGS = {"artist": "https://www.discogs.com/artist/", "label": "https://www.discogs.com/label/"}

# Index: feed_tokens primary key (user_id). A new token replaces the old one.
STORE_FEED_HASH = """
INSERT INTO notifier.feed_tokens (user_id, token_hash) VALUES (%(user)s, %(hash)s)
ON CONFLICT (user_id) DO UPDATE SET token_hash = excluded.token_hash, created_at = now()
"""
# Index: feed_tokens_hash_key (token_hash).
FIND_FEED_USER = "SELECT user_id, created_at FROM notifier.feed_tokens WHERE token_hash = %s"


class FeedUrl(msgspec.Struct):
    """Answer of `POST /api/feed-token`: the secret feed URL (shown only here)."""

    url: str


def token_hash(token: str) -> bytes:
    """The stored form of a token: its SHA-256."""
    return hashlib.sha256(token.encode()).digest()


def _xml_text(value: object) -> str:
    return _NOT_XML.sub("\ufffd", str(value))


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def entry_title(n: Notification) -> str:
    """A one-line title: the entity and what happened to it."""
    detail = msgspec.json.decode(bytes(n.detail))
    what = summarize(detail) or n.event.replace("_", " ")
    if n.event == "ping":
        what = "webhook test"
    elif n.event == "webhook.disabled" and isinstance(detail, dict):
        what = f"webhook disabled: {detail.get('reason', '')}".rstrip(": ")
    name = n.entity_name or n.entity_id
    return f"{name}: {what}" if name else what


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, {k: _xml_text(v) for k, v in attrs.items()})
    if text is not None:
        el.text = _xml_text(text)
    return el


def document(
    user_id: uuid.UUID, self_url: str, base_url: str, items: list[Notification],
    since: datetime,
) -> bytes:  # fmt: skip
    """The Atom 1.0 document of `items` (newest first); `since` dates an empty feed."""
    # Unprefixed names under a default xmlns (ElementTree's default_namespace
    # option refuses unqualified attributes such as `href`).
    root = ET.Element("feed", {"xmlns": ATOM_NS})
    _sub(root, "id", f"urn:uuid:{uuid.uuid5(ID_NAMESPACE, f'feed:{user_id}')}")
    _sub(root, "title", "Discogsography notifications")
    _sub(root, "updated", _stamp(items[0].created_at if items else since))
    _sub(root, "link", rel="self", type="application/atom+xml", href=self_url)
    _sub(root, "link", rel="alternate", type="application/json",
         href=f"{base_url}api/notifications")  # fmt: skip
    author = _sub(root, "author")
    _sub(author, "name", "Discogsography Notifier")
    _sub(root, "generator", "Discogsography Notifier")
    for n in items:
        entry = _sub(root, "entry")
        _sub(entry, "id", f"urn:uuid:{uuid.uuid5(ID_NAMESPACE, f'{user_id}:{n.id}')}")
        _sub(entry, "title", entry_title(n), type="text")
        _sub(entry, "updated", _stamp(n.created_at))
        _sub(entry, "published", _stamp(n.created_at))
        own = f"{base_url}api/notifications/{n.id}"
        if n.entity_type in _DISCOGS and n.entity_id and n.entity_id.isdigit():
            # Feed readers open the alternate link: the entity's Discogs page.
            _sub(entry, "link", rel="alternate", type="text/html",
                 href=_DISCOGS[n.entity_type] + n.entity_id)  # fmt: skip
            _sub(entry, "link", rel="related", type="application/json", href=own)
        else:
            _sub(entry, "link", rel="alternate", href=own)
        _sub(entry, "category", term=n.event)
        for watch_id in n.watch_ids:  # the watches that caused it (`watch_ids`)
            _sub(entry, "category", term=str(watch_id), label="watch",
                 scheme=f"{base_url}api/watchlist")  # fmt: skip
        summary = f"{n.event} on {n.entity_type or '-'} {n.entity_id or '-'}"
        if n.version:
            summary += f" (import {n.version})"
        _sub(entry, "summary", f"{entry_title(n)}. {summary}. Detail: {bytes(n.detail).decode()}",
             type="text")  # fmt: skip
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return body


async def create_token(request: Request) -> Response:
    """POST /api/feed-token: a new secret feed URL; the previous one stops working."""
    who = await auth.user(request)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    async with ctx(request).pool.connection() as conn:
        await conn.execute(STORE_FEED_HASH, {"user": who.id, "hash": token_hash(token)})
    url = f"{request.base_url}feeds/{token}.atom"
    return respond(FeedUrl(url=url), 201, headers={"Cache-Control": "no-store"})


async def atom_feed(request: Request) -> Response:
    """GET /feeds/{token}.atom: the user's 50 newest notifications (ETag, 304)."""
    token = request.path_params["token"]
    if not TOKEN_FORMAT.fullmatch(token):
        raise not_found("feed")
    c = ctx(request)
    async with c.pool.connection() as conn:
        found = await (await conn.execute(FIND_FEED_USER, (token_hash(token),))).fetchone()
        if found is None:
            raise not_found("feed")
        user_id, since = found
        wait = c.limiter.take(user_id)
        if wait is not None:
            raise ApiError(429, "too many requests; slow down",
                           headers={"Retry-After": retry_after_header(wait)})  # fmt: skip
        version = await feed.feed_version(conn, user_id)
        # The token's creation dates an empty feed, so it is part of the version.
        tag = conditional.etag("atom", user_id, version[0], version[1], version[2], since)
        if conditional.matches(request, tag):
            return conditional.not_modified(tag, poll=False)
        cur = conn.cursor(row_factory=dict_row)
        params: dict[str, Any] = {"user": user_id, "before": cursor.MAX_BIGINT,
                                  "limit": ENTRIES}  # fmt: skip
        await cur.execute(feed.FEED_PAGE, params)
        items = [feed.notification(r) for r in await cur.fetchall()]
    base = str(request.base_url)
    body = document(user_id, str(request.url.replace(query="")), base, items, since)
    return Response(body, media_type=MEDIA_TYPE, headers=conditional.headers(tag, poll=False))


ENDPOINTS = [
    Endpoint("POST", "/api/feed-token", create_token, "Make a new secret Atom feed URL", "feed",
             status=201, response=FeedUrl,
             description="The previous feed URL stops working. The URL is the credential of "
             "the feed: it is shown only here; only a hash of its token is stored."),
    Endpoint("GET", "/feeds/{token}.atom", atom_feed, "The Atom feed of a secret URL", "feed",
             auth="none", errors=(404, 429), media_type="application/atom+xml",
             conditional=True, path_params={"token": "token"},
             description="Atom 1.0 (RFC 4287): the 50 newest notifications of the URL's user. "
             "No JWT: the token in the path is the credential; an unknown or replaced token "
             "answers 404."),
]  # fmt: skip
