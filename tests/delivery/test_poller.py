"""Claim and completion SQL: lease, SKIP LOCKED, claim tokens; delivery settings."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from notifier import backoff, config, poller
from tests.delivery.conftest import add_delivery, add_event, add_outbox, add_webhook, rows

Conn = psycopg.AsyncConnection[Any]


async def test_claim_leases_rows_and_skips_locked_and_future(pg_url: str, conn: Conn) -> None:
    hook, user, _ = await add_webhook(conn, "https://example.org/hook")
    due = [await add_outbox(conn, user, await add_event(conn), hook) for _ in range(5)]
    await add_outbox(conn, user, await add_event(conn), hook, delay_s=3600)
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as other:
        a, b = await asyncio.gather(
            poller.claim(conn, limit=3, lease_seconds=30, replica="a"),
            poller.claim(other, limit=10, lease_seconds=30, replica="b"),
        )
    claimed = sorted(j.outbox_id for j in a + b)
    assert claimed == due  # each due row once, the future one not at all
    assert await poller.claim(conn, limit=10, lease_seconds=30, replica="c") == []
    lease = await rows(
        pg_url,
        "SELECT min(next_attempt_at - now()), bool_and(claim_token IS NOT NULL), max(attempts)"
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
    (first,) = await poller.claim(conn, limit=1, lease_seconds=0.01, replica="dead")
    await asyncio.sleep(0.05)
    (second,) = await poller.claim(conn, limit=1, lease_seconds=30, replica="alive")
    assert first.outbox_id == second.outbox_id == outbox_id
    assert first.claim_token != second.claim_token and second.attempts == 2
    now = datetime.now(UTC)
    late = poller.Completion(first, "pending", next_attempt_at=now + timedelta(hours=1),
                             attempted_at=now, status_code=500)  # fmt: skip
    await poller.complete(conn, [late])
    assert await rows(pg_url, "SELECT status, claim_token FROM notifier.outbox") == [
        ("pending", second.claim_token)
    ]
    done = poller.Completion(second, "delivered", attempted_at=now, status_code=200)
    await poller.complete(conn, [done])
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
    (job,) = await poller.claim(conn, limit=1, lease_seconds=30, replica="x")
    import json

    body = json.loads(job.body())
    assert body["id"] == str(ev) and body["detail"] == {"aliases": [{"id": "1", "name": 'Zoë "Z"'}]}
    assert job.body() == job.body()
    assert isinstance(uuid.UUID(body["id"]), uuid.UUID)


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
