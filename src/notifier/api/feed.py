"""The feed: `/api/notifications…` (list, one, unread count, read, read-all)."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from starlette.requests import Request
from starlette.responses import Response

from notifier.api import auth, cursor, parsing
from notifier.api.context import ctx
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
    e.version, ne.created_at, ne.read_at
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
# Index: unread_counters primary key: one row however large the feed.
UNREAD_COUNT = "SELECT unread FROM notifier.unread_counters WHERE user_id = %s"
# Index: notification_events primary key.
MARK_ONE_READ = """
UPDATE notifier.notification_events SET read_at = now()
WHERE id = %(id)s AND user_id = %(user)s AND read_at IS NULL
RETURNING id
"""
EXISTS_ONE = "SELECT 1 FROM notifier.notification_events WHERE id = %(id)s AND user_id = %(user)s"
# Index: notification_events_user_unread_idx (only the unread rows are visited).
MARK_ALL_READ = """
WITH marked AS (
    UPDATE notifier.notification_events SET read_at = now()
    WHERE user_id = %(user)s AND read_at IS NULL
    RETURNING 1
)
SELECT count(*) FROM marked
"""
# Index: unread_counters primary key. Subtract, never set to 0: a fan-out that
# commits meanwhile has added its own rows to the counter.
DECREMENT_UNREAD = """
UPDATE notifier.unread_counters SET unread = GREATEST(unread - %(n)s, 0)
WHERE user_id = %(user)s
RETURNING unread
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
    )


async def unread_count(conn: AsyncConnection[Any], user_id: uuid.UUID) -> int:
    """The maintained unread count of a user (0 when none was ever counted)."""
    cur = await conn.execute(UNREAD_COUNT, (user_id,))
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def list_notifications(request: Request) -> Response:
    """GET /api/notifications."""
    who = await auth.user(request)
    q = parsing.query(request, FeedQuery)
    before = cursor.decode_id(q.cursor, CURSOR_KIND) if q.cursor else cursor.MAX_BIGINT
    params = {"user": who.id, "before": before, "limit": q.limit + 1}
    async with ctx(request).pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(FEED_PAGE_UNREAD if q.unread else FEED_PAGE, params)
        rows = await cur.fetchall()
    items = [notification(r) for r in rows[: q.limit]]
    next_cursor = cursor.encode(CURSOR_KIND, items[-1].id) if len(rows) > q.limit else None
    return respond(NotificationPage(items=items, next_cursor=next_cursor))


async def get_notification(request: Request) -> Response:
    """GET /api/notifications/{id}."""
    who = await auth.user(request)
    nid = parsing.path_int(request, "id", "notification")
    async with ctx(request).pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(FEED_ONE, {"id": nid, "user": who.id})
        row = await cur.fetchone()
    if row is None:
        raise not_found("notification")
    return respond(notification(row))


async def get_unread_count(request: Request) -> Response:
    """GET /api/notifications/unread-count."""
    who = await auth.user(request)
    async with ctx(request).pool.connection() as conn:
        count = await unread_count(conn, who.id)
    return respond(UnreadCount(count=count))


def read_payload(user_id: uuid.UUID, ids: list[int] | None, unread: int) -> str:
    """The NOTIFY payload of a read: `ids` null means "all"."""
    return msgspec.json.encode({"user_id": str(user_id), "ids": ids, "unread": unread}).decode()


async def mark_read(request: Request) -> Response:
    """POST /api/notifications/{id}/read (already read: still ok)."""
    who = await auth.user(request)
    nid = parsing.path_int(request, "id", "notification")
    params = {"id": nid, "user": who.id}
    async with ctx(request).pool.connection() as conn, conn.transaction():
        cur = await conn.execute(MARK_ONE_READ, params)
        if await cur.fetchone() is None:
            if await (await conn.execute(EXISTS_ONE, params)).fetchone() is None:
                raise not_found("notification")
        else:
            cur = await conn.execute(DECREMENT_UNREAD, {"n": 1, "user": who.id})
            row = await cur.fetchone()
            unread = int(row[0]) if row else 0
            await conn.execute(NOTIFY, (READ_CHANNEL, read_payload(who.id, [nid], unread)))
    return respond(Status(status="ok"))


async def mark_all_read(request: Request) -> Response:
    """POST /api/notifications/read-all."""
    who = await auth.user(request)
    async with ctx(request).pool.connection() as conn, conn.transaction():
        cur = await conn.execute(MARK_ALL_READ, {"user": who.id})
        row = await cur.fetchone()
        marked = int(row[0]) if row else 0
        if marked:
            cur = await conn.execute(DECREMENT_UNREAD, {"n": marked, "user": who.id})
            left = await cur.fetchone()
            unread = int(left[0]) if left else 0
            await conn.execute(NOTIFY, (READ_CHANNEL, read_payload(who.id, None, unread)))
    return respond(ReadAll(status="ok", marked=marked))


ENDPOINTS = [
    Endpoint("GET", "/api/notifications", list_notifications, "List notifications, newest first",
             "feed", response=NotificationPage, query=FeedQuery, errors=(400, 422)),
    Endpoint("GET", "/api/notifications/unread-count", get_unread_count, "Count unread",
             "feed", response=UnreadCount),
    Endpoint("POST", "/api/notifications/read-all", mark_all_read, "Mark every notification read",
             "feed", response=ReadAll),
    Endpoint("GET", "/api/notifications/{id:int}", get_notification, "One notification",
             "feed", response=Notification, path_params={"id": "integer"}, errors=(404,)),
    Endpoint("POST", "/api/notifications/{id:int}/read", mark_read, "Mark one notification read",
             "feed", response=Status, path_params={"id": "integer"}, errors=(404,)),
]  # fmt: skip
