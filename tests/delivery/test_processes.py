"""`notifier delivery` as real processes: health, SIGTERM, replicas, kill -9."""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from notifier import config, delivery
from notifier.devkit import services
from tests.delivery.conftest import (
    add_event,
    add_outbox,
    add_webhook,
    delivery_env,
    rows,
    wait_until,
)
from tests.delivery.receiver import Plan, receiver

Conn = psycopg.AsyncConnection[Any]


@contextmanager
def process(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A `notifier delivery` process, killed if still running at the end."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "notifier.cli", "delivery"], env=env, stdout=out, stderr=out
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def _fill(conn: Conn, url: str, webhooks: int, per_webhook: int) -> None:
    for _ in range(webhooks):
        hook, user, _ = await add_webhook(conn, url)
        for _ in range(per_webhook):
            await add_outbox(conn, user, await add_event(conn), hook)


async def _fill_shared(conn: Conn, url: str, webhooks: int, events: int) -> None:
    """Each of `events` events to each of `webhooks` users' endpoints (one receiver)."""
    hooks = [await add_webhook(conn, url) for _ in range(webhooks)]
    for _ in range(events):
        event = await add_event(conn)
        for hook, user, _ in hooks:
            await add_outbox(conn, user, event, hook)


async def _delivered(pg_url: str) -> int:
    (n,) = await rows(pg_url, "SELECT count(*) FROM notifier.outbox WHERE status = 'delivered'")
    return int(n[0])


async def test_health_metrics_and_sigterm_drain(
    pg_server: services.PostgresService, pg_url: str, conn: Conn, tmp_path: Path
) -> None:
    env = delivery_env(pg_server, pg_url)
    base = f"http://127.0.0.1:{env['NOTIFIER_PORT']}"
    with receiver(lambda _: Plan(hang=0.5)) as r:
        await _fill(conn, r.url, 4, 5)
        with process(env, tmp_path / "delivery.log") as proc:

            async def healthy() -> bool:
                try:
                    async with httpx.AsyncClient() as c:
                        resp = await c.get(f"{base}/health")
                except httpx.TransportError:
                    return False
                return resp.status_code == 200 and resp.json()["status"] == "healthy"

            await wait_until(healthy, "/health", limit=60)
            await wait_until(lambda: r.requests, "a delivery in flight")
            async with httpx.AsyncClient() as c:
                metrics = (await c.get(f"{base}/metrics")).text
            assert "notifier_delivery_claimed_rows_total" in metrics
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        # Drained: whatever was in flight finished or was released, none is left claimed.
        left = await rows(
            pg_url, "SELECT count(*) FROM notifier.outbox WHERE claim_token IS NOT NULL"
        )
        assert left == [(0,)]
        attempts = await rows(pg_url, "SELECT count(*) FROM notifier.delivery_attempts")
        assert attempts[0][0] == await _delivered(pg_url) >= 1
    logged = [json.loads(line) for line in (tmp_path / "delivery.log").read_text().splitlines()]
    assert any(entry["msg"] == "delivery stopped" for entry in logged)


async def test_three_replicas_deliver_each_row_once(
    pg_server: services.PostgresService, pg_url: str, conn: Conn, tmp_path: Path
) -> None:
    with receiver() as r:
        await _fill(conn, r.url, 30, 20)
        envs = [
            delivery_env(pg_server, pg_url, NOTIFIER_REPLICA=f"r{i}", NOTIFIER_DELIVERY_BATCH=50)
            for i in range(3)
        ]
        with (
            process(envs[0], tmp_path / "0.log"),
            process(envs[1], tmp_path / "1.log"),
            process(envs[2], tmp_path / "2.log"),
        ):
            await wait_until(lambda: len(r.requests) >= 600, "600 deliveries", limit=120)
            await wait_until(lambda: _is_n(pg_url, 600), "600 delivered rows", limit=60)
        counts = collections.Counter(q.headers["webhook-id"] for q in r.requests)
    assert len(counts) == 600 and set(counts.values()) == {1}
    attempts = await rows(pg_url, "SELECT count(*) FROM notifier.delivery_attempts")
    assert attempts == [(600,)]
    replicas = await rows(
        pg_url, "SELECT claimed_by, count(*) FROM notifier.outbox GROUP BY 1 ORDER BY 1"
    )
    print(f"\nrows by the replica that delivered them: {replicas}")
    assert {name for name, _ in replicas} <= {"r0", "r1", "r2"}


async def _is_n(pg_url: str, n: int) -> bool:
    return await _delivered(pg_url) == n


async def test_kill_9_in_flight_loses_nothing(
    pg_server: services.PostgresService, pg_url: str, conn: Conn, tmp_path: Path
) -> None:
    with receiver(lambda _: Plan(hang=0.3)) as r:
        await _fill_shared(conn, r.url, 10, 10)  # 10 events, each to 10 users' endpoints
        fast = dict(NOTIFIER_DELIVERY_TIMEOUT=1, NOTIFIER_DELIVERY_LEASE_SECONDS=3)
        env = delivery_env(pg_server, pg_url, NOTIFIER_REPLICA="victim", **fast)
        with process(env, tmp_path / "victim.log") as victim:
            await wait_until(lambda: len(r.requests) >= 20, "requests in flight", limit=60)
            victim.kill()  # SIGKILL, with requests in flight
            victim.wait()
        killed_at = len(r.requests)
        env = delivery_env(pg_server, pg_url, NOTIFIER_REPLICA="survivor", **fast)
        with process(env, tmp_path / "survivor.log"):
            await wait_until(lambda: _is_n(pg_url, 100), "every row delivered", limit=120)
        requests = list(r.requests)
    messages = dict(
        await rows(pg_url, "SELECT message_id::text, event_id::text FROM notifier.outbox")
    )
    assert len(messages) == 100 and len(set(messages.values())) == 10
    counts = collections.Counter(q.headers["webhook-id"] for q in requests)
    assert set(counts) == set(messages)  # every message arrived, each under its own id
    duplicates = [q for q in requests if counts[q.headers["webhook-id"]] > 1]
    print(f"\n{killed_at} requests before kill -9, {len(duplicates)} duplicate deliveries")
    assert duplicates  # the requests in flight at the kill were sent again…
    for q in requests:  # …with the same webhook-id and the same body
        body = json.loads(q.body)
        assert body["id"] == q.headers["webhook-id"]
        assert body["event_id"] == messages[body["id"]]
    bodies = collections.defaultdict(set)
    for q in requests:
        bodies[q.headers["webhook-id"]].add(q.body)
    assert all(len(b) == 1 for b in bodies.values())
    resent = {q.headers["webhook-id"] for q in duplicates}
    ids_by_event = collections.Counter(messages[m] for m in resent)
    print(f"resent messages: {len(resent)}, of {len(ids_by_event)} events")


async def test_serve_inside_notifier_all_without_http(
    pg_server: services.PostgresService, pg_url: str, conn: Conn
) -> None:
    env = delivery_env(pg_server, pg_url)
    settings = config.load(env, "delivery")
    with receiver() as r:
        await _fill(conn, r.url, 1, 3)
        stop = asyncio.Event()
        task = asyncio.create_task(delivery.serve(settings, stop, serve_http=False))
        await wait_until(lambda: _is_n(pg_url, 3), "three deliveries")
        with pytest.raises(httpx.ConnectError):  # no HTTP server of its own
            async with httpx.AsyncClient() as c:
                await c.get(f"http://127.0.0.1:{settings.port}/health")
        stop.set()
        await task
    assert len(r.requests) == 3
