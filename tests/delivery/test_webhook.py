"""Webhook delivery against real loopback receivers (in-process delivery loop)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import psycopg
from standardwebhooks.webhooks import Webhook

from notifier import fanout, signing
from notifier.channels.webhook import WebhookOptions
from tests.delivery.conftest import (
    add_delivery,
    add_event,
    add_outbox,
    add_webhook,
    attempts_of,
    has_status,
    new_secret,
    rows,
    running,
    status_of,
    wait_until,
)
from tests.delivery.receiver import Plan, receiver
from tests.delivery.test_signing import _verify_v1a

Conn = psycopg.AsyncConnection[Any]


def _independent_check(secret: str, header: str, body: bytes) -> bool:
    """The t=,v1= header checked without notifier.signing."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    fields = dict(part.split("=", 1) for part in header.split(",") if not part.startswith("v1="))
    sigs = [part[3:] for part in header.split(",") if part.startswith("v1=")]
    expected = hmac.new(key, f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return abs(time.time() - int(fields["t"])) < 300 and any(
        hmac.compare_digest(s, expected) for s in sigs
    )


async def test_delivers_the_contract_body_signed_both_ways(pg_url: str, conn: Conn) -> None:
    with receiver() as r:
        outbox_id, event_id, _, secret = await add_delivery(conn, r.url)
        async with running(pg_url):
            await wait_until(lambda: r.requests, "the webhook")
            await wait_until(lambda: has_status(pg_url, outbox_id, "delivered"), "delivered")
        got = r.requests[0]
    body = json.loads(got.body)
    assert list(body) == [
        "id", "event_id", "event", "entity_type", "entity_id", "entity_name", "detail", "version",
        "timestamp",
    ]  # fmt: skip
    ((message_id,),) = await rows(
        pg_url, "SELECT message_id FROM notifier.outbox WHERE id = %s", outbox_id
    )
    assert body["id"] == str(message_id) == got.headers["webhook-id"]
    assert body["event_id"] == str(event_id) != body["id"]
    assert body["event"] == "new_releases" and body["entity_name"] == "John Coltrane"
    assert body["detail"] == {"new_release_count": 1, "release_ids": ["456"]}
    assert body["version"] == "20260201" and body["timestamp"].endswith("Z")
    assert got.headers["content-type"] == "application/json"
    assert Webhook(secret).verify(got.body, got.headers)["id"] == str(message_id)
    assert _independent_check(secret, got.headers["x-discogsography-signature"], got.body)
    attempts = await attempts_of(pg_url, outbox_id)
    assert len(attempts) == 1 and attempts[0][0] == 200 and attempts[0][2] == "ok"


async def test_rotation_signs_with_both_secrets_until_expiry(pg_url: str, conn: Conn) -> None:
    old = new_secret()
    with receiver() as r:
        a, *_, new = await add_delivery(conn, r.url, previous=old, previous_valid=True)
        b, *_, newer = await add_delivery(conn, r.url, previous=old, previous_valid=False)
        async with running(pg_url):
            await wait_until(lambda: len(r.requests) == 2, "two webhooks")
            await wait_until(lambda: has_status(pg_url, b, "delivered"), "delivered")
        by_secret_count = sorted(r.requests, key=lambda q: -len(q.headers["webhook-signature"]))
    rotating, single = by_secret_count
    assert len(rotating.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(rotating.body, rotating.headers)
        assert _independent_check(secret, rotating.headers["x-discogsography-signature"],
                                  rotating.body)  # fmt: skip
    assert len(single.headers["webhook-signature"].split(" ")) == 1
    Webhook(newer).verify(single.body, single.headers)
    assert not _independent_check(old, single.headers["x-discogsography-signature"], single.body)
    assert a != b


async def test_500_is_retried_then_delivered_with_the_same_id(pg_url: str, conn: Conn) -> None:
    answers = iter([Plan(status=500, body=b"boom"), Plan(status=503), Plan()])
    with receiver(lambda _: next(answers)) as r:
        outbox_id, event_id, hook, _ = await add_delivery(conn, r.url)
        async with running(pg_url, schedule=(0.1, 0.1, 0.1)):
            await wait_until(lambda: has_status(pg_url, outbox_id, "delivered"), "delivered")
        ids = {q.headers["webhook-id"] for q in r.requests}
        bodies = set(r.bodies())
    ((message_id,),) = await rows(
        pg_url, "SELECT message_id FROM notifier.outbox WHERE id = %s", outbox_id
    )
    assert ids == {str(message_id)} and len(bodies) == 1 and len(r.requests) == 3
    assert json.loads(bodies.pop())["event_id"] == str(event_id) != str(message_id)
    attempts = await attempts_of(pg_url, outbox_id)
    assert [a[0] for a in attempts] == [500, 503, 200]
    assert attempts[0][2] == "boom"
    assert all(a[3] >= 0 and a[4] is not None for a in attempts)
    (failing,) = await rows(pg_url, "SELECT failing_since FROM notifier.webhook_configs "
                            "WHERE id = %s", hook)  # fmt: skip
    assert failing == (None,)


async def test_429_retry_after_seconds_and_http_date(pg_url: str, conn: Conn) -> None:
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 7200))
    with receiver(lambda q: Plan(429, {"Retry-After": "600" if q.path == "/a" else date})) as r:
        a, *_ = await add_delivery(conn, r.url.replace("/hook", "/a"))
        b, *_ = await add_delivery(conn, r.url.replace("/hook", "/b"))
        async with running(pg_url, schedule=(0.1,)):
            await wait_until(lambda: len(r.requests) == 2, "both attempts")
            await wait_until(
                lambda: rows(pg_url, "SELECT 1 FROM notifier.outbox WHERE claim_token IS NULL "
                             "AND attempts = 1 HAVING count(*) = 2"),
                "both completed",
            )  # fmt: skip
        waits = dict(
            await rows(pg_url, "SELECT id, extract(epoch FROM next_attempt_at - now()) "
                       "FROM notifier.outbox WHERE status = 'pending'")
        )  # fmt: skip
    assert 590 <= waits[a] <= 600
    assert 7100 <= waits[b] <= 7200
    assert len(await attempts_of(pg_url, a)) == 1 and (await attempts_of(pg_url, a))[0][0] == 429


async def _disabled_notices(pg_url: str, user: Any) -> list[tuple[Any, ...]]:
    """The user's feed entries: (event, detail)."""
    return await rows(
        pg_url,
        "SELECT e.event, e.detail FROM notifier.notification_events n"
        " JOIN notifier.events e ON e.id = n.event_id WHERE n.user_id = %s ORDER BY n.id",
        user,
    )


async def test_410_disables_the_webhook_and_pauses_its_rows(pg_url: str, conn: Conn) -> None:
    with receiver(lambda _: Plan(410)) as r:
        hook, user, _ = await add_webhook(conn, r.url)
        first = await add_outbox(conn, user, await add_event(conn), hook)
        later = await add_outbox(conn, user, await add_event(conn), hook, delay_s=3600)
        async with running(pg_url):
            await wait_until(lambda: has_status(pg_url, first, "paused"), "paused")
    (cfg,) = await rows(pg_url, "SELECT active, disabled_reason, disabled_at FROM "
                        "notifier.webhook_configs WHERE id = %s", hook)  # fmt: skip
    assert cfg[0] is False and "410" in cfg[1] and cfg[2] is not None
    assert await status_of(pg_url, later) == "paused"
    assert [a[0] for a in await attempts_of(pg_url, first)] == [410]
    assert len(r.requests) == 1
    # The user is told, in the feed: the endpoint's id, URL and reason.
    assert await _disabled_notices(pg_url, user) == [
        ("webhook.disabled", {"endpoint_id": str(hook), "url": r.url, "reason": cfg[1]})
    ]


async def test_failing_past_the_schedule_disables_with_a_reason(pg_url: str, conn: Conn) -> None:
    with receiver(lambda _: Plan(500)) as r:
        hook, user, _ = await add_webhook(conn, r.url)
        first = await add_outbox(conn, user, await add_event(conn), hook)
        other = await add_outbox(conn, user, await add_event(conn), hook, delay_s=3600)
        async with running(pg_url, schedule=(0.05, 0.05)):
            await wait_until(lambda: has_status(pg_url, first, "paused"), "paused")
    (cfg,) = await rows(pg_url, "SELECT active, disabled_reason, failing_since FROM "
                        "notifier.webhook_configs WHERE id = %s", hook)  # fmt: skip
    assert cfg[0] is False and cfg[2] is not None
    assert cfg[1].startswith("disabled after 3 failed attempts") and "HTTP 500" in cfg[1]
    assert await status_of(pg_url, other) == "paused"  # kept, not lost
    assert len(await attempts_of(pg_url, first)) == 3 == len(r.requests)
    assert await _disabled_notices(pg_url, user) == [
        ("webhook.disabled", {"endpoint_id": str(hook), "url": r.url, "reason": cfg[1]})
    ]


async def test_errors_are_recorded_by_class(pg_url: str, conn: Conn) -> None:
    huge = 50 * 1024 * 1024
    plans = {
        "/hang": Plan(hang=30),
        "/drip": Plan(body=b"x" * 100, drip=0.1),
        "/redirect": Plan(302, {"Location": "/elsewhere"}),
        "/huge": Plan(huge=huge),
    }
    with receiver(lambda q: plans.get(q.path, Plan())) as r:
        ids = {p: (await add_delivery(conn, r.url.replace("/hook", p)))[0] for p in plans}
        ids["/refused"] = (await add_delivery(conn, "http://127.0.0.1:9/hook"))[0]
        opts = WebhookOptions(allow_private=True, total_timeout=1.0, read_timeout=5.0)
        async with running(pg_url, options=opts, schedule=(3600,)):
            await wait_until(
                lambda: rows(pg_url, "SELECT 1 FROM notifier.delivery_attempts "
                             "HAVING count(*) = 5"), "five attempts")  # fmt: skip
        by_path = {p: (await attempts_of(pg_url, i))[0] for p, i in ids.items()}
    assert by_path["/hang"][1] == "timeout" and by_path["/hang"][0] is None
    assert by_path["/drip"][1] == "timeout"
    assert by_path["/redirect"][0] == 302
    assert not any(q.path == "/elsewhere" for q in r.requests)
    assert by_path["/refused"][1] == "connect_error"
    assert by_path["/huge"][0] == 200 and len(by_path["/huge"][2]) <= 512
    assert await status_of(pg_url, ids["/huge"]) == "delivered"
    for p in ("/hang", "/drip", "/redirect", "/refused"):
        assert await status_of(pg_url, ids[p]) == "pending"


async def test_a_hanging_endpoint_does_not_slow_the_others(pg_url: str, conn: Conn) -> None:
    opts = WebhookOptions(allow_private=True, total_timeout=5.0, per_endpoint=4)
    with receiver(lambda _: Plan(hang=30)) as slow, receiver() as fast:
        # Baseline: 40 deliveries to healthy endpoints alone.
        for _ in range(40):
            await add_delivery(conn, fast.url)
        started = time.monotonic()
        async with running(pg_url, options=opts, schedule=(3600,), drain_seconds=1):
            await wait_until(lambda: len(fast.requests) == 40, "the baseline")
            alone = time.monotonic() - started
        # The same again while one endpoint hangs with 40 rows of its own.
        hook, user, _ = await add_webhook(conn, slow.url)
        for _ in range(40):
            await add_outbox(conn, user, await add_event(conn), hook)
        fast_ids = [(await add_delivery(conn, fast.url))[0] for _ in range(40)]
        started = time.monotonic()
        async with running(pg_url, options=opts, schedule=(3600,), drain_seconds=1):
            await wait_until(lambda: len(fast.requests) == 80, "the healthy endpoints")
            beside_hang = time.monotonic() - started
            await wait_until(lambda: len(slow.requests) == 4, "the hanging requests")
            await asyncio.sleep(0.2)
            in_flight_slow = len(slow.requests)
        statuses = [await status_of(pg_url, i) for i in fast_ids]
    print(
        f"\n40 healthy deliveries: {alone:.2f}s alone, {beside_hang:.2f}s while one endpoint hung"
    )
    assert in_flight_slow == 4  # the per-endpoint cap
    assert statuses == ["delivered"] * 40


async def test_cancelled_and_future_rows_are_not_sent(pg_url: str, conn: Conn) -> None:
    with receiver() as r:
        hook, user, _ = await add_webhook(conn, r.url)
        cancelled = await add_outbox(conn, user, await add_event(conn, cancelled=True), hook)
        future = await add_outbox(conn, user, await add_event(conn), hook, delay_s=3600)
        due = await add_outbox(conn, user, await add_event(conn), hook)
        async with running(pg_url):
            await wait_until(lambda: has_status(pg_url, due, "delivered"), "the due row")
            await wait_until(
                lambda: has_status(pg_url, cancelled, "cancelled"), "the cancelled row"
            )
            await asyncio.sleep(0.3)
    assert len(r.requests) == 1
    assert await status_of(pg_url, future) == "pending"
    assert await attempts_of(pg_url, cancelled) == []
    (n,) = await rows(pg_url, "SELECT attempts FROM notifier.outbox WHERE id = %s", cancelled)
    assert n == (0,)


async def test_a_row_due_soon_is_sent_when_due_not_at_the_next_poll(
    pg_url: str, conn: Conn
) -> None:
    with receiver() as r:
        hook, user, _ = await add_webhook(conn, r.url)
        soon = await add_outbox(conn, user, await add_event(conn), hook, delay_s=1.5)
        # A poll every 10 minutes: only waking for the due row delivers it in time.
        async with running(pg_url, poll_seconds=600):
            await wait_until(
                lambda: has_status(pg_url, soon, "delivered"), "the row due soon", limit=60
            )
            (early,) = await rows(
                pg_url, "SELECT count(*) FROM notifier.delivery_attempts WHERE outbox_id = %s"
                " AND attempted_at < (SELECT next_attempt_at FROM notifier.outbox WHERE id = %s)",
                soon, soon,
            )  # fmt: skip
    assert len(r.requests) == 1
    assert early == (0,)  # not before it fell due


async def test_ssrf_blocks_loopback_at_delivery_time(pg_url: str, conn: Conn) -> None:
    with receiver() as r:
        by_name, *_ = await add_delivery(conn, f"https://localhost:{r.port}/hook")
        literal, *_ = await add_delivery(conn, f"https://127.0.0.1:{r.port}/hook")
        plain, *_ = await add_delivery(conn, r.url)
        opts = WebhookOptions(allow_private=False, total_timeout=2.0)
        async with running(pg_url, options=opts, schedule=(3600,)):
            await wait_until(
                lambda: rows(pg_url, "SELECT 1 FROM notifier.delivery_attempts "
                             "HAVING count(*) = 3"), "three attempts")  # fmt: skip
    assert r.requests == []
    assert (await attempts_of(pg_url, by_name))[0][1].startswith("blocked_address: localhost")
    assert "loopback" in (await attempts_of(pg_url, literal))[0][1]
    assert (await attempts_of(pg_url, plain))[0][1].startswith("bad_url")


async def test_bad_urls_and_secrets_are_recorded_not_crashed(pg_url: str, conn: Conn) -> None:
    with receiver() as r:
        bad_url, *_ = await add_delivery(conn, "http://exa mple.org:99999/hook")
        no_host, *_ = await add_delivery(conn, "http:///hook")
        bad_secret, *_ = await add_delivery(conn, r.url, secret="whsec_not base64!")
        async with running(pg_url, schedule=(3600,)):
            await wait_until(
                lambda: rows(pg_url, "SELECT 1 FROM notifier.delivery_attempts "
                             "HAVING count(*) = 3"), "three attempts")  # fmt: skip
    assert r.requests == []
    for outbox_id, prefix in (
        (bad_url, ("bad_url", "dns_error")),
        (no_host, ("bad_url",)),
        (bad_secret, ("bad_secret",)),
    ):
        (attempt,) = await attempts_of(pg_url, outbox_id)
        assert attempt[1].startswith(prefix), attempt
        assert "not base64!" not in attempt[1]  # the secret never ends up in a record
        assert await status_of(pg_url, outbox_id) == "pending"


async def test_a_binary_answer_is_recorded(pg_url: str, conn: Conn) -> None:
    with receiver(lambda _: Plan(500, body=b"\x00\xff\xfebinary\x00")) as r:
        outbox_id, *_ = await add_delivery(conn, r.url)
        async with running(pg_url, schedule=(3600,)):
            await wait_until(lambda: attempts_of(pg_url, outbox_id), "the attempt")
    (attempt,) = await attempts_of(pg_url, outbox_id)
    assert attempt[0] == 500 and "binary" in attempt[2] and "\x00" not in attempt[2]
    assert len(r.requests) == 1


async def test_deleted_or_disabled_webhooks(pg_url: str, conn: Conn) -> None:
    with receiver() as r:
        a, _, hook_a, _ = await add_delivery(conn, r.url)
        b, _, hook_b, _ = await add_delivery(conn, r.url)
        await conn.execute("UPDATE notifier.webhook_configs SET active = false WHERE id = %s",
                           (hook_a,))  # fmt: skip
        await conn.execute("DELETE FROM notifier.webhook_configs WHERE id = %s", (hook_b,))
        async with running(pg_url):
            await wait_until(lambda: has_status(pg_url, a, "paused"), "paused")
            await wait_until(lambda: has_status(pg_url, b, "dead"), "dead")
    assert r.requests == []


async def test_scheduled_events_go_out_when_due_and_cancelled_ones_never(
    pg_url: str, conn: Conn
) -> None:
    with receiver() as r:
        hook, user, _ = await add_webhook(conn, r.url)
        cur = await conn.execute(
            "INSERT INTO notifier.events (dedup_key, source, event, entity_type, entity_id,"
            " entity_name, detail, deliver_at, recipients, recipient_count, cancelled_at)"
            " SELECT k, 'internal', 'new_releases', 'artist', '1', 'A', '{}'::jsonb,"
            " now() + interval '1 second', ARRAY[%s]::uuid[], 1,"
            " CASE WHEN k = 'cancelled' THEN now() END"
            " FROM unnest(ARRAY['due-soon', 'cancelled']) AS k RETURNING id, dedup_key",
            (user,),
        )
        ids = {key: event_id for event_id, key in await cur.fetchall()}
        async with running(pg_url):
            await wait_until(lambda: r.requests, "the scheduled event", limit=30)
            await asyncio.sleep(1.5)  # a later scheduler round would send the cancelled one
    assert [json.loads(q.body)["event_id"] for q in r.requests] == [str(ids["due-soon"])]
    outbox = await rows(
        pg_url,
        "SELECT o.event_id, o.webhook_id, o.status, o.delivered_at >= e.deliver_at"
        " FROM notifier.outbox o JOIN notifier.events e ON e.id = o.event_id",
    )
    assert outbox == [(ids["due-soon"], hook, "delivered", True)]  # not before deliver_at


async def test_one_event_to_30_users_on_one_receiver_is_30_messages(
    pg_url: str, conn: Conn
) -> None:
    # The defect of issue 18: the same event to 30 users' endpoints on one
    # receiver carried one webhook-id 30 times (a deduplicating receiver kept 1).
    with receiver() as r:
        users = [(await add_webhook(conn, r.url))[1] for _ in range(30)]
        cur = await conn.execute(
            "INSERT INTO notifier.events (dedup_key, source, event, entity_type, entity_id,"
            " entity_name, detail, recipients, recipient_count) VALUES ('thirty', 'internal',"
            " 'new_releases', 'artist', '1', 'A', '{}'::jsonb, %s, 30) RETURNING id",
            (users,),
        )
        ((event_id,),) = await cur.fetchall()
        async with conn.transaction():  # the real fan-out, as /internal/events runs it
            result = await fanout.fan_out_to_users(conn, event_id, users)
        assert result.outbox_rows == 30
        async with running(pg_url):
            await wait_until(lambda: len(r.requests) == 30, "30 webhooks")
        got = list(r.requests)
    ids = [q.headers["webhook-id"] for q in got]
    bodies = [json.loads(q.body) for q in got]
    assert len(set(ids)) == 30  # a receiver deduplicating on webhook-id keeps all 30
    assert [b["id"] for b in bodies] == ids
    assert {b["event_id"] for b in bodies} == {str(event_id)}  # one event, named in the body
    by_user = dict(
        await rows(
            pg_url, "SELECT user_id, message_id::text FROM notifier.outbox WHERE event_id = %s",
            event_id,
        )
    )  # fmt: skip
    assert sorted(by_user) == sorted(users) and sorted(by_user.values()) == sorted(ids)
    assert str(event_id) not in ids


async def test_an_ed25519_endpoint_is_signed_v1a_only(pg_url: str, conn: Conn) -> None:
    private, public = signing.new_ed25519()
    with receiver() as r:
        outbox_id, *_ = await add_delivery(conn, r.url, secret=private)
        await conn.execute(
            "UPDATE notifier.webhook_configs SET public_key = %s WHERE secret = %s",
            (public, private),
        )
        async with running(pg_url):
            await wait_until(lambda: has_status(pg_url, outbox_id, "delivered"), "delivered")
        got = r.requests[0]
    assert "x-discogsography-signature" not in got.headers  # no HMAC: no shared key
    assert got.headers["webhook-signature"].startswith("v1a,")
    assert _verify_v1a(
        public, got.headers["webhook-id"], got.headers["webhook-timestamp"], got.body,
        got.headers["webhook-signature"],
    )  # fmt: skip
    assert json.loads(got.body)["id"] == got.headers["webhook-id"]
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 60
