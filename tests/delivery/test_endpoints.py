"""Several endpoints per user at delivery: event_types filters, per-endpoint rate limits."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import psycopg

from notifier import fanout
from tests.delivery.conftest import add_event, add_outbox, add_webhook, rows, running, wait_until
from tests.delivery.receiver import receiver

Conn = psycopg.AsyncConnection[Any]


async def _endpoint(conn: Conn, user: uuid.UUID, url: str, **cols: Any) -> uuid.UUID:
    """One more endpoint of `user` (with description/event_types/rate_limit columns)."""
    cur = await conn.execute(
        "INSERT INTO notifier.webhook_configs (user_id, url, secret, event_types, rate_limit)"
        " VALUES (%s, %s, 'whsec_' || encode(decode(md5(random()::text), 'hex'), 'base64'), %s, %s)"
        " RETURNING id",
        (user, url, cols.get("event_types"), cols.get("rate_limit")),
    )
    ((hook,),) = await cur.fetchall()
    return hook  # type: ignore[no-any-return]


async def test_each_endpoint_gets_the_events_it_takes(pg_url: str, conn: Conn) -> None:
    with receiver() as r:
        user = uuid.uuid4()
        every = await _endpoint(conn, user, r.url.replace("/hook", "/every"))
        releases = await _endpoint(
            conn, user, r.url.replace("/hook", "/releases"), event_types=["new_releases"]
        )
        aliases = await _endpoint(
            conn, user, r.url.replace("/hook", "/aliases"), event_types=["new_aliases", "x.y"]
        )
        ids = {}
        for name in ("new_releases", "new_aliases", "new_members"):
            cur = await conn.execute(
                "INSERT INTO notifier.events (dedup_key, source, event, entity_type, entity_id,"
                " entity_name, detail, recipients, recipient_count) VALUES (%s, 'internal', %s,"
                " 'artist', '1', 'A', '{}'::jsonb, %s, 1) RETURNING id",
                (name, name, [user]),
            )
            ((ids[name],),) = await cur.fetchall()
            async with conn.transaction():
                await fanout.fan_out_to_users(conn, ids[name], [user])
        async with running(pg_url):
            await wait_until(lambda: len(r.requests) == 5, "five messages")
        got = sorted((q.path, json.loads(q.body)["event"]) for q in r.requests)
        message_ids = {q.headers["webhook-id"] for q in r.requests}
    assert got == [
        ("/aliases", "new_aliases"), ("/every", "new_aliases"), ("/every", "new_members"),
        ("/every", "new_releases"), ("/releases", "new_releases"),
    ]  # fmt: skip
    assert len(message_ids) == 5  # one id per (event, endpoint)
    by_hook = await rows(
        pg_url, "SELECT webhook_id, count(*) FROM notifier.outbox GROUP BY 1 ORDER BY 2"
    )
    assert sorted(by_hook, key=lambda x: str(x[0])) == sorted(
        [(releases, 1), (aliases, 1), (every, 3)], key=lambda x: str(x[0])
    )


async def test_rate_limit_holds_across_two_delivery_replicas(pg_url: str, conn: Conn) -> None:
    rate, n = 5.0, 25
    with receiver() as limited, receiver() as free:
        user = uuid.uuid4()
        hook = await _endpoint(conn, user, limited.url, rate_limit=rate)
        free_hook, free_user, _ = await add_webhook(conn, free.url)
        for _ in range(n):
            await add_outbox(conn, user, await add_event(conn), hook)
            await add_outbox(conn, free_user, await add_event(conn), free_hook)
        started = time.monotonic()
        async with running(pg_url, batch=50), running(pg_url, batch=50):
            await wait_until(lambda: len(free.requests) == n, "the unlimited endpoint")
            free_done = time.monotonic() - started
            await wait_until(lambda: len(limited.requests) == n, "the limited one", limit=60)
        # When each was sent, as recorded (after its token, before the connection
        # opens): the receiver's clock adds connection set-up on a busy machine.
        times = [t for (t,) in await rows(
            pg_url,
            "SELECT extract(epoch FROM a.attempted_at)::float8 FROM notifier.delivery_attempts a"
            " JOIN notifier.outbox o ON o.id = a.outbox_id WHERE o.webhook_id = %s ORDER BY 1",
            hook,
        )]  # fmt: skip
        statuses = await rows(
            pg_url, "SELECT status, count(*) FROM notifier.outbox GROUP BY 1 ORDER BY 1"
        )
        (attempts,) = await rows(
            pg_url,
            "SELECT count(*) FROM notifier.delivery_attempts a JOIN notifier.outbox o"
            " ON o.id = a.outbox_id WHERE o.webhook_id = %s",
            hook,
        )
    span = times[-1] - times[0]
    # In any one second: at most a full bucket (5) plus a second's refill (5).
    busiest = max(sum(1 for t in times if s <= t < s + 1.0) for s in times)
    print(
        f"\n{n} messages at {rate}/s over two replicas: {span:.2f}s, busiest second {busiest};"
        f" the unlimited endpoint's {n} took {free_done:.2f}s"
    )
    assert busiest <= 2 * rate
    assert span >= (n - rate) / rate - 0.5  # 20 messages beyond the burst at 5/s: ~4 s
    assert free_done < span  # the other endpoint was not held back
    assert statuses == [("delivered", 2 * n)]
    assert attempts == (n,)  # rows released for pacing record no attempt


async def test_messages_held_while_disabled_are_recovered_with_new_ids(
    pg_url: str, conn: Conn
) -> None:
    from datetime import UTC, datetime, timedelta

    from notifier.api import webhook as single
    from notifier.api.webhooks import recover_messages
    from tests.delivery.receiver import Plan

    gone = True
    with receiver(lambda _: Plan(410 if gone else 200)) as r:
        user = uuid.uuid4()
        hook = await _endpoint(conn, user, r.url)
        started = datetime.now(UTC)

        async def event(name: str) -> uuid.UUID:
            cur = await conn.execute(
                "INSERT INTO notifier.events (dedup_key, source, event, entity_type, entity_id,"
                " entity_name, detail, recipients, recipient_count) VALUES (%s, 'internal',"
                " 'new_releases', 'artist', '1', 'A', '{}'::jsonb, %s, 1) RETURNING id",
                (name, [user]),
            )
            ((event_id,),) = await cur.fetchall()
            async with conn.transaction():
                await fanout.fan_out_to_users(conn, event_id, [user])
            return event_id  # type: ignore[no-any-return]

        first = await event("first")
        async with running(pg_url):
            await wait_until(
                lambda: rows(pg_url, "SELECT 1 FROM notifier.webhook_configs WHERE NOT active"),
                "the 410 disabling the endpoint",
            )
        # While disabled: two more events, kept as held (nothing sent, nothing lost).
        held = [await event("while-off-1"), await event("while-off-2")]
        statuses = dict(await rows(pg_url, "SELECT event_id, status FROM notifier.outbox"))
        # The endpoint's own webhook.disabled notice fell due while it was off: held too.
        ((notice,),) = await rows(
            pg_url, "SELECT id FROM notifier.events WHERE event = 'webhook.disabled'"
        )
        assert statuses == {first: "paused", notice: "held", held[0]: "held", held[1]: "held"}
        old_ids = dict(await rows(pg_url, "SELECT event_id, message_id FROM notifier.outbox"))
        # Re-enabled (as PATCH active true does), then the window recovered.
        gone = False
        async with conn.transaction():
            await conn.execute(
                "UPDATE notifier.webhook_configs SET active = true, disabled_reason = NULL"
                " WHERE id = %s",
                (hook,),
            )
            await conn.execute(single.RESUME_PAUSED, (hook,))
            n = await recover_messages(conn, hook, started, datetime.now(UTC) + timedelta(1))
        assert n == 3  # the held three; the paused one resumes by itself
        async with running(pg_url):
            await wait_until(lambda: len(r.requests) == 5, "the resumed and the recovered")
            await asyncio.sleep(0.3)  # nothing more comes
        got = [(json.loads(q.body)["event_id"], q.headers["webhook-id"]) for q in r.requests]
    sent_after = got[1:]
    by_event = {uuid.UUID(e): m for e, m in sent_after}
    assert set(by_event) == {first, notice, *held} and len(got) == 5
    assert by_event[first] == str(old_ids[first])  # resumed: the same message, same id
    for e in (notice, *held):  # recovered: the same event, a new message id
        assert by_event[e] != str(old_ids[e])
    states = await rows(
        pg_url,
        "SELECT status, redelivery_of IS NOT NULL, count(*) FROM notifier.outbox"
        " GROUP BY 1, 2 ORDER BY 1, 2",
    )
    assert states == [("delivered", False, 1), ("delivered", True, 3), ("recovered", False, 3)]
