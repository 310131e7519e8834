"""Retention: old rows go in bounded batches, young and live ones stay, counts stay right."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from notifier import cli, config, db, retention
from notifier.api import feed

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=400)
RECENT = NOW - timedelta(days=1)

ADD_EVENT = """
INSERT INTO notifier.events (dedup_key, source, event, created_at, fanned_out_at, deliver_at)
VALUES (%s, 'internal', 'price_drop', %s, %s, %s) RETURNING id
"""
ADD_FEED = """
INSERT INTO notifier.notification_events (user_id, event_id, created_at, read_at)
VALUES (%s, %s, %s, %s) RETURNING id
"""
ADD_OUTBOX = """
INSERT INTO notifier.outbox (user_id, event_id, channel, status, created_at, updated_at,
                             redelivery_of)
VALUES (%s, %s, 'webhook', %s, %s, %s, %s) RETURNING id
"""
ADD_ATTEMPT = """
INSERT INTO notifier.delivery_attempts (outbox_id, user_id, attempted_at, duration_ms)
VALUES (%s, %s, %s, 1)
"""


def _event(conn: psycopg.Connection, at: datetime, fanned: datetime | None = None) -> uuid.UUID:
    row = conn.execute(ADD_EVENT, (uuid.uuid4().hex, at, fanned or at, at)).fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


def _count(conn: psycopg.Connection, table: str) -> int:
    query = psycopg.sql.SQL("SELECT count(*) FROM notifier.{}").format(
        psycopg.sql.Identifier(table)
    )
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


async def _pass(pg_url: str, policy: retention.Policy) -> retention.Removed | None:
    async with db.pool(pg_url, min_size=1, max_size=2) as pool:
        return await retention.run_pass(pool, policy, NOW)


async def _unread(pg_url: str, user: uuid.UUID) -> int:
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        return await feed.unread_count(conn, user)


async def test_old_feed_rows_go_and_unread_counts_stay_right(pg_url: str) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(pg_url) as conn:
        for i in range(10):  # a: 10 old rows, every other one read
            e = _event(conn, OLD)
            conn.execute(ADD_FEED, (a, e, OLD, OLD if i % 2 else None))
        # The counter folds a's old rows; rows below are counted live.
        conn.execute(
            "INSERT INTO notifier.unread_counters (user_id, unread, counted_upto)"
            " VALUES (%s, 5, notifier.feed_top())",
            (a,),
        )
        for user in (a, a, b):
            conn.execute(ADD_FEED, (user, _event(conn, RECENT), RECENT, None))
    assert await _unread(pg_url, a) == 7
    removed = await _pass(pg_url, retention.Policy(feed_days=365, batch=3))
    assert removed is not None and removed.feed == 10
    assert removed.batches >= 4  # 10 old rows, 3 a batch: never one big DELETE
    with psycopg.connect(pg_url) as conn:
        assert _count(conn, "notification_events") == 3
    assert await _unread(pg_url, a) == 2 and await _unread(pg_url, b) == 1


async def test_finished_outbox_rows_go_with_their_attempts(pg_url: str) -> None:
    u = uuid.uuid4()
    with psycopg.connect(pg_url) as conn:
        e = _event(conn, OLD)
        rows = {}
        for name, status, at in (
            ("delivered", "delivered", OLD), ("dead", "dead", OLD), ("held", "held", OLD),
            ("pending", "pending", OLD), ("young", "delivered", RECENT),
        ):  # fmt: skip
            row = conn.execute(ADD_OUTBOX, (u, e, status, at, at, None)).fetchone()
            assert row is not None
            rows[name] = row[0]
            conn.execute(ADD_ATTEMPT, (row[0], u, at))
        # A redelivery of the dead row: the original waits until it has gone.
        conn.execute(ADD_OUTBOX, (u, e, "delivered", OLD, OLD, rows["dead"]))
    policy = retention.Policy(feed_days=0, events_days=0, outbox_days=30, attempts_days=0)
    first = await _pass(pg_url, policy)
    assert first is not None and first.outbox == 3  # delivered, held, the redelivery
    with psycopg.connect(pg_url) as conn:
        left = {r[0] for r in conn.execute("SELECT id FROM notifier.outbox").fetchall()}
        assert left == {rows["dead"], rows["pending"], rows["young"]}
    second = await _pass(pg_url, policy)
    assert second is not None and second.outbox == 1
    with psycopg.connect(pg_url) as conn:
        left = {r[0] for r in conn.execute("SELECT id FROM notifier.outbox").fetchall()}
        assert left == {rows["pending"], rows["young"]}
        attempts = conn.execute("SELECT outbox_id FROM notifier.delivery_attempts").fetchall()
        assert {r[0] for r in attempts} == left


async def test_old_attempts_go_whatever_their_row(pg_url: str) -> None:
    u = uuid.uuid4()
    with psycopg.connect(pg_url) as conn:
        e = _event(conn, RECENT)
        row = conn.execute(ADD_OUTBOX, (u, e, "pending", RECENT, RECENT, None)).fetchone()
        assert row is not None
        for at in (OLD, OLD, RECENT):
            conn.execute(ADD_ATTEMPT, (row[0], u, at))
    policy = retention.Policy(feed_days=0, events_days=0, outbox_days=0, attempts_days=30, batch=1)
    removed = await _pass(pg_url, policy)
    assert removed is not None and removed.attempts == 2
    with psycopg.connect(pg_url) as conn:
        assert _count(conn, "delivery_attempts") == 1 and _count(conn, "outbox") == 1


async def test_events_go_once_nothing_points_at_them(pg_url: str) -> None:
    u = uuid.uuid4()
    with psycopg.connect(pg_url) as conn:
        gone = _event(conn, OLD - timedelta(days=1))  # fanned out before the oldest feed row
        in_feed = _event(conn, OLD)  # its feed row is kept (feed kept forever here)
        conn.execute(ADD_FEED, (u, in_feed, OLD, None))
        in_outbox = _event(conn, OLD)
        conn.execute(ADD_OUTBOX, (u, in_outbox, "pending", OLD, OLD, None))
        # Scheduled long ago, never fanned out: still to come.
        row = conn.execute(
            "INSERT INTO notifier.events (dedup_key, source, event, created_at, deliver_at)"
            " VALUES ('later', 'internal', 'price_drop', %s, %s) RETURNING id",
            (OLD, NOW + timedelta(days=1)),
        ).fetchone()
        assert row is not None
        scheduled = row[0]
        young = _event(conn, RECENT)
    policy = retention.Policy(feed_days=0, events_days=365, outbox_days=0, attempts_days=0, batch=2)
    removed = await _pass(pg_url, policy)
    assert removed is not None and removed.events == 1
    with psycopg.connect(pg_url) as conn:
        left = {r[0] for r in conn.execute("SELECT id FROM notifier.events").fetchall()}
    assert left == {in_feed, in_outbox, scheduled, young} and gone not in left


async def test_one_pass_at_a_time(pg_url: str) -> None:
    with psycopg.connect(pg_url) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (retention.RETENTION_LOCK_KEY,))
        assert await _pass(pg_url, retention.Policy()) is None
        holder.execute("SELECT pg_advisory_unlock(%s)", (retention.RETENTION_LOCK_KEY,))
    assert await _pass(pg_url, retention.Policy()) is not None


async def test_run_every_keeps_going_and_stops(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        e = _event(conn, OLD)
        conn.execute(ADD_FEED, (uuid.uuid4(), e, OLD, OLD))
    stop = asyncio.Event()
    async with db.pool(pg_url, min_size=1, max_size=2) as pool:
        task = asyncio.create_task(retention.run_every(pool, retention.Policy(), 0.05, stop))
        for _ in range(200):
            with psycopg.connect(pg_url) as conn:
                if _count(conn, "notification_events") == 0:
                    break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 10)
    with psycopg.connect(pg_url) as conn:
        assert _count(conn, "notification_events") == 0


def test_settings_and_the_command(pg_url: str, notifier_env: dict[str, str],
                                  capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    s = config.load(notifier_env, role="delivery")
    assert retention.Policy.from_settings(s) == retention.Policy()
    env = notifier_env | {"NOTIFIER_RETENTION_FEED_DAYS": "0", "NOTIFIER_RETENTION_BATCH": "10"}
    policy = retention.Policy.from_settings(config.load(env, role="delivery"))
    assert policy.feed_days == 0 and policy.batch == 10
    with pytest.raises(config.ConfigError, match="NOTIFIER_RETENTION_OUTBOX_DAYS"):
        config.load(notifier_env | {"NOTIFIER_RETENTION_OUTBOX_DAYS": "-1"}, role="delivery")
    with psycopg.connect(pg_url) as conn:
        e = _event(conn, OLD)
        conn.execute(ADD_FEED, (uuid.uuid4(), e, OLD, None))
    for name, value in notifier_env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["retention"]) == 0
    out = capsys.readouterr().out
    assert '"feed":1,' in out


ADD_DIGEST = """
INSERT INTO notifier.email_digests (user_id, version, event_count, status, created_at, updated_at)
VALUES (%s, %s, 1, %s, %s, %s) RETURNING id
"""


async def test_sent_digests_go_with_their_items_and_attempts(pg_url: str) -> None:
    u = uuid.uuid4()
    with psycopg.connect(pg_url) as conn:
        e = _event(conn, OLD)
        digests = (("v1", "delivered", OLD), ("v2", "dead", OLD),
                   ("v3", "pending", OLD), ("v4", "delivered", RECENT))  # fmt: skip
        for version, status, at in digests:
            row = conn.execute(ADD_DIGEST, (u, version, status, at, at)).fetchone()
            assert row is not None
            conn.execute(
                "INSERT INTO notifier.email_digest_items (version, user_id, event_id)"
                " VALUES (%s, %s, %s)",
                (version, u, e),
            )
            conn.execute(
                "INSERT INTO notifier.email_digest_attempts"
                " (digest_id, user_id, attempted_at, duration_ms) VALUES (%s, %s, %s, 1)",
                (row[0], u, RECENT),
            )
    policy = retention.Policy(feed_days=0, events_days=0, outbox_days=30, attempts_days=0)
    removed = await _pass(pg_url, policy)
    assert removed is not None and removed.digests == 2
    with psycopg.connect(pg_url) as conn:
        left = conn.execute("SELECT version FROM notifier.email_digests ORDER BY 1").fetchall()
        items = conn.execute(
            "SELECT version FROM notifier.email_digest_items ORDER BY 1"
        ).fetchall()
        assert left == items == [("v3",), ("v4",)]
        assert _count(conn, "email_digest_attempts") == 2
