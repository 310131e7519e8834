"""/internal/events: immediate fan-out, idempotency, scheduling, cancel."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg

from notifier import fanout
from tests.api.conftest import SERVICE, Api, bearer


def _event(users: list[uuid.UUID], key: str, **extra: object) -> dict[str, object]:
    return {
        "user_ids": [str(u) for u in users],
        "event": "price_drop",
        "entity_type": "release",
        "entity_id": "42",
        "entity_name": "Giant Steps",
        "detail": {"price": 12.5},
        "idempotency_key": key,
    } | extra


async def test_immediate_event_reaches_the_feed_once(api: Api) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(api.pg_url) as conn:  # b has a webhook: an outbox row too
        conn.execute(
            "INSERT INTO notifier.webhook_configs (user_id, url, secret) VALUES (%s, %s, %s)",
            (b, "http://127.0.0.1:9/", "whsec_" + "A" * 44),
        )
    body = _event([a, b, a], "k1")
    r = await api.client.post("/internal/events", json=body, headers=SERVICE)
    assert r.status_code == 202, r.text
    first = r.json()
    assert first["notifications"] == 2 and first["scheduled"] is False
    again = await api.client.post("/internal/events", json=body, headers=SERVICE)
    assert again.status_code == 202 and again.json() == first
    for u in (a, b):
        items = (await api.client.get("/api/notifications", headers=bearer(u))).json()["items"]
        assert len(items) == 1
        n = items[0]
        assert (n["event"], n["entity_id"], n["detail"]) == ("price_drop", "42", {"price": 12.5})
        count = (await api.client.get("/api/notifications/unread-count", headers=bearer(u))).json()
        assert count == {"count": 1}
    with psycopg.connect(api.pg_url) as conn:
        rows = conn.execute(
            "SELECT user_id FROM notifier.outbox WHERE event_id = %s", (first["id"],)
        ).fetchall()
    assert rows == [(b,)]


async def test_scheduled_event_waits_and_can_be_cancelled(api: Api) -> None:
    u = uuid.uuid4()
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    r = await api.client.post("/internal/events", json=_event([u], "s1", deliver_at=later),
                              headers=SERVICE)  # fmt: skip
    assert r.status_code == 202
    scheduled = r.json()
    assert scheduled["scheduled"] is True and scheduled["notifications"] == 1
    assert (await api.client.get("/api/notifications", headers=bearer(u))).json()["items"] == []
    r2 = await api.client.post("/internal/events", json=_event([u], "s2", deliver_at=later),
                               headers=SERVICE)  # fmt: skip
    assert (await api.client.delete(f"/internal/events/{r2.json()['id']}",
                                    headers=SERVICE)).status_code == 204  # fmt: skip
    # Both become due; the delivery role's scheduler fans out only the live one.
    with psycopg.connect(api.pg_url) as conn:
        conn.execute(
            "UPDATE notifier.events SET deliver_at = now() - interval '1 second'"
            " WHERE id = ANY(%s)",
            ([uuid.UUID(scheduled["id"]), uuid.UUID(r2.json()["id"])],),
        )
    async with await psycopg.AsyncConnection.connect(api.pg_url) as conn, conn.transaction():
        assert await fanout.fan_out_due(conn) == 1
    items = (await api.client.get("/api/notifications", headers=bearer(u))).json()["items"]
    assert len(items) == 1 and items[0]["event"] == "price_drop"
    assert (await api.client.delete(f"/internal/events/{uuid.uuid4()}",
                                    headers=SERVICE)).status_code == 404  # fmt: skip


async def test_internal_input_is_validated(api: Api) -> None:
    u = uuid.uuid4()
    cases = [
        _event([], "v1"),
        _event([u], ""),
        _event([u], "v2", deliver_at="2026-01-01T00:00:00"),  # no timezone
        _event([u], "v3", event="Not An Event"),
        _event([u], "v4", detail={"x": "y" * 70_000}),
        {"user_ids": ["not-a-uuid"], "event": "x", "idempotency_key": "k"},
    ]
    for body in cases:
        r = await api.client.post("/internal/events", json=body, headers=SERVICE)
        assert r.status_code == 422, (r.status_code, r.text[:200])
