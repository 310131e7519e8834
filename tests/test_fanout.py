"""Fan-out: set-based feed and outbox rows, preferences, thresholds, idempotence."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection

from notifier import fanout
from notifier.api import feed as reads

NOW = datetime.now(UTC)


@pytest.fixture
async def conn(pg_url: str) -> AsyncIterator[AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as c:
        yield c


async def _watch(
    conn: AsyncConnection[Any],
    user: uuid.UUID,
    entity_type: str,
    entity_id: str,
    *,
    created_at: datetime = NOW - timedelta(days=1),
    options: str = "{}",
) -> None:
    await conn.execute(
        "INSERT INTO notifier.watchlists (user_id, entity_type, entity_id, options, created_at) "
        "VALUES (%s, %s, %s, %s::jsonb, %s)",
        (user, entity_type, entity_id, options, created_at),
    )


async def _event(
    conn: AsyncConnection[Any],
    event: str,
    entity_type: str | None,
    entity_id: str | None,
    detail: str = "{}",
    *,
    source: str = "router",
    deliver_at: datetime | None = None,
    recipients: list[uuid.UUID] | None = None,
) -> uuid.UUID:
    cur = await conn.execute(
        "INSERT INTO notifier.events (dedup_key, source, version, event, entity_type, entity_id, "
        "detail, deliver_at, recipients) "
        "VALUES (%s, %s, '20260201', %s, %s, %s, %s::jsonb, coalesce(%s, now()), %s) RETURNING id",
        (uuid.uuid4().hex, source, event, entity_type, entity_id, detail, deliver_at, recipients),
    )
    row = await cur.fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


async def _webhook(conn: AsyncConnection[Any], user: uuid.UUID, *, active: bool = True) -> None:
    await conn.execute(
        "INSERT INTO notifier.webhook_configs (user_id, url, secret, active) "
        "VALUES (%s, 'https://example.org/hook', 'whsec_dGVzdHRlc3R0ZXN0dGVzdHRlc3R0ZXN0', %s)",
        (user, active),
    )


async def _rows(conn: AsyncConnection[Any], sql: str, *args: Any) -> list[tuple[Any, ...]]:
    cur = await conn.execute(sql, args)
    return await cur.fetchall()


async def test_watchers_get_feed_and_outbox_rows(conn: AsyncConnection[Any]) -> None:
    a, b, c, late = (uuid.uuid4() for _ in range(4))
    for user in (a, b, c):
        await _watch(conn, user, "artist", "1")
    await _watch(conn, late, "artist", "1", created_at=NOW + timedelta(seconds=1))
    await _watch(conn, c, "artist", "2")
    await _webhook(conn, a)
    await _webhook(conn, b, active=False)
    ev = await _event(conn, "new_releases", "artist", "1", '{"new_release_count": 1}')

    async with conn.transaction():
        result = await fanout.fan_out_events(conn, [ev], watches_before=NOW)
    assert result == fanout.FanoutResult(feed_rows=3, outbox_rows=2)
    feed = await _rows(
        conn, "SELECT user_id FROM notifier.notification_events WHERE event_id = %s", ev
    )
    assert {r[0] for r in feed} == {a, b, c}
    outbox = await _rows(conn, "SELECT user_id, channel, status FROM notifier.outbox")
    # b's endpoint is disabled: its message is kept, held, for a recovery (sql/010).
    assert sorted(outbox) == sorted([(a, "webhook", "pending"), (b, "webhook", "held")])
    assert await reads.unread_counts(conn, [a, b, c]) == {a: 1, b: 1, c: 1}
    # Fan-out writes no counter row: they are folded lazily by the read path.
    assert await _rows(conn, "SELECT count(*) FROM notifier.unread_counters") == [(0,)]
    fanned = await _rows(conn, "SELECT fanned_out_at IS NOT NULL FROM notifier.events")
    assert fanned == [(True,)]

    # A second run (a crashed router's unit claimed again) writes nothing.
    async with conn.transaction():
        again = await fanout.fan_out_events(conn, [ev], watches_before=NOW)
    assert again == fanout.FanoutResult()
    assert await reads.unread_counts(conn, [a, b, c]) == {a: 1, b: 1, c: 1}


async def test_preferences_pick_channels(conn: AsyncConnection[Any]) -> None:
    no_feed, no_hook, mail = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for user in (no_feed, no_hook, mail):
        await _watch(conn, user, "label", "9")
        await _webhook(conn, user)
    await conn.execute(
        "INSERT INTO notifier.preferences (user_id, event, feed, webhook, email) VALUES "
        "(%s, 'new_releases', false, true, false), (%s, 'new_releases', true, false, false), "
        "(%s, 'new_releases', true, true, true), (%s, 'new_aliases', false, false, false)",
        (no_feed, no_hook, mail, mail),
    )
    ev = await _event(conn, "new_releases", "label", "9")
    async with conn.transaction():
        result = await fanout.fan_out_events(conn, [ev], watches_before=NOW, email=True)
    assert result == fanout.FanoutResult(feed_rows=2, outbox_rows=3)
    feed = await _rows(conn, "SELECT user_id FROM notifier.notification_events")
    assert {r[0] for r in feed} == {no_hook, mail}
    outbox = await _rows(conn, "SELECT user_id, channel FROM notifier.outbox ORDER BY channel")
    assert sorted(outbox) == sorted([(no_feed, "webhook"), (mail, "webhook"), (mail, "email")])


async def test_email_rows_only_when_the_channel_is_on(conn: AsyncConnection[Any]) -> None:
    user = uuid.uuid4()
    await _watch(conn, user, "artist", "5")
    await conn.execute(
        "INSERT INTO notifier.preferences (user_id, event, email) VALUES (%s, 'new_members', true)",
        (user,),
    )
    ev = await _event(conn, "new_members", "artist", "5")
    async with conn.transaction():
        result = await fanout.fan_out_events(conn, [ev], watches_before=NOW)
    assert result == fanout.FanoutResult(feed_rows=1, outbox_rows=0)


async def test_thresholds_follow_the_watch(conn: AsyncConnection[Any]) -> None:
    own_250, own_1000, milestones = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await _watch(conn, own_250, "genre", "Jazz", options='{"threshold": 250}')
    await _watch(conn, own_1000, "genre", "Jazz", options='{"threshold": 1000}')
    await _watch(conn, milestones, "genre", "Jazz")
    crossing = '{"threshold": %d, "previous_count": 240, "release_count": 1200}'
    crossed_250 = await _event(conn, "release_count_threshold", "genre", "Jazz", crossing % 250)
    crossed_1000 = await _event(conn, "release_count_threshold", "genre", "Jazz", crossing % 1000)
    notable = await _event(conn, "notable_releases", "genre", "Jazz", '{"release_ids": ["1"]}')
    async with conn.transaction():
        await fanout.fan_out_events(conn, [crossed_250, crossed_1000, notable], watches_before=NOW)
    got = await _rows(conn, "SELECT user_id, event_id FROM notifier.notification_events")
    assert sorted(got) == sorted(
        [
            (own_250, crossed_250),
            (own_1000, crossed_1000),
            (milestones, crossed_1000),  # 1000 is a milestone
            (own_250, notable),
            (own_1000, notable),
            (milestones, notable),
        ]
    )


async def test_cancelled_and_empty(conn: AsyncConnection[Any]) -> None:
    user = uuid.uuid4()
    await _watch(conn, user, "style", "Dub")
    ev = await _event(conn, "notable_releases", "style", "Dub")
    await conn.execute("UPDATE notifier.events SET cancelled_at = now()")
    assert await fanout.fan_out_events(conn, [ev], watches_before=NOW) == fanout.FanoutResult()
    assert await fanout.fan_out_events(conn, [], watches_before=NOW) == fanout.FanoutResult()
    assert await _rows(conn, "SELECT count(*) FROM notifier.notification_events") == [(0,)]


async def test_explicit_users_are_deduplicated(conn: AsyncConnection[Any]) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    await _webhook(conn, b)
    ev = await _event(conn, "maintenance", None, None, source="internal")
    async with conn.transaction():
        result = await fanout.fan_out_to_users(conn, ev, [a, b, a])
    assert result == fanout.FanoutResult(feed_rows=2, outbox_rows=1)
    async with conn.transaction():
        assert await fanout.fan_out_to_users(conn, ev, [a, b]) == fanout.FanoutResult()


async def test_scheduled_events_wait_until_due(conn: AsyncConnection[Any]) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    due = await _event(conn, "x", None, None, source="internal", recipients=[a, b],
                       deliver_at=NOW - timedelta(seconds=1))  # fmt: skip
    later = await _event(conn, "x", None, None, source="internal", recipients=[a],
                         deliver_at=NOW + timedelta(hours=1))  # fmt: skip
    cancelled = await _event(conn, "x", None, None, source="internal", recipients=[a],
                             deliver_at=NOW - timedelta(seconds=1))  # fmt: skip
    nobody = await _event(conn, "x", None, None, source="internal",
                          deliver_at=NOW - timedelta(seconds=1))  # fmt: skip
    await conn.execute(
        "UPDATE notifier.events SET cancelled_at = now() WHERE id = %s", (cancelled,)
    )
    async with conn.transaction():
        assert await fanout.fan_out_due(conn) == 2
    feed = await _rows(conn, "SELECT user_id, event_id FROM notifier.notification_events")
    assert sorted(feed) == sorted([(a, due), (b, due)])
    state = dict(await _rows(conn, "SELECT id, fanned_out_at IS NOT NULL FROM notifier.events"))
    assert state == {due: True, later: False, cancelled: False, nobody: True}
    async with conn.transaction():
        assert await fanout.fan_out_due(conn) == 0


async def test_feed_is_announced_at_commit(pg_url: str, conn: AsyncConnection[Any]) -> None:
    user = uuid.uuid4()
    await _watch(conn, user, "artist", "77")
    ev = await _event(conn, "new_releases", "artist", "77")
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as listener:
        await listener.execute(f"LISTEN {fanout.FEED_CHANNEL}")
        async with conn.transaction():
            await fanout.fan_out_events(conn, [ev], watches_before=NOW)

        async def first() -> str:
            async for note in listener.notifies():
                return note.payload
            raise AssertionError("no notification")

        payload = await asyncio.wait_for(first(), timeout=10)
    assert json.loads(payload) == {"event_id": str(ev)}


async def test_many_watchers_in_one_statement(conn: AsyncConnection[Any]) -> None:
    await conn.execute(
        "INSERT INTO notifier.watchlists (user_id, entity_type, entity_id, created_at) "
        "SELECT gen_random_uuid(), 'artist', '1', now() - interval '1 day' "
        "FROM generate_series(1, 5000)"
    )
    ev = await _event(conn, "new_releases", "artist", "1")
    async with conn.transaction():
        result = await fanout.fan_out_events(conn, [ev], watches_before=NOW)
    assert result.feed_rows == 5000
    users = [r[0] for r in await _rows(conn, "SELECT user_id FROM notifier.watchlists")]
    assert set((await reads.unread_counts(conn, users)).values()) == {1}


async def test_concurrent_fan_outs_of_one_event_write_it_once(
    pg_url: str, conn: AsyncConnection[Any]
) -> None:
    """The event row is the gate: the second fan-out waits, then finds it done."""
    users = [uuid.uuid4() for _ in range(3)]
    for user in users:
        await _watch(conn, user, "artist", "3")
    ev = await _event(conn, "new_releases", "artist", "3")
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as other:
        async with conn.transaction():
            first = await fanout.fan_out_events(conn, [ev], watches_before=NOW)

            async def second() -> fanout.FanoutResult:
                async with other.transaction():
                    return await fanout.fan_out_events(other, [ev], watches_before=NOW)

            waiting = asyncio.create_task(second())
            await asyncio.sleep(0.2)  # let it reach the event's row lock (not asserted)
        assert await asyncio.wait_for(waiting, timeout=30) == fanout.FanoutResult()
    assert first == fanout.FanoutResult(feed_rows=3, outbox_rows=0)
    assert await _rows(conn, "SELECT count(*) FROM notifier.notification_events") == [(3,)]


async def _fan_out_artists(conn: AsyncConnection[Any], user: uuid.UUID, ids: range) -> None:
    """One new_releases event for each artist in `ids`, all watched by `user`."""
    events = []
    for i in ids:
        await _watch(conn, user, "artist", str(i))
        events.append(await _event(conn, "new_releases", "artist", str(i)))
    async with conn.transaction():
        await fanout.fan_out_events(conn, events, watches_before=NOW)


async def _truth(conn: AsyncConnection[Any], user: uuid.UUID) -> int:
    rows = await _rows(
        conn,
        "SELECT count(*) FROM notifier.notification_events WHERE user_id = %s AND read_at IS NULL",
        user,
    )
    return int(rows[0][0])


async def _newest_feed_id(conn: AsyncConnection[Any]) -> int:
    rows = await _rows(conn, "SELECT max(id) FROM notifier.notification_events")
    return int(rows[0][0])


async def _counter(conn: AsyncConnection[Any], user: uuid.UUID) -> list[tuple[Any, ...]]:
    sql = "SELECT unread, counted_upto > 0 FROM notifier.unread_counters WHERE user_id = %s"
    return await _rows(conn, sql, user)


async def test_unread_count_folds_and_reads_keep_it_right(conn: AsyncConnection[Any]) -> None:
    user = uuid.uuid4()
    await _fan_out_artists(conn, user, range(reads.FOLD_AT + 10))
    n = reads.FOLD_AT + 10
    assert await _counter(conn, user) == []
    assert await reads.unread_count(conn, user) == n  # counted live, then folded
    assert await _counter(conn, user) == [(n, True)]
    ids = [r[0] for r in await _rows(conn, "SELECT id FROM notifier.notification_events")]

    async with conn.transaction():  # a folded row
        assert await reads.read_one(conn, user, min(ids)) == (n - 1, 0)
    async with conn.transaction():  # again: nothing changes
        assert await reads.read_one(conn, user, min(ids)) is None
    await _fan_out_artists(conn, user, range(1000, 1003))  # 3 rows above counted_upto
    assert await reads.unread_count(conn, user) == n + 2 == await _truth(conn, user)
    newest = await _newest_feed_id(conn)
    async with conn.transaction():  # an unfolded row: the counter is left alone
        assert await reads.read_one(conn, user, newest) == (n + 1, 2)
    assert await _counter(conn, user) == [(n - 1, True)]
    assert await reads.fold(conn, user)
    assert await _counter(conn, user) == [(n + 1, True)]
    assert await reads.unread_count(conn, user) == n + 1 == await _truth(conn, user)

    async with conn.transaction():
        assert await reads.read_all(conn, user) == (n + 1, 0)
    assert await _counter(conn, user) == [(0, True)]
    await _fan_out_artists(conn, user, range(2000, 2002))
    assert await reads.unread_count(conn, user) == 2 == await _truth(conn, user)
    async with conn.transaction():
        assert await reads.read_all(conn, user) == (2, 0)
    assert await reads.unread_count(conn, user) == 0


async def test_no_fold_while_a_fan_out_is_open(pg_url: str, conn: AsyncConnection[Any]) -> None:
    """A fold never counts past feed rows that could still commit."""
    user = uuid.uuid4()
    await _fan_out_artists(conn, user, range(2))
    await _watch(conn, user, "artist", "9")
    pending = await _event(conn, "new_releases", "artist", "9")
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as router:
        async with router.transaction():
            await fanout.fan_out_events(router, [pending], watches_before=NOW)
            assert not await reads.fold(conn, user)  # FEED_LOCK is held shared
            assert await _counter(conn, user) == [(0, False)]
            assert await reads.unread_count(conn, user) == 2
        assert await reads.unread_count(conn, user) == 3
        assert await reads.fold(conn, user)
    assert await _counter(conn, user) == [(3, True)]
    assert await reads.unread_count(conn, user) == 3 == await _truth(conn, user)


async def test_a_read_and_a_fold_of_one_user_serialize(
    pg_url: str, conn: AsyncConnection[Any]
) -> None:
    """A read holds the counter row: a fold waits for it, then counts the row as read."""
    user = uuid.uuid4()
    await _fan_out_artists(conn, user, range(3))
    newest = await _newest_feed_id(conn)
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as api:
        async with api.transaction():
            assert await reads.read_one(api, user, newest) == (2, 2)
            folding = asyncio.create_task(reads.fold(conn, user))
            await asyncio.sleep(0.2)  # let it reach the counter row's lock (not asserted)
        assert await asyncio.wait_for(folding, timeout=30)
    assert await _counter(conn, user) == [(2, True)]
    assert await reads.unread_count(conn, user) == 2 == await _truth(conn, user)


async def test_a_counter_written_with_a_full_count_covers_the_feed(
    conn: AsyncConnection[Any],
) -> None:
    """A counter row without counted_upto (a bulk seed, or one from before 005) counts all."""
    user = uuid.uuid4()
    await _fan_out_artists(conn, user, range(4))
    await conn.execute(
        "INSERT INTO notifier.unread_counters (user_id, unread) VALUES (%s, 4)", (user,)
    )
    assert await reads.unread_count(conn, user) == 4
    await _fan_out_artists(conn, user, range(10, 12))
    assert await reads.unread_count(conn, user) == 6 == await _truth(conn, user)


async def _flags(conn: AsyncConnection[Any], user: uuid.UUID) -> list[bool]:
    rows = await _rows(
        conn,
        "SELECT has_webhook FROM notifier.watchlists WHERE user_id = %s ORDER BY entity_id",
        user,
    )
    return [r[0] for r in rows]


async def test_a_watch_says_whether_its_user_has_an_endpoint(conn: AsyncConnection[Any]) -> None:
    """The triggers of sql/021 keep watchlists.has_webhook, which the hooks CTE trusts."""
    user, other = uuid.uuid4(), uuid.uuid4()
    await _watch(conn, user, "artist", "41")
    await _watch(conn, other, "artist", "41")
    assert await _flags(conn, user) == [False]
    await _webhook(conn, user)  # an endpoint after the watch flags it...
    await _watch(conn, user, "artist", "42")  # ...and a watch after the endpoint is born flagged
    assert await _flags(conn, user) == [True, True]
    await _webhook(conn, user)
    first, second = (
        r[0]
        for r in await _rows(
            conn,
            "SELECT id FROM notifier.webhook_configs WHERE user_id = %s ORDER BY created_at, id",
            user,
        )
    )
    assert await _flags(conn, other) == [False]

    ev = await _event(conn, "new_releases", "artist", "41")
    async with conn.transaction():
        result = await fanout.fan_out_events(conn, [ev], watches_before=NOW + timedelta(days=1))
    assert result == fanout.FanoutResult(feed_rows=2, outbox_rows=2)  # two endpoints, one user
    hooks = await _rows(conn, "SELECT user_id, webhook_id FROM notifier.outbox ORDER BY webhook_id")
    assert {(u, w) for u, w in hooks} == {(user, first), (user, second)}

    # One endpoint of two removed: still flagged. Its outbox row loses its
    # webhook_id (as the foreign key's ON DELETE SET NULL did); the other keeps it.
    await conn.execute("DELETE FROM notifier.webhook_configs WHERE id = %s", (first,))
    assert await _flags(conn, user) == [True, True]
    assert {w for _, w in await _rows(conn, "SELECT user_id, webhook_id FROM notifier.outbox")} == {
        None,
        second,
    }
    # The last one removed: no probe for this user's watches any more.
    await conn.execute("DELETE FROM notifier.webhook_configs WHERE id = %s", (second,))
    assert await _flags(conn, user) == [False, False]
    ev2 = await _event(conn, "new_releases", "artist", "42")
    async with conn.transaction():
        result = await fanout.fan_out_events(conn, [ev2], watches_before=NOW + timedelta(days=1))
    assert result == fanout.FanoutResult(feed_rows=1, outbox_rows=0)


@pytest.mark.parametrize("first", ["endpoint", "watch"])
async def test_a_watch_and_an_endpoint_written_at_once_see_each_other(
    pg_url: str, conn: AsyncConnection[Any], first: str
) -> None:
    """Neither snapshot shows the other's uncommitted row: the user's lock orders them."""
    user = uuid.uuid4()

    async def write(c: AsyncConnection[Any], what: str) -> None:
        if what == "endpoint":
            await _webhook(c, user)
        else:
            await _watch(c, user, "label", "7")

    second = "watch" if first == "endpoint" else "endpoint"
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as other:
        async with conn.transaction():
            await write(conn, first)
            waiting = asyncio.create_task(write(other, second))
            await asyncio.sleep(0.3)
            assert not waiting.done()  # held by the first writer's lock until it commits
        await asyncio.wait_for(waiting, timeout=30)
    assert await _flags(conn, user) == [True]
