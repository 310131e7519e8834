"""Delivery test helpers: rows written with plain SQL, an in-process delivery loop."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest

from notifier import db, delivery, secretbox
from notifier.channels.webhook import WebhookOptions, WebhookSender
from notifier.devkit import services
from tests.conftest import ENCRYPTION_KEY, KEYS


def new_secret() -> str:
    """A `whsec_` secret like the API makes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


async def add_webhook(
    conn: psycopg.AsyncConnection[Any], url: str, *, secret: str | None = None,
    previous: str | None = None, previous_valid: bool = True,
) -> tuple[uuid.UUID, uuid.UUID, str]:  # fmt: skip
    """Insert a webhook config; returns (webhook id, user id, secret)."""
    user = uuid.uuid4()
    secret = secret or new_secret()
    cur = await conn.execute(
        "INSERT INTO notifier.webhook_configs (user_id, url, secret, previous_secret, "
        " previous_secret_expires_at) VALUES (%s, %s, %s, %s, "
        " now() + CASE WHEN %s THEN interval '1 day' ELSE interval '-1 hour' END) RETURNING id",
        (user, url, secret, previous, previous_valid),
    )
    row = await cur.fetchone()
    assert row is not None
    return row[0], user, secret


async def add_event(
    conn: psycopg.AsyncConnection[Any], *, event: str = "new_releases",
    detail: str = '{"new_release_count": 1, "release_ids": ["456"]}', cancelled: bool = False,
) -> uuid.UUID:  # fmt: skip
    """Insert an immutable event."""
    cur = await conn.execute(
        "INSERT INTO notifier.events (dedup_key, source, version, event, entity_type, entity_id,"
        " entity_name, detail, cancelled_at, fanned_out_at) VALUES (%s, 'router', '20260201',"
        " %s, 'artist', '123', 'John Coltrane', %s::jsonb, CASE WHEN %s THEN now() END, now())"
        " RETURNING id",
        (uuid.uuid4().hex, event, detail, cancelled),
    )
    row = await cur.fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


async def add_outbox(
    conn: psycopg.AsyncConnection[Any], user: uuid.UUID, event_id: uuid.UUID,
    webhook: uuid.UUID | None, *, channel: str = "webhook", delay_s: float = 0,
) -> int:  # fmt: skip
    """Insert one outbox row, due after `delay_s` seconds."""
    cur = await conn.execute(
        "INSERT INTO notifier.outbox (user_id, event_id, channel, webhook_id, next_attempt_at)"
        " VALUES (%s, %s, %s, %s, now() + make_interval(secs => %s)) RETURNING id",
        (user, event_id, channel, webhook, delay_s),
    )
    row = await cur.fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


async def add_delivery(
    conn: psycopg.AsyncConnection[Any], url: str, **kw: Any
) -> tuple[int, uuid.UUID, uuid.UUID, str]:
    """A webhook, an event and its outbox row: (outbox id, event id, webhook id, secret)."""
    hook, user, secret = await add_webhook(conn, url, **kw)
    ev = await add_event(conn)
    return await add_outbox(conn, user, ev, hook), ev, hook, secret


async def wait_until(
    check: Callable[[], Any], what: str, *, limit: float = 30.0, every: float = 0.05
) -> Any:
    """Poll `check` (sync or async) until it returns something truthy; fail after `limit`."""
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        await asyncio.sleep(every)


@asynccontextmanager
async def running(
    pg_url: str, *, options: WebhookOptions | None = None, channels: dict[str, Any] | None = None,
    keys: secretbox.Keyring | None = KEYS, **limits: Any,
) -> AsyncIterator[delivery.Delivery]:  # fmt: skip
    """An in-process delivery loop on `pg_url`, stopped (drained) on exit."""
    opts = options or WebhookOptions(allow_private=True, total_timeout=2.0, read_timeout=2.0)
    sender = WebhookSender(opts)
    chans = {"webhook": sender, **(channels or {})}
    limits.setdefault("poll_seconds", 0.05)
    pool = db.pool(pg_url, min_size=1, max_size=4)
    await pool.open()
    d = delivery.Delivery(pool, chans, "test", delivery.Limits(**limits), keys)
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    try:
        yield d
    finally:
        stop.set()
        await task
        for c in chans.values():
            await c.aclose()
        await pool.close()


async def rows(pg_url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run one query on a fresh connection."""
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        cur = await conn.execute(sql, args)
        return await cur.fetchall()


async def status_of(pg_url: str, outbox_id: int) -> str:
    """The status of one outbox row."""
    got = await rows(pg_url, "SELECT status FROM notifier.outbox WHERE id = %s", outbox_id)
    return str(got[0][0])


async def has_status(pg_url: str, outbox_id: int, status: str) -> bool:
    """Whether the outbox row has `status` (a `wait_until` condition)."""
    return await status_of(pg_url, outbox_id) == status


async def attempts_of(pg_url: str, outbox_id: int) -> list[tuple[Any, ...]]:
    """Attempts at the row, oldest first: (status_code, error, excerpt, duration_ms, at)."""
    return await rows(
        pg_url,
        "SELECT status_code, error, response_excerpt, duration_ms, attempted_at"
        " FROM notifier.delivery_attempts WHERE outbox_id = %s ORDER BY id",
        outbox_id,
    )


def delivery_env(pg_server: services.PostgresService, pg_url: str, **extra: Any) -> dict[str, str]:
    """Environment for a `notifier delivery` subprocess on this test's database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "NOTIFIER_"))}
    env.update(
        POSTGRES_HOST=pg_server.host,
        POSTGRES_PORT=str(pg_server.port),
        POSTGRES_USERNAME=pg_server.user,
        POSTGRES_PASSWORD=pg_server.password or "trust-auth-ignores-this",
        POSTGRES_DATABASE=pg_url.rsplit("/", 1)[1],
        NOTIFIER_WEBHOOK_ALLOW_PRIVATE="true",
        NOTIFIER_ENCRYPTION_KEY=ENCRYPTION_KEY,
        NOTIFIER_PORT=str(services.free_port()),
        LOG_LEVEL="INFO",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture
async def conn(pg_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """An autocommit connection to this test's database."""
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as c:
        yield c
