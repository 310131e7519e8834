"""Claim and completion SQL: lease, SKIP LOCKED, claim tokens; delivery settings."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from notifier import backoff, config, outbox
from tests.delivery.conftest import add_delivery, add_event, add_outbox, add_webhook, rows

Conn = psycopg.AsyncConnection[Any]


async def test_claim_leases_rows_and_skips_locked_and_future(pg_url: str, conn: Conn) -> None:
    hook, user, _ = await add_webhook(conn, "https://example.org/hook")
    due = [await add_outbox(conn, user, await add_event(conn), hook) for _ in range(5)]
    await add_outbox(conn, user, await add_event(conn), hook, delay_s=3600)
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as other:
        a, b = await asyncio.gather(
            outbox.claim(conn, limit=3, lease_seconds=30, replica="a"),
            outbox.claim(other, limit=10, lease_seconds=30, replica="b"),
        )
    claimed = sorted(j.outbox_id for j in a + b)
    assert claimed == due  # each due row once, the future one not at all
    assert await outbox.claim(conn, limit=10, lease_seconds=30, replica="c") == []
    lease = await rows(
        pg_url,
        "SELECT min(lease_until - now()), bool_and(claim_token IS NOT NULL), max(attempts)"
        " FROM notifier.outbox WHERE id = ANY(%s)",
        due,
    )
    assert timedelta(seconds=25) < lease[0][0] <= timedelta(seconds=30)
    assert lease[0][1:] == (True, 1)
    job = (a + b)[0]
    assert job.url == "https://example.org/hook" and job.webhook_active and len(job.secrets) == 1


async def test_expired_lease_is_claimed_again_and_stale_completion_is_ignored(
    pg_url: str, conn: Conn
) -> None:
    outbox_id, *_ = await add_delivery(conn, "https://example.org/hook")
    (first,) = await outbox.claim(conn, limit=1, lease_seconds=0.01, replica="dead")
    await asyncio.sleep(0.05)
    (second,) = await outbox.claim(conn, limit=1, lease_seconds=30, replica="alive")
    assert first.outbox_id == second.outbox_id == outbox_id
    assert first.claim_token != second.claim_token and second.attempts == 2
    now = datetime.now(UTC)
    late = outbox.Completion(first, "pending", next_attempt_at=now + timedelta(hours=1),
                             attempted_at=now, status_code=500)  # fmt: skip
    await outbox.complete(conn, [late])
    assert await rows(pg_url, "SELECT status, claim_token FROM notifier.outbox") == [
        ("pending", second.claim_token)
    ]
    done = outbox.Completion(second, "delivered", attempted_at=now, status_code=200)
    await outbox.complete(conn, [done])
    assert await rows(pg_url, "SELECT status, claim_token, claimed_by FROM notifier.outbox") == [
        ("delivered", None, "alive")
    ]
    # Both attempts are on record, the late one included.
    assert await rows(
        pg_url, "SELECT status_code FROM notifier.delivery_attempts ORDER BY status_code"
    ) == [(200,), (500,)]


async def test_body_is_stable_and_detail_kept_verbatim(conn: Conn) -> None:
    hook, user, _ = await add_webhook(conn, "https://example.org/hook")
    ev = await add_event(conn, detail='{"aliases": [{"id": "1", "name": "Zoë \\"Z\\""}]}')
    await add_outbox(conn, user, ev, hook)
    (job,) = await outbox.claim(conn, limit=1, lease_seconds=30, replica="x")
    import json

    body = json.loads(job.body())
    assert body["id"] == str(job.message_id) and body["event_id"] == str(ev) != body["id"]
    assert body["detail"] == {"aliases": [{"id": "1", "name": 'Zoë "Z"'}]}
    assert job.body() == job.body()
    assert isinstance(uuid.UUID(body["id"]), uuid.UUID)


async def test_claim_is_a_hot_update_in_a_caller_transaction(pg_url: str, conn: Conn) -> None:
    # 004_outbox_claim: a claim writes no indexed column, so with room on the
    # page (fillfactor) every claimed row gets a HOT update: no index entry.
    hook, user, _ = await add_webhook(conn, "https://example.org/hook")
    for _ in range(60):
        await add_outbox(conn, user, await add_event(conn), hook)
    async with await psycopg.AsyncConnection.connect(pg_url) as tx:  # not autocommit
        await tx.execute("SELECT 1")  # the transaction the claim joins
        jobs = await outbox.claim(tx, limit=60, lease_seconds=30, replica="r" * 40)
        cur = await tx.execute(
            "SELECT pg_stat_get_xact_tuples_updated(%s::regclass),"
            " pg_stat_get_xact_tuples_hot_updated(%s::regclass)",
            ("notifier.outbox", "notifier.outbox"),
        )
        updated, hot = await cur.fetchone()  # type: ignore[misc]
        await tx.commit()
    assert len(jobs) == 60 and updated == hot == 60
    # The caller's transaction committed the claim: the rows are leased.
    assert await outbox.claim(conn, limit=60, lease_seconds=30, replica="x") == []


async def test_complete_writes_every_field_and_webhook_state(pg_url: str, conn: Conn) -> None:
    hook, user, _ = await add_webhook(conn, "https://example.org/hook")
    await conn.execute(
        "UPDATE notifier.webhook_configs SET failing_since = now() - interval '1 day'"
    )
    ids = [await add_outbox(conn, user, await add_event(conn), hook) for _ in range(4)]
    jobs = {
        j.outbox_id: j for j in await outbox.claim(conn, limit=9, lease_seconds=30, replica="x")
    }
    now = datetime.now(UTC)
    later = now + timedelta(minutes=5)
    await outbox.complete(
        conn,
        [
            outbox.Completion(jobs[ids[0]], "delivered", attempted_at=now, duration_ms=12,
                              status_code=200, excerpt="ok \x00 ünïcode"),
            outbox.Completion(jobs[ids[1]], "pending", next_attempt_at=later,
                              last_error="HTTP 500 \x00", attempted_at=now, duration_ms=7,
                              status_code=500, error=None, excerpt="boom"),
            outbox.Completion(jobs[ids[2]], "pending", next_attempt_at=now, released=True),
            outbox.Completion(jobs[ids[3]], "dead", last_error="gave up", attempted_at=now,
                              error="connect_error"),
        ],
    )  # fmt: skip
    got = await rows(
        pg_url,
        "SELECT id, status, attempts, next_attempt_at, last_error, delivered_at IS NOT NULL,"
        " claim_token, lease_until FROM notifier.outbox ORDER BY id",
    )
    by_id = {r[0]: r[1:] for r in got}
    assert by_id[ids[0]][0:2] == ("delivered", 1) and by_id[ids[0]][4] is True
    assert by_id[ids[1]][0:4] == ("pending", 1, later, "HTTP 500 \ufffd")
    assert by_id[ids[2]][0:2] == ("pending", 0)  # released unsent: attempt given back
    assert by_id[ids[3]][0:2] == ("dead", 1) and by_id[ids[3]][3] == "gave up"
    assert all(r[6:] == (None, None) for r in got)  # claims and leases ended
    attempts = await rows(
        pg_url,
        "SELECT outbox_id, user_id, duration_ms, status_code, error, response_excerpt"
        " FROM notifier.delivery_attempts ORDER BY outbox_id",
    )
    assert attempts == [
        (ids[0], user, 12, 200, None, "ok \ufffd ünïcode"),
        (ids[1], user, 7, 500, None, "boom"),
        (ids[3], user, 0, None, "connect_error", None),
    ]
    # A success and failures for one webhook in one batch: failing since now.
    (failing,) = await rows(pg_url, "SELECT failing_since FROM notifier.webhook_configs")
    assert failing[0] is not None and failing[0] > now - timedelta(minutes=1)
    # A batch of successes only clears it (the released row is due again).
    again = await outbox.claim(conn, limit=9, lease_seconds=30, replica="x")
    assert [j.outbox_id for j in again] == [ids[2]]
    await outbox.complete(
        conn, [outbox.Completion(j, "delivered", attempted_at=now) for j in again]
    )
    assert await rows(pg_url, "SELECT failing_since FROM notifier.webhook_configs") == [(None,)]


async def test_a_claim_skips_leased_rows_and_takes_them_when_the_lease_ends(conn: Conn) -> None:
    hook, user, _ = await add_webhook(conn, "https://example.org/hook")
    first = await add_outbox(conn, user, await add_event(conn), hook)
    # A lease long enough for the next claim on a loaded machine, short enough to wait out.
    (short,) = await outbox.claim(conn, limit=1, lease_seconds=2, replica="a")
    second = await add_outbox(conn, user, await add_event(conn), hook)
    # The leased row heads the due queue; the claim passes over it.
    assert [
        j.outbox_id for j in await outbox.claim(conn, limit=5, lease_seconds=30, replica="b")
    ] == [second]
    for _ in range(100):  # once the lease ends, the row is claimed again
        if taken := await outbox.claim(conn, limit=5, lease_seconds=30, replica="c"):
            break
        await asyncio.sleep(0.1)
    (again,) = taken
    assert again.outbox_id == short.outbox_id == first and again.attempts == 2


def test_delivery_settings_defaults_and_validation() -> None:
    base = {"POSTGRES_PASSWORD": "x"}
    s = config.load(base, "delivery")
    assert (s.delivery_concurrency, s.delivery_per_endpoint, s.delivery_batch) == (256, 8, 200)
    assert (s.delivery_lease_seconds, s.delivery_timeout) == (60.0, 15.0)
    assert s.delivery_retry_schedule == backoff.DEFAULT_SCHEDULE
    custom = config.load(
        {**base, "NOTIFIER_DELIVERY_CONCURRENCY": "32", "NOTIFIER_DELIVERY_RETRY_SCHEDULE": "1,2",
         "NOTIFIER_DELIVERY_TIMEOUT": "2", "NOTIFIER_DELIVERY_LEASE_SECONDS": "6"},
        "delivery",
    )  # fmt: skip
    assert custom.delivery_concurrency == 32 and custom.delivery_retry_schedule == (1.0, 2.0)
    bad = [
        ({"NOTIFIER_DELIVERY_CONCURRENCY": "0"}, "NOTIFIER_DELIVERY_CONCURRENCY"),
        ({"NOTIFIER_DELIVERY_BATCH": "many"}, "NOTIFIER_DELIVERY_BATCH"),
        ({"NOTIFIER_DELIVERY_RETRY_SCHEDULE": "1,x"}, "NOTIFIER_DELIVERY_RETRY_SCHEDULE"),
        ({"NOTIFIER_DELIVERY_LEASE_SECONDS": "10"}, "NOTIFIER_DELIVERY_LEASE_SECONDS"),
    ]
    for env, name in bad:
        with pytest.raises(config.ConfigError) as info:
            config.load({**base, **env}, "delivery")
        assert str(info.value).startswith(name) and "\n" not in str(info.value)
