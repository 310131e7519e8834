"""The watchlist: `/api/watchlist` (create, list, delete).

Artists and labels are checked by id, genres and styles by name, against the
graph; an entity absent from it answers 404. A saved search's `entity_id` is
set by the server: a stable hash of its normalised options, so the same
search saved twice is the same watch.

`POST /api/watchlist/import` watches the artists and labels of the user's
collection or wantlist in the graph: one Cypher query aggregates them (from
the user's node, found through the `User.id` unique index), one SQL
statement inserts the new ones. Within the cap of `MAX_WATCHES_PER_USER`:
when the candidates would exceed it, those with the most releases in the
collection are created first (then by type and id), up to the cap, and the
rest are counted in `skipped`; it is not an error.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta
from neo4j.exceptions import DriverError, Neo4jError
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from starlette.requests import Request
from starlette.responses import Response

from notifier.api import auth, cursor, parsing
from notifier.api.context import Context, ctx
from notifier.api.errors import ApiError, FieldError, not_found, validation_error
from notifier.api.routing import Endpoint, no_content, respond
from notifier.api.schemas import (
    PageQuery,
    ReleaseFilterOptions,
    SearchOptions,
    ThresholdOptions,
    Watch,
    WatchCreate,
    WatchPage,
)

CURSOR_KIND = "w"
MAX_WATCHES_PER_USER = 1000
# Saved searches cost a graph query each per cycle, far more than an entity watch.
MAX_SEARCH_WATCHES_PER_USER = 50
GRAPH_TIMEOUT_SECONDS = 5.0
# An import reads a whole collection (tens of thousands of releases).
IMPORT_TIMEOUT_SECONDS = 30.0

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
COUNTS = """
SELECT count(*), count(*) FILTER (WHERE entity_type = 'search')
FROM notifier.watchlists WHERE user_id = %s
"""
LOCK_USER = "SELECT pg_advisory_xact_lock(%s, hashtext(%s))"
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
# The artists (BY) and labels (ON) of a user's collected or wanted releases,
# with how many of those releases each has, most first. Anchored on the
# User.id unique constraint (an index seek), then expanded; a release held in
# several copies (several COLLECTED edges) counts once. Only the relationship
# type differs between the two sources: a fixed string, never input.
_IMPORT = """
MATCH (u:User {{id: $user}})-[:{rel}]->(r:Release)
WITH DISTINCT r
MATCH (r)-[k:BY|ON]->(e)
WHERE (type(k) = 'BY' AND $artists AND e:Artist) OR (type(k) = 'ON' AND $labels AND e:Label)
WITH CASE type(k) WHEN 'BY' THEN 'artist' ELSE 'label' END AS entity_type, e,
     count(DISTINCT r) AS releases
WHERE releases >= $min
RETURN entity_type, e.id AS id, e.name AS name, releases
ORDER BY releases DESC, entity_type, id
"""
IMPORT_QUERIES = {"collection": _IMPORT.format(rel="COLLECTED"),
                  "wantlist": _IMPORT.format(rel="WANTS")}  # fmt: skip
# pg_advisory_xact_lock(IMPORT_LOCK, <user>): one import of a user at a time,
# so two cannot both fill the same room under the cap.
IMPORT_LOCK = 0x77696D70  # "wimp"
# One statement: the candidates in rank order, those the user does not watch
# yet (watchlists_user_entity_key), as many as the room under the cap allows
# (the user's count: watchlists_user_created_idx), inserted in one batch.
IMPORT_WATCHES = """
WITH cand AS (
    SELECT c.entity_type, c.entity_id, c.entity_name, c.ord
    FROM unnest(%(types)s::text[], %(ids)s::text[], %(names)s::text[])
         WITH ORDINALITY AS c (entity_type, entity_id, entity_name, ord)
),
fresh AS (
    SELECT c.* FROM cand c
    WHERE NOT EXISTS (
        SELECT 1 FROM notifier.watchlists w
        WHERE w.user_id = %(user)s AND w.entity_type = c.entity_type
          AND w.entity_id = c.entity_id)
),
room AS (
    SELECT greatest(%(cap)s - count(*), 0) AS n
    FROM notifier.watchlists WHERE user_id = %(user)s
),
ins AS (
    INSERT INTO notifier.watchlists (user_id, entity_type, entity_id, entity_name)
    SELECT %(user)s, entity_type, entity_id, entity_name FROM fresh
    ORDER BY ord LIMIT (SELECT n FROM room)
    ON CONFLICT (user_id, entity_type, entity_id) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM ins) AS created,
       (SELECT count(*) FROM cand) - (SELECT count(*) FROM fresh) AS existing,
       greatest((SELECT count(*) FROM fresh) - (SELECT n FROM room), 0) AS skipped
"""


class WatchImport(msgspec.Struct, forbid_unknown_fields=True):
    """Body of `POST /api/watchlist/import`."""

    source: Literal["collection", "wantlist"]
    entity_types: Annotated[list[Literal["artist", "label"]], Meta(min_length=1, max_length=2)]
    min_releases: Annotated[int, Meta(ge=1, le=1_000_000)] = 1


class WatchImported(msgspec.Struct):
    """Answer of `POST /api/watchlist/import`."""

    created: Annotated[int, Meta(description="Watches made by this call.")]
    existing: Annotated[int, Meta(description="Qualifying entities already watched.")]
    skipped: Annotated[
        int, Meta(description="Qualifying entities left out: the watch cap was reached.")
    ] = 0


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


def release_filter_options(options: dict[str, Any]) -> dict[str, Any]:
    """Validate an artist or label watch's options (`ReleaseFilterOptions`), as stored.

    Format names are trimmed and kept once each (case-insensitively, first
    spelling), sorted, so the same filter is stored the same way.
    """
    try:
        opts = msgspec.convert(options, ReleaseFilterOptions)
    except msgspec.ValidationError as exc:
        raise _options_error(exc) from None
    stored: dict[str, Any] = {}
    if opts.formats is not None:
        names: dict[str, str] = {}
        for i, raw in enumerate(opts.formats):
            name = " ".join(raw.split())
            if not name:
                raise _invalid(f"options.formats[{i}]", "must not be blank")
            names.setdefault(name.casefold(), name)
        stored["formats"] = [names[k] for k in sorted(names)]
    if opts.year_from is not None:
        stored["year_from"] = opts.year_from
    if opts.year_to is not None:
        stored["year_to"] = opts.year_to
    if opts.year_from is not None and opts.year_to is not None and opts.year_from > opts.year_to:
        raise _invalid("options.year_to", "must not be before year_from")
    return stored


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
        else:
            options = release_filter_options(body.options)
    params: dict[str, Any] = {"user": who.id, "type": body.entity_type, "entity": entity_id}
    async with c.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(FIND, params)
        existing = await cur.fetchone()
        if existing is not None:
            return respond(watch(existing), 200)
        await check_caps(conn, who.id, body.entity_type)  # early: spares the graph lookup
    if body.entity_type != "search":
        name = await graph_name(c, body.entity_type, entity_id)
    params |= {"name": name, "options": msgspec.json.encode(options).decode()}
    async with c.pool.connection() as conn, conn.transaction():
        # One writer per user at a time (the import takes the same lock), so
        # concurrent requests cannot all see room under the cap and all insert.
        await conn.execute(LOCK_USER, (IMPORT_LOCK, str(who.id)))
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(FIND, params)
        row = await cur.fetchone()
        if row is not None:
            return respond(watch(row), 200)
        await check_caps(conn, who.id, body.entity_type)
        await cur.execute(INSERT, params)
        row = await cur.fetchone()
    if row is None:  # written without the lock (never by the API)
        raise ApiError(409, "the watch changed meanwhile; try again")
    return respond(watch(row), 201)


async def check_caps(conn: AsyncConnection[Any], user: uuid.UUID, entity_type: str) -> None:
    """409 when the user is at the watch cap, or at the search cap for a search watch."""
    row = await (await conn.execute(COUNTS, (user,))).fetchone()
    total, searches = row if row is not None else (0, 0)
    if total >= MAX_WATCHES_PER_USER:
        raise ApiError(409, f"a user may watch at most {MAX_WATCHES_PER_USER} entities",
                       code="watchlist_full")  # fmt: skip
    if entity_type == "search" and searches >= MAX_SEARCH_WATCHES_PER_USER:
        raise ApiError(409, f"a user may keep at most {MAX_SEARCH_WATCHES_PER_USER} saved searches",
                       code="watchlist_full")  # fmt: skip


async def collection_entities(
    c: Context, user_id: uuid.UUID, body: WatchImport
) -> list[tuple[str, str, str | None]]:
    """(entity_type, id, name) of the qualifying artists and labels, most releases first."""
    params = {"user": str(user_id), "artists": "artist" in body.entity_types,
              "labels": "label" in body.entity_types, "min": body.min_releases}  # fmt: skip
    try:
        async with c.graph.session(database=c.settings.neo4j_database) as session:
            result = await asyncio.wait_for(
                session.run(IMPORT_QUERIES[body.source], params), IMPORT_TIMEOUT_SECONDS
            )
            records = await asyncio.wait_for(result.values(), IMPORT_TIMEOUT_SECONDS)
    except (DriverError, Neo4jError, OSError, TimeoutError):
        raise ApiError(
            503, "the graph is unavailable; try again", code="graph_unavailable"
        ) from None
    out: list[tuple[str, str, str | None]] = []
    seen: set[tuple[str, str]] = set()
    for entity_type, key, name, _ in records:
        # Ids as the platform writes them (strings); anything else is not watchable.
        if not isinstance(key, str) or not key.strip() or len(key) > 512:
            continue
        if (entity_type, key) in seen:
            continue
        seen.add((entity_type, key))
        out.append((entity_type, key, name if isinstance(name, str) else None))
    return out


async def import_watches(request: Request) -> Response:
    """POST /api/watchlist/import: watch the artists and labels of a collection or wantlist."""
    who = await auth.user(request)
    body = await parsing.json_body(request, WatchImport)
    c = ctx(request)
    found = await collection_entities(c, who.id, body)
    if not found:
        return respond(WatchImported(created=0, existing=0))
    params = {
        "user": who.id, "cap": MAX_WATCHES_PER_USER,
        "types": [t for t, _, _ in found], "ids": [i for _, i, _ in found],
        "names": [n for _, _, n in found],
    }  # fmt: skip
    async with c.pool.connection() as conn, conn.transaction():
        await conn.execute(LOCK_USER, (IMPORT_LOCK, str(who.id)))
        row = await (await conn.execute(IMPORT_WATCHES, params)).fetchone()
    created, existing, skipped = (int(v) for v in row) if row else (0, 0, 0)
    return respond(WatchImported(created=created, existing=existing, skipped=skipped))


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
    Endpoint("POST", "/api/watchlist/import", import_watches,
             "Watch the artists and labels of your collection or wantlist", "watchlist",
             response=WatchImported, body=WatchImport, errors=(400, 413, 422, 503),
             description="Reads `(:User {id})-[:COLLECTED|WANTS]->(:Release)-[:BY|ON]->(…)` in "
             "the graph (COLLECTED for `collection`, WANTS for `wantlist`) and watches each "
             "artist and label with at least `min_releases` of those releases. Idempotent: a "
             "re-run creates nothing. Within the cap of 1,000 watches: the entities with the "
             "most releases come first; those beyond the cap are counted in `skipped` (not an "
             "error). A user absent from the graph gets zeros."),
    Endpoint("DELETE", "/api/watchlist/{id}", delete_watch, "Stop watching", "watchlist",
             status=204, path_params={"id": "uuid"}, errors=(404,)),
]  # fmt: skip
