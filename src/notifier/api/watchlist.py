"""The watchlist: `/api/watchlist` (create, list, delete).

Artists and labels are checked by id, genres and styles by name, against the
graph; an entity absent from it answers 404. A saved search's `entity_id` is
set by the server: a stable hash of its normalised options, so the same
search saved twice is the same watch.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

import msgspec
from neo4j.exceptions import DriverError, Neo4jError
from psycopg.rows import dict_row
from starlette.requests import Request
from starlette.responses import Response

from notifier.api import auth, cursor, parsing
from notifier.api.context import Context, ctx
from notifier.api.errors import ApiError, FieldError, not_found, validation_error
from notifier.api.routing import Endpoint, no_content, respond
from notifier.api.schemas import (
    PageQuery,
    SearchOptions,
    ThresholdOptions,
    Watch,
    WatchCreate,
    WatchPage,
)

CURSOR_KIND = "w"
MAX_WATCHES_PER_USER = 1000
GRAPH_TIMEOUT_SECONDS = 5.0

# Cypher kept to what Neo4j and ArcadeDB's OpenCypher both accept; labels are
# fixed strings chosen by entity type, values are bound parameters.
GRAPH_LOOKUP: dict[str, str] = {
    "artist": "MATCH (n:Artist {id: $key}) RETURN n.name AS name LIMIT 1",
    "label": "MATCH (n:Label {id: $key}) RETURN n.name AS name LIMIT 1",
    "genre": "MATCH (n:Genre {name: $key}) RETURN n.name AS name LIMIT 1",
    "style": "MATCH (n:Style {name: $key}) RETURN n.name AS name LIMIT 1",
}

_COLUMNS = "id, entity_type, entity_id, entity_name, options, created_at"
# Index: watchlists_user_entity_key (user_id, entity_type, entity_id).
FIND = f"""
SELECT {_COLUMNS} FROM notifier.watchlists
WHERE user_id = %(user)s AND entity_type = %(type)s AND entity_id = %(entity)s
"""  # noqa: S608 - built from constants only, never from input
# Index: watchlists_user_created_idx (user_id, created_at DESC, id DESC).
COUNT = "SELECT count(*) FROM notifier.watchlists WHERE user_id = %s"
# Index: watchlists_user_entity_key absorbs a concurrent duplicate.
INSERT = f"""
INSERT INTO notifier.watchlists (user_id, entity_type, entity_id, entity_name, options)
VALUES (%(user)s, %(type)s, %(entity)s, %(name)s, %(options)s::jsonb)
ON CONFLICT (user_id, entity_type, entity_id) DO NOTHING
RETURNING {_COLUMNS}
"""  # noqa: S608 - built from constants only, never from input
# Index: watchlists_user_created_idx (user_id, created_at DESC, id DESC).
PAGE_FIRST = f"""
SELECT {_COLUMNS} FROM notifier.watchlists WHERE user_id = %(user)s
ORDER BY created_at DESC, id DESC LIMIT %(limit)s
"""  # noqa: S608 - built from constants only, never from input
PAGE_AFTER = f"""
SELECT {_COLUMNS} FROM notifier.watchlists
WHERE user_id = %(user)s AND (created_at, id) < (%(at)s, %(id)s)
ORDER BY created_at DESC, id DESC LIMIT %(limit)s
"""  # noqa: S608 - built from constants only, never from input
# Index: watchlists primary key.
DELETE = "DELETE FROM notifier.watchlists WHERE id = %(id)s AND user_id = %(user)s RETURNING id"


def _options_error(exc: msgspec.ValidationError) -> ApiError:
    err = validation_error(exc, "body")
    if err.details:
        detail = err.details[0]
        field = "options" if detail.field == "(root)" else f"options.{detail.field}"
        err.details = [msgspec.structs.replace(detail, field=field)]
        err.message = f"{detail.message} (body {field})"
    return err


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(
        422, f"{message} (body {field})",
        details=[FieldError(location="body", field=field, message=message)],
    )  # fmt: skip


def normalise_search(options: dict[str, Any]) -> tuple[dict[str, Any], str, str]:
    """Validate a search watch's options: (stored options, entity_id, entity_name).

    Text is trimmed with inner whitespace collapsed; the id hashes the
    case-folded options, so "Miles  Davis" and "miles davis" are one watch.
    """
    try:
        opts = msgspec.convert(options, SearchOptions)
    except msgspec.ValidationError as exc:
        raise _options_error(exc) from None
    stored: dict[str, Any] = {}
    for name in opts.__struct_fields__:
        value = getattr(opts, name)
        if isinstance(value, str):
            value = " ".join(value.split())
            if not value:
                raise _invalid(f"options.{name}", "must not be blank")
        if value is not None:
            stored[name] = value
    if not stored:
        raise _invalid("options", "a search needs at least one option")
    if "year_from" in stored and "year_to" in stored and stored["year_from"] > stored["year_to"]:
        raise _invalid("options.year_to", "must not be before year_from")
    folded = {k: v.casefold() if isinstance(v, str) else v for k, v in stored.items()}
    digest = hashlib.sha256(msgspec.json.encode(folded, order="sorted")).hexdigest()
    name = ", ".join(f"{k}={v}" for k, v in stored.items())
    return stored, f"search:{digest[:40]}", name[:512]


def threshold_options(options: dict[str, Any]) -> dict[str, Any]:
    """Validate a genre or style watch's options (`threshold` only)."""
    try:
        opts = msgspec.convert(options, ThresholdOptions)
    except msgspec.ValidationError as exc:
        raise _options_error(exc) from None
    return msgspec.to_builtins(opts)  # type: ignore[no-any-return]


async def graph_name(c: Context, entity_type: str, key: str) -> str | None:
    """The entity's name in the graph; 404 when absent, 503 when the graph is down."""
    try:
        async with c.graph.session(database=c.settings.neo4j_database) as session:
            result = await asyncio.wait_for(
                session.run(GRAPH_LOOKUP[entity_type], key=key), GRAPH_TIMEOUT_SECONDS
            )
            records = await asyncio.wait_for(result.values(), GRAPH_TIMEOUT_SECONDS)
    except (DriverError, Neo4jError, OSError, TimeoutError):
        raise ApiError(
            503, "the graph is unavailable; try again", code="graph_unavailable"
        ) from None
    if not records:
        raise not_found(entity_type)
    name = records[0][0]
    return name if isinstance(name, str) else None


def watch(row: dict[str, Any]) -> Watch:
    """A watchlists row as the API struct."""
    return Watch(**row)


async def create_watch(request: Request) -> Response:
    """POST /api/watchlist: 201 new, 200 when the same watch exists."""
    who = await auth.user(request)
    body = await parsing.json_body(request, WatchCreate)
    c = ctx(request)
    name: str | None = None
    if body.entity_type == "search":
        options, entity_id, name = normalise_search(body.options)
    else:
        if body.entity_id is None or not body.entity_id.strip():
            raise _invalid("entity_id", f"required for a {body.entity_type} watch")
        entity_id = body.entity_id.strip()
        if body.entity_type in ("genre", "style"):
            options = threshold_options(body.options)
        elif body.options:
            raise _invalid("options", f"a {body.entity_type} watch takes no options")
        else:
            options = {}
    params: dict[str, Any] = {"user": who.id, "type": body.entity_type, "entity": entity_id}
    async with c.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(FIND, params)
        existing = await cur.fetchone()
        if existing is not None:
            return respond(watch(existing), 200)
        count_row = await (await conn.execute(COUNT, (who.id,))).fetchone()
        if count_row is not None and count_row[0] >= MAX_WATCHES_PER_USER:
            raise ApiError(
                409,
                f"a user may watch at most {MAX_WATCHES_PER_USER} entities",
                code="watchlist_full",
            )
    if body.entity_type != "search":
        name = await graph_name(c, body.entity_type, entity_id)
    params |= {"name": name, "options": msgspec.json.encode(options).decode()}
    async with c.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(INSERT, params)
        row = await cur.fetchone()
        if row is not None:
            return respond(watch(row), 201)
        await cur.execute(FIND, params)
        row = await cur.fetchone()
    if row is None:  # inserted and deleted by a concurrent request
        raise ApiError(409, "the watch changed meanwhile; try again")
    return respond(watch(row), 200)


async def list_watches(request: Request) -> Response:
    """GET /api/watchlist, newest first."""
    who = await auth.user(request)
    q = parsing.query(request, PageQuery)
    params: dict[str, Any] = {"user": who.id, "limit": q.limit + 1}
    if q.cursor:
        params["at"], params["id"] = cursor.decode_time_uuid(q.cursor, CURSOR_KIND)
    async with ctx(request).pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(PAGE_AFTER if q.cursor else PAGE_FIRST, params)
        rows = await cur.fetchall()
    items = [watch(r) for r in rows[: q.limit]]
    next_cursor = None
    if len(rows) > q.limit:
        last = items[-1]
        next_cursor = cursor.encode(CURSOR_KIND, last.created_at.isoformat(), str(last.id))
    return respond(WatchPage(items=items, next_cursor=next_cursor))


async def delete_watch(request: Request) -> Response:
    """DELETE /api/watchlist/{id}."""
    who = await auth.user(request)
    wid: uuid.UUID = parsing.path_uuid(request, "id", "watch")
    async with ctx(request).pool.connection() as conn:
        cur = await conn.execute(DELETE, {"id": wid, "user": who.id})
        if await cur.fetchone() is None:
            raise not_found("watch")
    return no_content()


ENDPOINTS = [
    Endpoint("GET", "/api/watchlist", list_watches, "List watches, newest first", "watchlist",
             response=WatchPage, query=PageQuery, errors=(400, 422)),
    Endpoint("POST", "/api/watchlist", create_watch, "Watch an entity or save a search",
             "watchlist", status=201, response=Watch, body=WatchCreate, also=(200,),
             errors=(400, 404, 409, 413, 422, 503),
             description="201 with a new watch; 200 with the existing one when repeated. "
             "Artists and labels absent from the graph (by id), genres and styles (by name) "
             "answer 404."),
    Endpoint("DELETE", "/api/watchlist/{id}", delete_watch, "Stop watching", "watchlist",
             status=204, path_params={"id": "uuid"}, errors=(404,)),
]  # fmt: skip
