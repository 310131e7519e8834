"""Router fixtures: settings for this test's services, an in-process router, helpers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

import aio_pika
import psycopg
import pytest
from neo4j import AsyncDriver
from psycopg_pool import AsyncConnectionPool

from notifier import config, cycles, db, graph, units
from notifier.devkit import services
from notifier.devkit.graphbuilder import GraphBuilder
from notifier.router import Router
from tests.conftest import env_for

Publish = Callable[..., Awaitable[None]]


@pytest.fixture
def router_env(
    pg_server: services.PostgresService,
    pg_url: str,
    rabbit_server: services.RabbitService,
    graph_server: services.GraphService,
    graph_db: str,
    exchange_name: str,
) -> dict[str, str]:
    """Environment of a router on this test's services (fast polling, short lease, 2 workers)."""
    return env_for(
        pg_server,
        pg_url,
        rabbit_server,
        graph_server,
        graph_db,
        exchange_name,
        NOTIFIER_ROUTER_POLL_SECONDS="0.05",
        NOTIFIER_ROUTER_LEASE_SECONDS="3",
        NOTIFIER_PORT=str(services.free_port()),
        NOTIFIER_ROUTER_WORKERS="2",  # exercise concurrent workers in every router test
    )


@pytest.fixture
def router_settings(router_env: dict[str, str]) -> config.Settings:
    """Settings of an in-process router."""
    return config.load(router_env, "router")


@pytest.fixture
async def router(router_settings: config.Settings) -> AsyncIterator[Router]:
    """A router running in this process (consumer + worker), stopped after the test."""
    r = Router(router_settings)
    task = asyncio.create_task(r.run(serve_http=False))
    ready = asyncio.create_task(r.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises the start-up error
    assert ready in done, "router did not start"
    yield r
    r.stop.set()
    assert await asyncio.wait_for(task, 60) == 0


@pytest.fixture
async def publish(
    rabbit_server: services.RabbitService, exchange_name: str
) -> AsyncIterator[Publish]:
    """publish(body: bytes | dict) to this test's completion exchange, persistent."""
    conn = await aio_pika.connect(rabbit_server.url)
    channel = await conn.channel()
    exchange = await channel.declare_exchange(
        exchange_name, aio_pika.ExchangeType.FANOUT, durable=True
    )

    async def _publish(body: bytes | dict[str, Any]) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        await exchange.publish(
            aio_pika.Message(raw, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=""
        )

    yield _publish
    await conn.close()


def completion(service: str, version: str) -> dict[str, Any]:
    """A contract §3 completion message."""
    return {
        "type": "import_completed",
        "service": service,
        "version": version,
        "completed_at": "2026-02-03T04:05:06Z",
    }


async def signal_all(publish: Publish, version: str) -> None:
    """Both default required services signal `version`."""
    await publish(completion("graphinator", version))
    await publish(completion("tableinator", version))


async def fire(
    pool: AsyncConnectionPool, settings: config.Settings, version: str, unit_size: int
) -> None:
    """Record every required service's signal of `version` (the cycle fires), in-process."""
    async with pool.connection() as conn:
        for service in settings.required_services:
            await cycles.record_signal(
                conn, version=version, service=service, completed_at=None, message={},
                required=settings.required_services, unit_size=unit_size,
            )  # fmt: skip


@contextlib.asynccontextmanager
async def unit_pool(settings: config.Settings) -> AsyncIterator[AsyncConnectionPool]:
    """A PostgreSQL pool for running a cycle's units in this process."""
    async with db.pool(settings.postgres_conninfo) as pool:
        yield pool


async def run_cycle(
    pool: AsyncConnectionPool,
    g: graph.Graph,
    settings: config.Settings,
    version: str,
    entity_types: Collection[str],
    keys: Collection[str],
) -> dict[str, int]:
    """Fire `version`, run its units one by one in this process and finish the cycle;
    the counters `keys` of the units of `entity_types`, summed (0 when never counted)."""
    await fire(pool, settings, version, unit_size=2)
    runner = units.UnitRunner(pool, g, "me", email=False, batch=100)
    totals = dict.fromkeys(keys, 0)
    async with pool.connection() as conn:
        while (unit := await cycles.claim(conn, "me", 60)) is not None:
            got = await runner.run(unit)
            assert got is not None
            if unit.entity_type in entity_types:
                for key in keys:
                    totals[key] += int(got.get(key, 0))
        assert [f.version for f in await cycles.finish_cycles(conn)] == [version]
    return totals


async def write_platform(
    driver: AsyncDriver, db_name: str, build: Callable[[GraphBuilder], Any]
) -> None:
    """Graph data written as graphinator writes it (GraphBuilder(platform=True))."""
    g = GraphBuilder(platform=True)
    build(g)
    await g.write(driver, db_name)


def q(pg_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one statement on the test database; rows (or [])."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


async def wait_until(check: Callable[[], bool], limit: float = 90, what: str = "") -> None:
    """Poll `check` until true; fail with `what` after `limit` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def cycle_done(pg_url: str, version: str, limit: float = 120) -> dict[str, Any]:
    """Wait for cycle `version` to be done; return its stats."""
    await wait_until(
        lambda: (
            q(pg_url, "SELECT status FROM notifier.cycles WHERE version = %s", version)
            == [("done",)]
        ),
        limit,
        f"cycle {version} done",
    )
    stats: dict[str, Any] = q(
        pg_url, "SELECT stats FROM notifier.cycles WHERE version = %s", version
    )[0][0]
    return stats


def watch(
    pg_url: str,
    user: uuid.UUID,
    entity_type: str,
    entity_id: str,
    options: dict[str, Any] | None = None,
) -> None:
    """A watch created an hour ago (so before any cycle of the test starts)."""
    q(
        pg_url,
        "INSERT INTO notifier.watchlists (user_id, entity_type, entity_id, entity_name, options,"
        " created_at) VALUES (%s, %s, %s, %s, %s::jsonb, now() - interval '1 hour')",
        user,
        entity_type,
        entity_id,
        entity_id,
        json.dumps(options or {}),
    )


def events(pg_url: str, version: str) -> list[tuple[Any, ...]]:
    """(event, entity_type, entity_id, detail) of a version, sorted."""
    return q(
        pg_url,
        "SELECT event, entity_type, entity_id, detail FROM notifier.events"
        " WHERE version = %s ORDER BY entity_type, entity_id, event, dedup_key",
        version,
    )


def feed(pg_url: str, user: uuid.UUID) -> list[tuple[Any, ...]]:
    """(event, entity_id, version) of a user's feed rows, sorted."""
    return q(
        pg_url,
        "SELECT e.event, e.entity_id, e.version FROM notifier.notification_events n"
        " JOIN notifier.events e ON e.id = n.event_id WHERE n.user_id = %s"
        " ORDER BY e.version, e.entity_id, e.event",
        user,
    )


async def write(driver: AsyncDriver, db: str, build: Callable[[GraphBuilder], Any]) -> None:
    """Build and write graph data."""
    g = GraphBuilder()
    build(g)
    await g.write(driver, db)


def start_router(env: dict[str, str], log: Path, **extra: str) -> subprocess.Popen[bytes]:
    """`python -m notifier.cli router` as a subprocess, its JSON log lines going to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "notifier.cli", "router"],
            env=dict(env, **extra),
            stdout=out,
            stderr=out,
        )
