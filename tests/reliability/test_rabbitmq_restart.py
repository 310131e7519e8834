"""RabbitMQ stopped and started under a running `notifier router`: it reconnects, nothing is lost.

A private broker (never the shared one) is restarted twice under one router
process:
- between signals: after a whole cycle, before the next version's first
  signal, which is published once the broker is back and is recorded;
- during signals: one service has signalled v2, the other's message is
  published while the broker is down by a publisher that retries (as the
  platform's publishers do), so it goes out once the broker is back, and it
  fires v2.
A last version signalled after both restarts fires as well. The router is
never restarted; its `/health` answers 503 while the broker is down and 200
again afterwards; every message sent is recorded exactly once, none is
dead-lettered, and each cycle has the events of a clean run.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import aio_pika
from neo4j import AsyncDriver

from notifier.devkit import services
from notifier.router import queue_names
from tests.conftest import env_for
from tests.reliability.conftest import (
    HealthWatch,
    PrivateRabbit,
    add_releases,
    new_release_events,
    start_role,
)
from tests.router.conftest import completion, cycle_done, events, q, wait_until, watch

ARTISTS = 5


class Publisher:
    """Persistent completion messages, publisher-confirmed, retried until the broker takes them."""

    def __init__(self, svc: services.RabbitService, exchange: str) -> None:
        self.svc = svc
        self.exchange = exchange
        self.sent = 0
        self.failed_attempts = 0

    async def publish(self, body: dict[str, Any], limit: float = 180.0) -> None:
        """Publish `body`; on any broker error wait a little and try again (up to `limit` s)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while True:
            try:
                conn = await aio_pika.connect(self.svc.url, timeout=5)
                async with conn:
                    channel = await conn.channel()  # publisher confirms on
                    exchange = await channel.declare_exchange(
                        self.exchange, aio_pika.ExchangeType.FANOUT, durable=True
                    )
                    await exchange.publish(
                        aio_pika.Message(json.dumps(body).encode(),
                                         delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                        routing_key="", timeout=10,
                    )  # fmt: skip
                self.sent += 1
                return
            except (aio_pika.exceptions.AMQPError, OSError, TimeoutError):
                self.failed_attempts += 1
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.5)


def _signals(pg_url: str, version: str) -> list[str]:
    rows = q(
        pg_url,
        "SELECT service FROM notifier.cycle_signals WHERE version = %s ORDER BY service",
        version,
    )
    return [r[0] for r in rows]


async def _dead_lettered(svc: services.RabbitService, exchange: str) -> int:
    conn = await aio_pika.connect(svc.url)
    async with conn:
        channel = await conn.channel()
        dead = await channel.declare_queue(queue_names(exchange)[2], passive=True)
        return int(dead.declaration_result.message_count or 0)


async def test_rabbitmq_restart_between_and_during_signals(
    private_rabbit: PrivateRabbit,
    pg_server: services.PostgresService,
    pg_url: str,
    graph_server: services.GraphService,
    graph_db: str,
    graph_driver: AsyncDriver,
    exchange_name: str,
    role_procs: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    user = uuid.uuid4()
    for i in range(ARTISTS):
        watch(pg_url, user, "artist", str(1000 + i))
    await add_releases(graph_driver, graph_db, 10_000, ARTISTS)
    port = services.free_port()
    env = env_for(
        pg_server, pg_url, private_rabbit.service, graph_server, graph_db, exchange_name,
        NOTIFIER_ROUTER_POLL_SECONDS="0.05", NOTIFIER_PORT=str(port),
    )  # fmt: skip
    router = start_role("router", env, tmp_path / "router.log", NOTIFIER_REPLICA="router")
    role_procs.append(router)
    health = HealthWatch({"router": port})
    health.start()
    pub = Publisher(private_rabbit.service, exchange_name)
    try:
        await health.until(200)
        await pub.publish(completion("graphinator", "v1"))
        await pub.publish(completion("tableinator", "v1"))
        await cycle_done(pg_url, "v1")

        # Between signals: restart, then v2's first signal.
        await asyncio.to_thread(private_rabbit.stop)
        await health.until(503)
        await asyncio.to_thread(private_rabbit.start)
        await health.until(200)
        await add_releases(graph_driver, graph_db, 20_000, ARTISTS)
        await pub.publish(completion("graphinator", "v2"))
        await wait_until(lambda: _signals(pg_url, "v2") == ["graphinator"], 90, "v2's first signal")

        # During signals: v2's second signal is published while the broker is down.
        await asyncio.to_thread(private_rabbit.stop)
        await health.until(503)
        failed_before = pub.failed_attempts
        late = asyncio.create_task(pub.publish(completion("tableinator", "v2")))
        await wait_until(lambda: pub.failed_attempts > failed_before, 60, "a refused publish")
        await asyncio.to_thread(private_rabbit.start)
        await late
        await health.until(200)
        await cycle_done(pg_url, "v2")

        # After both restarts: a whole new version.
        await add_releases(graph_driver, graph_db, 30_000, ARTISTS)
        await pub.publish(completion("graphinator", "v3"))
        await pub.publish(completion("tableinator", "v3"))
        await cycle_done(pg_url, "v3")
        dead = await _dead_lettered(private_rabbit.service, exchange_name)
    finally:
        await health.stop()

    signals = q(
        pg_url, "SELECT count(*), count(DISTINCT (version, service)) FROM notifier.cycle_signals"
    )[0]
    cycles = q(pg_url, "SELECT version, status FROM notifier.cycles ORDER BY version")
    feed = q(pg_url, "SELECT count(*) FROM notifier.notification_events WHERE user_id = %s", user)
    print(
        f"\nrabbitmq restart: messages sent {pub.sent} (refused publish attempts while down: "
        f"{pub.failed_attempts}), signals recorded {signals[0]} ({signals[1]} distinct), "
        f"dead-lettered {dead}, lost {pub.sent - signals[1]}; cycles {cycles}; events v2 "
        f"{len(events(pg_url, 'v2'))}/{ARTISTS}, v3 {len(events(pg_url, 'v3'))}/{ARTISTS}; "
        f"feed rows {feed[0][0]}/{2 * ARTISTS}; router health transitions "
        f"{health.transitions['router']} over {health.polls} polls"
    )
    assert pub.sent == 6 and pub.failed_attempts > 0
    assert signals == (6, 6)
    assert dead == 0
    assert cycles == [("v1", "done"), ("v2", "done"), ("v3", "done")]
    assert events(pg_url, "v1") == []
    assert events(pg_url, "v2") == new_release_events(20_000, ARTISTS)
    assert events(pg_url, "v3") == new_release_events(30_000, ARTISTS)
    assert feed == [(2 * ARTISTS,)]
    seen = [s for s in health.transitions["router"] if s != 0]
    assert seen == [200, 503, 200, 503, 200], health.transitions
    assert router.poll() is None, "the router exited: it should have reconnected"
