"""DELETE /internal/users/{user_id}: every row of the user goes, nobody else's."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from notifier import config, erasure, fanout, outbox
from tests.api.conftest import SERVICE, Api, bearer, serve

# Every table of the schema with a user_id column, and its rows of one user.
USER_TABLES = """
SELECT c.table_name FROM information_schema.columns c
JOIN information_schema.tables t USING (table_schema, table_name)
WHERE c.table_schema = 'notifier' AND c.column_name = 'user_id' AND t.table_type = 'BASE TABLE'
ORDER BY 1
"""


def _rows_of(pg_url: str, user: uuid.UUID) -> dict[str, int]:
    """The rows of `user` in every table that has a user_id column (names from the catalog)."""
    with psycopg.connect(pg_url) as conn:
        tables = [r[0] for r in conn.execute(USER_TABLES).fetchall()]
        counts = {}
        for table in tables:
            query = psycopg.sql.SQL("SELECT count(*) FROM notifier.{} WHERE user_id = %s").format(
                psycopg.sql.Identifier(table)
            )
            row = conn.execute(query, (user,)).fetchone()
            counts[table] = row[0] if row else 0
        return counts


def _event(users: list[uuid.UUID], key: str, **extra: object) -> dict[str, object]:
    return {
        "user_ids": [str(u) for u in users], "event": "price_drop", "entity_type": "release",
        "entity_id": key, "entity_name": key, "detail": {}, "idempotency_key": key,
    } | extra  # fmt: skip


async def _give_everything(api: Api, user: uuid.UUID, key: str) -> None:
    """Watches, preferences, an email, two endpoints, a ping, feed rows, a token, attempts."""
    headers = bearer(user, email=f"{key}@example.com")
    with psycopg.connect(api.pg_url) as conn:
        conn.execute(
            "INSERT INTO notifier.watchlists (user_id, entity_type, entity_id, entity_name)"
            " VALUES (%s, 'genre', 'Jazz', 'Jazz'), (%s, 'artist', '1', 'One')",
            (user, user),
        )
    r = await api.client.put("/api/preferences", headers=headers,
                             json={"new_releases": {"email": True}})  # fmt: skip
    assert r.status_code == 200, r.text
    for n in range(2):
        r = await api.client.post("/api/webhooks", headers=headers,
                                  json={"url": f"http://127.0.0.1:9/{key}/{n}"})  # fmt: skip
        assert r.status_code == 201, r.text
    assert (await api.client.post("/api/webhook/test", headers=headers)).status_code == 202
    assert (await api.client.post("/api/feed-token", headers=headers)).status_code == 201
    r = await api.client.post("/internal/events", json=_event([user], key), headers=SERVICE)
    assert r.status_code == 202
    # A counter row (read-all writes one), and an attempt on every outbox row.
    r = await api.client.post("/api/notifications/read-all", headers=headers)
    assert r.status_code == 200
    with psycopg.connect(api.pg_url) as conn:
        conn.execute(
            "INSERT INTO notifier.delivery_attempts (outbox_id, user_id, duration_ms, status_code)"
            " SELECT id, user_id, 5, 500 FROM notifier.outbox WHERE user_id = %s",
            (user,),
        )
        # A cycle's email digest, as the router and delivery leave it.
        conn.execute(
            "WITH i AS (INSERT INTO notifier.email_digest_items (version, user_id, event_id)"
            "           VALUES ('v1', %(u)s, gen_random_uuid())),"
            " d AS (INSERT INTO notifier.email_digests (user_id, version, event_count)"
            "       VALUES (%(u)s, 'v1', 1) RETURNING id)"
            " INSERT INTO notifier.email_digest_attempts"
            " (digest_id, user_id, attempted_at, duration_ms, status_code)"
            " SELECT id, %(u)s, now(), 5, 451 FROM d",
            {"u": user},
        )


async def test_erasure_removes_every_row_of_the_user_and_only_theirs(api: Api) -> None:
    gone, kept = uuid.uuid4(), uuid.uuid4()
    await _give_everything(api, gone, "gone")
    await _give_everything(api, kept, "kept")
    # An event for both: the erased id leaves its recipients, the event stays.
    r = await api.client.post("/internal/events", json=_event([gone, kept], "both"),
                              headers=SERVICE)  # fmt: skip
    shared_id = r.json()["id"]
    before_gone, before_kept = _rows_of(api.pg_url, gone), _rows_of(api.pg_url, kept)
    # Every table that holds user rows is filled for the test to mean something.
    assert all(before_gone.values()), before_gone
    assert set(before_gone) <= set(erasure.ERASE_ROWS), "a table with user_id is not erased"

    r = await api.client.delete(f"/internal/users/{gone}", headers=SERVICE)
    assert r.status_code == 204, r.text
    assert set(_rows_of(api.pg_url, gone).values()) == {0}
    assert _rows_of(api.pg_url, kept) == before_kept
    with psycopg.connect(api.pg_url) as conn:
        alone = conn.execute(
            "SELECT count(*) FROM notifier.events WHERE %s = ANY(recipients)", (gone,)
        ).fetchone()
        recipients = conn.execute(
            "SELECT recipients FROM notifier.events WHERE id = %s", (shared_id,)
        ).fetchone()
    assert alone == (0,) and recipients == ([kept],)
    # The erased user's token still decodes (the platform revokes it), but finds nothing.
    feed = await api.client.get("/api/notifications", headers=bearer(gone))
    assert feed.json()["items"] == []
    kept_feed = await api.client.get("/api/notifications", headers=bearer(kept))
    assert len(kept_feed.json()["items"]) == 2
    # Erasing again, or a user never seen, is a 204 too.
    assert (await api.client.delete(f"/internal/users/{gone}", headers=SERVICE)).status_code == 204


async def test_erasure_needs_the_service_token_and_a_uuid(api: Api) -> None:
    u = uuid.uuid4()
    assert (await api.client.delete(f"/internal/users/{u}")).status_code == 401
    r = await api.client.delete(f"/internal/users/{u}", headers=bearer(u))
    assert r.status_code == 401
    r = await api.client.delete("/internal/users/not-a-uuid", headers=SERVICE)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_nothing_more_reaches_an_erased_user(api: Api) -> None:
    gone, kept = uuid.uuid4(), uuid.uuid4()
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    body = _event([gone, kept], "later", deliver_at=later)
    r = await api.client.post("/internal/events", json=body, headers=SERVICE)
    assert r.status_code == 202
    r = await api.client.post("/api/webhooks", headers=bearer(gone),
                              json={"url": "http://127.0.0.1:9/inflight"})  # fmt: skip
    assert (await api.client.post("/api/webhook/test", headers=bearer(gone))).status_code == 202
    async with await psycopg.AsyncConnection.connect(api.pg_url) as conn:
        claimed = await outbox.claim(conn, limit=10, lease_seconds=60, replica="t")
        assert [job.user_id for job in claimed] == [gone]
        # Erased while the ping is in flight: its outcome then finds no row to write.
        r = await api.client.delete(f"/internal/users/{gone}", headers=SERVICE)
        assert r.status_code == 204
        done = outbox.Completion(claimed[0], "delivered", attempted_at=datetime.now(UTC),
                                 duration_ms=3, status_code=200)  # fmt: skip
        await outbox.complete(conn, [done])
        await conn.execute(
            "UPDATE notifier.events SET deliver_at = now() - interval '1 second'"
            " WHERE dedup_key = 'internal:later'"
        )
        async with conn.transaction():
            assert await fanout.fan_out_due(conn) == 1
    assert set(_rows_of(api.pg_url, gone).values()) == {0}
    items = (await api.client.get("/api/notifications", headers=bearer(kept))).json()["items"]
    assert [n["entity_id"] for n in items] == ["later"]


@pytest.fixture
async def short_lock_api(api_env: dict[str, str], pg_url: str) -> AsyncIterator[Api]:
    """The API with a 1 s lock timeout on its sessions."""
    env = dict(api_env, NOTIFIER_PG_LOCK_TIMEOUT="1")
    server, url, app = serve(env)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield Api(url, app, config.load(env, role="api"), pg_url, client)
    finally:
        server.stop()


async def test_erasure_waits_for_a_running_fan_out_beyond_the_lock_timeout(
    short_lock_api: Api,
) -> None:
    api, u = short_lock_api, uuid.uuid4()
    async with await psycopg.AsyncConnection.connect(api.pg_url) as fan_out:
        # A fan-out in progress holds its lock shared until it commits, 2.5 s from now.
        await fan_out.execute(fanout.LOCK_SHARED, (fanout.FEED_LOCK_KEY,))
        erase = asyncio.create_task(api.client.delete(f"/internal/users/{u}", headers=SERVICE))
        await asyncio.sleep(2.5)
        assert not erase.done()  # waiting, not refused after the session's 1 s lock_timeout
        await fan_out.commit()
    assert (await erase).status_code == 204
