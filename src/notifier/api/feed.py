"""The feed: `/api/notifications…` (list, one, unread count, read, read-all).

Unread counts (sql/005_fanout.sql): a user's `unread_counters` row counts the
unread feed rows up to its `counted_upto`; the rows above it are counted live
from the partial unread index. Fan-out never touches counters. `fold` moves
`counted_upto` forward once enough rows sit above it, under two locks: the
counter row (so no read of this user is half done) and `fanout.FEED_LOCK_KEY`
taken exclusively, which no fan-out transaction may hold meanwhile (so no feed
row at or below the new `counted_upto` can still commit). A read, one or all,
locks the counter row first and subtracts only the rows at or below it.

Cheap polling: the list and the unread count answer with an `ETag` and `304`
on a matching `If-None-Match` (`conditional`). The feed's version is read in
one query (`FEED_VERSION`): the user's newest feed id, the unread count, and
the counter row's `xmin`. Every read goes through `LOCK_COUNTER`, an UPDATE of
that row, so any read changes its `xmin`; fan-out only adds unread rows, so a
new row changes the newest id or the unread count (a row committing late,
below the newest id, still adds one unread). Events never change.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from starlette.requests import Request
from starlette.responses import Response

from notifier import fanout
from notifier.api import auth, conditional, cursor, parsing
from notifier.api.context import ctx, row_or_404
from notifier.api.errors import not_found
from notifier.api.routing import Endpoint, respond
from notifier.api.schemas import (
    FeedQuery,
    Notification,
    NotificationPage,
    ReadAll,
    Status,
    UnreadCount,
)

CURSOR_KIND = "n"
# Channel the API notifies on when notifications are read, for SSE cross-tab sync.
READ_CHANNEL = "notifier_read"

_COLUMNS = """
    ne.id, e.event, e.entity_type, e.entity_id, e.entity_name, e.detail::text AS detail,
    e.version, ne.created_at, ne.read_at, ne.watch_id
"""

# Index: notification_events_user_id_idx (user_id, id DESC); events by primary key.
FEED_PAGE = f"""
SELECT {_COLUMNS}
FROM notifier.notification_events ne JOIN notifier.events e ON e.id = ne.event_id
WHERE ne.user_id = %(user)s AND ne.id < %(before)s
ORDER BY ne.id DESC LIMIT %(limit)s
"""  # noqa: S608 - built from constants only, never from input
# Index: notification_events_user_unread_idx (user_id, id DESC) WHERE read_at IS NULL.
FEED_PAGE_UNREAD = f"""
SELECT {_COLUMNS}
FROM notifier.notification_events ne JOIN notifier.events e ON e.id = ne.event_id
WHERE ne.user_id = %(user)s AND ne.id < %(before)s AND ne.read_at IS NULL
ORDER BY ne.id DESC LIMIT %(limit)s
"""  # noqa: S608 - built from constants only, never from input
# Index: notification_events primary key (id), then the user check.
FEED_ONE = f"""
SELECT {_COLUMNS}
FROM notifier.notification_events ne JOIN notifier.events e ON e.id = ne.event_id
WHERE ne.id = %(id)s AND ne.user_id = %(user)s
"""  # noqa: S608 - built from constants only, never from input
# Index: notification_events_user_event_key (user_id, event_id), both as ANY
# arrays: the SSE hub reads a batch of new events for this replica's users.
FEED_OF_EVENTS = f"""
SELECT ne.user_id, {_COLUMNS}
FROM notifier.notification_events ne JOIN notifier.events e ON e.id = ne.event_id
WHERE ne.event_id = ANY(%(events)s) AND ne.user_id = ANY(%(users)s)
ORDER BY ne.id
"""  # noqa: S608 - built from constants only, never from input
# Fold a user's counter once this many unread rows sit above its counted_upto
# (counting them live costs about a microsecond each).
FOLD_AT = 256

_UNREAD = """
LEFT JOIN notifier.unread_counters c ON c.user_id = u.user_id
CROSS JOIN LATERAL (
    SELECT count(*) AS n FROM notifier.notification_events ne
    WHERE ne.user_id = u.user_id AND ne.id > coalesce(c.counted_upto, 0) AND ne.read_at IS NULL
) l
"""
# (unread, unfolded) of one user. Index: unread_counters primary key, then
# notification_events_user_unread_idx (user_id, id DESC) WHERE read_at IS NULL,
# range-scanned above counted_upto (index-only; short once folded).
UNREAD_COUNT = f"""
SELECT coalesce(c.unread, 0) + l.n AS unread, l.n AS unfolded
FROM (SELECT %s::uuid AS user_id) u {_UNREAD}
"""  # noqa: S608 - built from constants only, never from input
# (user_id, unread, unfolded) of several users (the SSE hub); same indexes.
UNREAD_COUNTS = f"""
SELECT u.user_id, coalesce(c.unread, 0) + l.n AS unread, l.n AS unfolded
FROM unnest(%s::uuid[]) AS u (user_id) {_UNREAD}
"""  # noqa: S608 - built from constants only, never from input
# Index: unread_counters primary key. Creates the row when missing (nothing
# folded yet: counted_upto 0, not the column's default) and always locks it
# (DO UPDATE), returning the latest counted_upto.
LOCK_COUNTER = """
INSERT INTO notifier.unread_counters AS c (user_id, counted_upto) VALUES (%s, 0)
ON CONFLICT (user_id) DO UPDATE SET unread = c.unread
RETURNING c.counted_upto
"""
# (newest feed id, counter row xmin, unread, unfolded) of one user: the
# feed's version for its ETag. Indexes: notification_events_user_id_idx
# (user_id, id DESC), one entry; then as UNREAD_COUNT.
FEED_VERSION = f"""
SELECT (SELECT ne.id FROM notifier.notification_events ne
        WHERE ne.user_id = u.user_id ORDER BY ne.id DESC LIMIT 1) AS top,
       c.xmin::text AS counter_xmin, coalesce(c.unread, 0) + l.n AS unread, l.n AS unfolded
FROM (SELECT %s::uuid AS user_id) u {_UNREAD}
"""  # noqa: S608 - built from constants only, never from input
# A page and the feed's version in one statement (one snapshot, one round
# trip): the version on every row, the page's columns null when it is empty.
_VERSIONED = """
WITH v AS (
    SELECT (SELECT ne.id FROM notifier.notification_events ne
            WHERE ne.user_id = u.user_id ORDER BY ne.id DESC LIMIT 1) AS top,
           c.xmin::text AS counter_xmin, coalesce(c.unread, 0) + l.n AS unread,
           l.n AS unfolded
    FROM (SELECT %(user)s::uuid AS user_id) u {unread}
)
SELECT v.top, v.counter_xmin, v.unread AS feed_unread, v.unfolded, p.*
FROM v LEFT JOIN LATERAL ({page}) p ON true
ORDER BY p.id DESC
"""
FEED_PAGE_VERSIONED = _VERSIONED.format(unread=_UNREAD, page=FEED_PAGE)
FEED_PAGE_UNREAD_VERSIONED = _VERSIONED.format(unread=_UNREAD, page=FEED_PAGE_UNREAD)
TRY_FEED_LOCK = "SELECT pg_try_advisory_xact_lock(%s)"
# With the counter row locked and FEED_LOCK held: add the unread rows above
# counted_upto, and move it to the last feed id handed out (`feed_top()`, the
# identity sequence: every id up to it is committed or rolled back by now).
# Count: notification_events_user_unread_idx; the counter: its primary key.
FOLD = """
UPDATE notifier.unread_counters c
SET unread = c.unread + (
        SELECT count(*) FROM notifier.notification_events ne
        WHERE ne.user_id = c.user_id AND ne.id > c.counted_upto AND ne.read_at IS NULL),
    counted_upto = greatest(c.counted_upto, notifier.feed_top())
WHERE c.user_id = %s
"""
# Index: notification_events primary key.
MARK_ONE_READ = """
UPDATE notifier.notification_events SET read_at = now()
WHERE id = %(id)s AND user_id = %(user)s AND read_at IS NULL
RETURNING id
"""
EXISTS_ONE = "SELECT 1 FROM notifier.notification_events WHERE id = %(id)s AND user_id = %(user)s"
# Index: notification_events_user_unread_idx (only the unread rows are visited).
# Also returns how many of them the counter had folded (id <= counted_upto).
MARK_ALL_READ = """
WITH marked AS (
    UPDATE notifier.notification_events SET read_at = now()
    WHERE user_id = %(user)s AND read_at IS NULL
    RETURNING id
)
SELECT count(*), count(*) FILTER (WHERE id <= %(upto)s) FROM marked
"""
# Index: unread_counters primary key. Run with the row locked (LOCK_COUNTER).
DECREMENT_UNREAD = """
UPDATE notifier.unread_counters SET unread = GREATEST(unread - %(n)s, 0)
WHERE user_id = %(user)s
"""
NOTIFY = "SELECT pg_notify(%s, %s)"


def notification(row: dict[str, Any]) -> Notification:
    """A feed row (columns of `_COLUMNS`) as the API struct."""
    return Notification(
        id=row["id"],
        event=row["event"],
        entity_type=row["entity_type"],
        entity_id=row["entity_id"],
        entity_name=row["entity_name"],
        detail=msgspec.Raw(row["detail"].encode()),
        version=row["version"],
        created_at=row["created_at"],
        read_at=row["read_at"],
        watch_ids=[] if row["watch_id"] is None else [row["watch_id"]],
    )


def _idle(conn: AsyncConnection[Any]) -> bool:
    return conn.info.transaction_status == TransactionStatus.IDLE


async def fold(conn: AsyncConnection[Any], user_id: uuid.UUID) -> bool:
    """Fold the user's unread rows above `counted_upto` into the counter.

    Runs its own short transaction, so call it outside any. Returns False
    (and changes nothing) while a fan-out transaction is open: the count stays
    right, only the live part stays longer.
    """
    async with conn.transaction():
        await conn.execute(LOCK_COUNTER, (user_id,))
        got = await (await conn.execute(TRY_FEED_LOCK, (fanout.FEED_LOCK_KEY,))).fetchone()
        if not (got and got[0]):
            return False
        await conn.execute(FOLD, (user_id,))
    return True


async def unread_count(conn: AsyncConnection[Any], user_id: uuid.UUID) -> int:
    """The unread count of a user (0 for a new one); folds it when worthwhile."""
    unread, unfolded = await _counts(conn, user_id)
    if unfolded >= FOLD_AT and _idle(conn):
        await fold(conn, user_id)
    return unread


async def unread_counts(conn: AsyncConnection[Any], users: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    """The unread counts of several users; folds those with many rows unfolded."""
    rows = await (await conn.execute(UNREAD_COUNTS, (users,))).fetchall()
    if _idle(conn):
        for user_id, _, unfolded in rows:
            if unfolded >= FOLD_AT:
                await fold(conn, user_id)
    return {user_id: int(unread) for user_id, unread, _ in rows}


async def read_one(
    conn: AsyncConnection[Any], user_id: uuid.UUID, nid: int
) -> tuple[int, int] | None:
    """Mark one notification read inside the caller's transaction.

    Returns the user's (unread, unfolded) counts after it, or None when the
    row was already read. Raises 404 when the user has no such notification.
    """
    params = {"id": nid, "user": user_id}
    upto = await _lock_counter(conn, user_id)
    if await (await conn.execute(MARK_ONE_READ, params)).fetchone() is None:
        if await (await conn.execute(EXISTS_ONE, params)).fetchone() is None:
            raise not_found("notification")
        return None
    if nid <= upto:
        await conn.execute(DECREMENT_UNREAD, {"n": 1, "user": user_id})
    return await _counts(conn, user_id)


async def read_all(conn: AsyncConnection[Any], user_id: uuid.UUID) -> tuple[int, int]:
    """Mark every unread notification read inside the caller's transaction.

    Returns (rows marked, unread count after it): a fan-out that commits
    meanwhile keeps its rows unread.
    """
    upto = await _lock_counter(conn, user_id)
    row = await (await conn.execute(MARK_ALL_READ, {"user": user_id, "upto": upto})).fetchone()
    marked, folded = (int(row[0]), int(row[1])) if row else (0, 0)
    if folded:
        await conn.execute(DECREMENT_UNREAD, {"n": folded, "user": user_id})
    unread, _ = await _counts(conn, user_id)
    return marked, unread


async def _lock_counter(conn: AsyncConnection[Any], user_id: uuid.UUID) -> int:
    row = await (await conn.execute(LOCK_COUNTER, (user_id,))).fetchone()
    return int(row[0]) if row else 0


async def _counts(conn: AsyncConnection[Any], user_id: uuid.UUID) -> tuple[int, int]:
    """(unread, unfolded) of one user (UNREAD_COUNT)."""
    row = await (await conn.execute(UNREAD_COUNT, (user_id,))).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _feed_tag(user_id: uuid.UUID, version: Any, q: FeedQuery, before: int) -> str:
    """The ETag of one page: the feed's version (a `FEED_VERSION` row) and the query."""
    top, counter_xmin, unread = version[0], version[1], version[2]
    return conditional.etag("feed", user_id, top, counter_xmin, unread, q.limit, before, q.unread)


async def feed_version(conn: AsyncConnection[Any], user_id: uuid.UUID) -> Any:
    """The feed's version (a `FEED_VERSION` row); folds first when worthwhile."""
    row = await (await conn.execute(FEED_VERSION, (user_id,))).fetchone()
    assert row is not None  # one row, whatever the user
    if row[3] >= FOLD_AT and _idle(conn) and await fold(conn, user_id):
        row = await (await conn.execute(FEED_VERSION, (user_id,))).fetchone()
        assert row is not None
    return row


async def list_notifications(request: Request) -> Response:
    """GET /api/notifications (ETag, 304 on a matching If-None-Match)."""
    who = await auth.user(request)
    q = parsing.query(request, FeedQuery)
    before = cursor.decode_id(q.cursor, CURSOR_KIND) if q.cursor else cursor.MAX_BIGINT
    params = {"user": who.id, "before": before, "limit": q.limit + 1}
    page_sql = FEED_PAGE_UNREAD if q.unread else FEED_PAGE
    async with ctx(request).pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        if "if-none-match" in request.headers:
            # The 304 path: one cheap query; the page only when it changed.
            tag = _feed_tag(who.id, await feed_version(conn, who.id), q, before)
            if conditional.matches(request, tag):
                return conditional.not_modified(tag)
            await cur.execute(page_sql, params)
            rows = await cur.fetchall()
        else:
            # The page and its version in one statement: the ETag is exactly the page's.
            await cur.execute(FEED_PAGE_UNREAD_VERSIONED if q.unread else FEED_PAGE_VERSIONED,
                              params)  # fmt: skip
            rows = await cur.fetchall()
            first = rows[0]  # the version's row is always there
            tag = _feed_tag(who.id, (first["top"], first["counter_xmin"], first["feed_unread"]),
                            q, before)  # fmt: skip
            if rows[0]["id"] is None:
                rows = []
            if first["unfolded"] >= FOLD_AT and _idle(conn):
                await fold(conn, who.id)
    items = [notification(r) for r in rows[: q.limit]]
    next_cursor = cursor.encode(CURSOR_KIND, items[-1].id) if len(rows) > q.limit else None
    page = NotificationPage(items=items, next_cursor=next_cursor)
    return respond(page, headers=conditional.headers(tag))


async def get_notification(request: Request) -> Response:
    """GET /api/notifications/{id}."""
    who = await auth.user(request)
    params = {"id": parsing.path_int(request, "id", "notification"), "user": who.id}
    return respond(notification(await row_or_404(request, FEED_ONE, params, "notification")))


async def get_unread_count(request: Request) -> Response:
    """GET /api/notifications/unread-count (ETag, 304 on a matching If-None-Match)."""
    who = await auth.user(request)
    async with ctx(request).pool.connection() as conn:
        count = await unread_count(conn, who.id)
    # The answer is the count alone: its ETag is made of it.
    tag = conditional.etag("unread-count", who.id, count)
    if conditional.matches(request, tag):
        return conditional.not_modified(tag)
    return respond(UnreadCount(count=count), headers=conditional.headers(tag))


def read_payload(user_id: uuid.UUID, ids: list[int] | None, unread: int) -> str:
    """The NOTIFY payload of a read: `ids` null means "all"."""
    return msgspec.json.encode({"user_id": str(user_id), "ids": ids, "unread": unread}).decode()


async def mark_read(request: Request) -> Response:
    """POST /api/notifications/{id}/read (already read: still ok)."""
    who = await auth.user(request)
    nid = parsing.path_int(request, "id", "notification")
    async with ctx(request).pool.connection() as conn:
        async with conn.transaction():
            counts = await read_one(conn, who.id, nid)
            if counts is not None:
                payload = read_payload(who.id, [nid], counts[0])
                await conn.execute(NOTIFY, (READ_CHANNEL, payload))
        if counts is not None and counts[1] >= FOLD_AT:
            await fold(conn, who.id)
    return respond(Status(status="ok"))


async def mark_all_read(request: Request) -> Response:
    """POST /api/notifications/read-all."""
    who = await auth.user(request)
    async with ctx(request).pool.connection() as conn, conn.transaction():
        marked, unread = await read_all(conn, who.id)
        if marked:
            await conn.execute(NOTIFY, (READ_CHANNEL, read_payload(who.id, None, unread)))
    return respond(ReadAll(status="ok", marked=marked))


ENDPOINTS = [
    Endpoint("GET", "/api/notifications", list_notifications, "List notifications, newest first",
             "feed", response=NotificationPage, query=FeedQuery, errors=(400, 422),
             conditional=True, poll=True),
    Endpoint("GET", "/api/notifications/unread-count", get_unread_count, "Count unread",
             "feed", response=UnreadCount, conditional=True, poll=True),
    Endpoint("POST", "/api/notifications/read-all", mark_all_read, "Mark every notification read",
             "feed", response=ReadAll),
    Endpoint("GET", "/api/notifications/{id:int}", get_notification, "One notification",
             "feed", response=Notification, path_params={"id": "integer"}, errors=(404,)),
    Endpoint("POST", "/api/notifications/{id:int}/read", mark_read, "Mark one notification read",
             "feed", response=Status, path_params={"id": "integer"}, errors=(404,)),
]  # fmt: skip
