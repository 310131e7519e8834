"""Server-Sent Events: `/api/notifications/stream`, fed by LISTEN/NOTIFY.

Each API replica keeps one PostgreSQL connection listening on
`notifier_feed` (fan-out announces each event there) and `notifier_read` (the
feed routes announce reads there). On an event, the hub reads the feed rows of
that event for the users connected to this replica only, in one query, and
pushes `notification` and `notification.count`; on a read it pushes
`notification.read` and `notification.count`. So a notification created by
any process, or read on any replica, reaches every open stream of its user.

A stream starts with `notification.count`, replays up to `REPLAY_LIMIT`
notifications newer than `Last-Event-ID` when the client reconnects, and sends
a comment line every `heartbeat` seconds. A client too slow to drain its
queue is disconnected (it reconnects with `Last-Event-ID`). A stream ends
when its token expires (the client reconnects with a fresh token), and every
stream ends when the LISTEN connection is lost (notifications sent meanwhile
would never reach it) and again when LISTEN is back, for the streams opened
while it was down: their clients catch up with `Last-Event-ID`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from notifier import fanout
from notifier.api import auth, feed
from notifier.api.context import ctx
from notifier.api.errors import ApiError
from notifier.api.routing import Endpoint

log = logging.getLogger(__name__)

QUEUE_SIZE = 256
INBOX_SIZE = 100_000
BATCH = 500  # new events read per query
MAX_STREAMS_PER_USER = 10
REPLAY_LIMIT = 100
RECONNECT_MAX_SECONDS = 5.0
READY_WAIT_SECONDS = 5.0

# Index: notification_events_user_id_idx (user_id, id DESC), scanned upwards from the id.
REPLAY = f"""
SELECT * FROM (
    SELECT {feed._COLUMNS}
    FROM notifier.notification_events ne JOIN notifier.events e ON e.id = ne.event_id
    WHERE ne.user_id = %(user)s AND ne.id > %(after)s
    ORDER BY ne.id ASC LIMIT %(limit)s
) replay ORDER BY id ASC
"""  # noqa: S608 - built from constants only, never from input


def frame(event: str, data: Any, event_id: int | None = None) -> bytes:
    """One SSE message (msgspec JSON never contains a newline)."""
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return head.encode() + b"data: " + msgspec.json.encode(data) + b"\n\n"


HEARTBEAT = b": heartbeat\n\n"


@dataclass(eq=False)
class Subscriber:
    """One open stream."""

    user_id: uuid.UUID
    queue: asyncio.Queue[bytes | None] = field(
        default_factory=lambda: asyncio.Queue(maxsize=QUEUE_SIZE)
    )

    def push(self, message: bytes | None) -> bool:
        """Queue a message; False (and the stream ends) when the client lags too far."""
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.queue.put_nowait(None)
            return False
        return True


class Hub:
    """This replica's open streams and the LISTEN connection that feeds them."""

    def __init__(self, conninfo: str, pool: AsyncConnectionPool) -> None:
        self.conninfo = conninfo
        self.pool = pool
        self.subscribers: dict[uuid.UUID, set[Subscriber]] = {}
        self.ready = asyncio.Event()
        self._inbox: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=INBOX_SIZE)
        self.closed = False

    @property
    def connected(self) -> int:
        """Open streams on this replica."""
        return sum(len(s) for s in self.subscribers.values())

    def streams_of(self, user_id: uuid.UUID) -> int:
        """Open streams of one user on this replica."""
        return len(self.subscribers.get(user_id, ()))

    def subscribe(self, user_id: uuid.UUID, limit: int | None = None) -> Subscriber | None:
        """Register a stream; None when the user already has `limit` open here.

        No await between the count and the registration: concurrent connects
        cannot all pass the check.
        """
        subs = self.subscribers.setdefault(user_id, set())
        if limit is not None and len(subs) >= limit:
            return None
        sub = Subscriber(user_id)
        subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget a stream (idempotent)."""
        subs = self.subscribers.get(sub.user_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.subscribers[sub.user_id]

    def close(self) -> None:
        """End every stream (shutdown)."""
        self.closed = True
        self.end_streams()

    def end_streams(self) -> None:
        """End every open stream; clients reconnect with `Last-Event-ID` and catch up."""
        for subs in list(self.subscribers.values()):
            for sub in list(subs):
                sub.push(None)

    def _send(self, user_id: uuid.UUID, message: bytes) -> None:
        for sub in list(self.subscribers.get(user_id, ())):
            if not sub.push(message):
                log.warning("sse client too slow; disconnecting", extra={"user_id": str(user_id)})
                self.unsubscribe(sub)

    async def run(self) -> None:
        """LISTEN until cancelled, reconnecting with backoff when PostgreSQL goes away."""
        processor = asyncio.create_task(self._process(), name="sse-hub")
        try:
            await self._listen()
        finally:
            processor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await processor

    async def _listen(self) -> None:
        delay = 0.2
        lost = False
        while not self.closed:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {fanout.FEED_CHANNEL}")  # constant names
                    await conn.execute(f"LISTEN {feed.READ_CHANNEL}")
                    if lost:  # streams opened while deaf missed what was sent meanwhile
                        self.end_streams()
                        lost = False
                    self.ready.set()
                    delay = 0.2
                    async for note in conn.notifies():
                        self.dispatch(note.channel, note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: reconnect, never die
                self.ready.clear()
                # Notifications sent until LISTEN is back are lost to this
                # replica: end the streams so clients replay from Last-Event-ID.
                self.end_streams()
                lost = True
                log.warning("sse listener lost its connection; reconnecting",
                            extra={"error": type(exc).__name__})  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    def dispatch(self, channel: str, payload: str) -> None:
        """Queue one notification for the processor (the listener never waits on a query)."""
        try:
            self._inbox.put_nowait((channel, payload))
        except asyncio.QueueFull:
            log.warning("sse hub overloaded; a notification was dropped")

    async def _process(self) -> None:
        while True:
            items = [await self._inbox.get()]
            while len(items) < BATCH and not self._inbox.empty():
                items.append(self._inbox.get_nowait())
            await self.handle(items)

    async def handle(self, items: list[tuple[str, str]]) -> None:
        """Handle notifications in order, reading consecutive new events in one query.

        Bad payloads are logged and ignored; a failed read is logged (the
        clients catch up with `Last-Event-ID` when they reconnect).
        """
        events: list[uuid.UUID] = []
        for channel, payload in items:
            try:
                data = msgspec.json.decode(payload)
                if channel == fanout.FEED_CHANNEL:
                    events.append(uuid.UUID(str(data["event_id"])))
                elif channel == feed.READ_CHANNEL:
                    await self._on_events(events)
                    events = []
                    ids, unread = data.get("ids"), int(data["unread"])
                    self._on_read(uuid.UUID(str(data["user_id"])), ids, unread)
            except (msgspec.DecodeError, KeyError, TypeError, ValueError, AttributeError):
                log.warning("ignored a malformed notification", extra={"channel": channel})
        await self._on_events(events)

    async def _on_events(self, event_ids: list[uuid.UUID]) -> None:
        users = list(self.subscribers)
        if not users or not event_ids:
            return
        try:
            async with self.pool.connection() as conn:
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(feed.FEED_OF_EVENTS, {"events": event_ids, "users": users})
                rows = await cur.fetchall()
                if not rows:
                    return
                touched = list({r["user_id"] for r in rows})
                counts = await feed.unread_counts(conn, touched)
        except psycopg.Error as exc:  # PoolTimeout included
            log.warning("sse could not read new events", extra={"error": type(exc).__name__})
            return
        for row in rows:
            user_id = row.pop("user_id")
            n = feed.notification(row)
            self._send(user_id, frame("notification", n, n.id))
        for user_id, unread in counts.items():
            self._send(user_id, frame("notification.count", {"count": unread}))

    def _on_read(self, user_id: uuid.UUID, ids: list[int] | None, unread: int) -> None:
        if user_id not in self.subscribers:
            return
        self._send(user_id, frame("notification.read", {"ids": ids, "all": ids is None}))
        self._send(user_id, frame("notification.count", {"count": unread}))


def _last_event_id(request: Request) -> int | None:
    raw = request.headers.get("last-event-id", "").strip()
    if raw.isascii() and raw.isdigit() and int(raw) < 2**63:
        return int(raw)
    return None


async def stream(request: Request) -> Response:
    """GET /api/notifications/stream."""
    who = await auth.user(request)
    c = ctx(request)
    heartbeat: float = request.app.state.heartbeat_seconds
    after = _last_event_id(request)
    # Subscribed before reading any state, so nothing falls in between.
    sub = c.hub.subscribe(who.id, MAX_STREAMS_PER_USER)
    if sub is None:
        raise ApiError(429, f"at most {MAX_STREAMS_PER_USER} open streams per user",
                       headers={"Retry-After": "5"})  # fmt: skip
    expires = who.exp

    async def events() -> AsyncIterator[bytes]:
        c.metrics.sse_clients.inc()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(c.hub.ready.wait(), READY_WAIT_SECONDS)
            yield b"retry: 3000\n\n"
            async with c.pool.connection() as conn:
                if after is not None:
                    cur = conn.cursor(row_factory=dict_row)
                    await cur.execute(REPLAY, {"user": who.id, "after": after,
                                               "limit": REPLAY_LIMIT})  # fmt: skip
                    replay = [feed.notification(r) for r in await cur.fetchall()]
                else:
                    replay = []
                count = await feed.unread_count(conn, who.id)
            for n in replay:
                yield frame("notification", n, n.id)
            yield frame("notification.count", {"count": count})
            while True:
                # The stream ends when the token does: the client reconnects with a fresh one.
                left = heartbeat if expires is None else min(heartbeat, expires - time.time())
                if left <= 0:
                    return
                try:
                    message = await asyncio.wait_for(sub.queue.get(), left)
                except TimeoutError:
                    if expires is not None and time.time() >= expires:
                        return
                    # A token revoked meanwhile (REDIS_HOST) ends the stream too.
                    if not await auth.still_valid(request, who):
                        return
                    yield HEARTBEAT
                    continue
                if message is None:
                    return
                yield message
        finally:
            c.hub.unsubscribe(sub)
            c.metrics.sse_clients.dec()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return _Stream(events(), lambda: c.hub.unsubscribe(sub), headers)


class _Stream(StreamingResponse):
    """An SSE response that gives its slot back however it ends, even if never started."""

    def __init__(
        self, content: AsyncIterator[bytes], release: Callable[[], None], headers: dict[str, str]
    ) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream, then unsubscribe."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


ENDPOINTS = [
    Endpoint("GET", "/api/notifications/stream", stream, "Live notifications (SSE)", "feed",
             media_type="text/event-stream", errors=(429,),
             description="Server-Sent Events: `notification` (a new one; `id:` is its id), "
             "`notification.read` (`{\"ids\": [...] or null, \"all\": bool}`), "
             "`notification.count` (`{\"count\": n}`), and a `: heartbeat` comment. Send "
             "`Last-Event-ID` on reconnect to replay what was missed (up to 100)."),
]  # fmt: skip
