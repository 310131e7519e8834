"""PostgreSQL restarted under every role at once: nothing lost, /health 503 then 200.

A private PostgreSQL server (never the shared one) carries a `notifier router`,
a `notifier delivery` and a `notifier api` process. A cycle is started whose
diff units write events, feed rows and outbox rows that the delivery process
sends to a loopback receiver as they appear; an SSE stream is open on the API.
Half-way through the cycle, with deliveries in flight, the server is stopped
(`pg_ctl stop -m fast`), kept down until every role's `/health` answers 503,
and started again. No role is restarted. Afterwards the cycle finishes with
exactly the events of a clean run, every feed row and every delivery exists,
each role's `/health` is back to 200, the feed answers, and the SSE stream
(whose LISTEN connection had to reconnect) carries a notification created
after the restart.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from neo4j import AsyncDriver
from psycopg_pool import AsyncConnectionPool

from notifier import config
from notifier.devkit import services
from notifier.router import Router
from tests.api.conftest import SERVICE_TOKEN, token
from tests.conftest import env_for
from tests.delivery.receiver import Plan, receiver
from tests.reliability.conftest import (
    HealthWatch,
    add_releases,
    new_release_events,
    start_role,
)
from tests.router.conftest import (
    Publish,
    cycle_done,
    events,
    publish,
    q,
    signal_all,
    wait_until,
)

__all__ = ["publish"]  # the fixture, imported for this module's tests

ARTISTS = 120
UNIT_SIZE = 2  # 60 diff units: the cycle is still running when the server stops
USERS = 2  # each watches every artist and has a webhook
STOP_AT_UNITS = 12  # stop PostgreSQL once this many v2 units are done
SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"  # base64 of 24 bytes

# Every artist watched by the user, created an hour ago (before any cycle of the test).
ADD_WATCHES = """
INSERT INTO notifier.watchlists (user_id, entity_type, entity_id, entity_name, created_at)
SELECT %s, 'artist', (1000 + g)::text, 'Artist ' || (1000 + g), now() - interval '1 hour'
FROM generate_series(0, %s - 1) AS g
"""
# What each session of the database is doing (printed when the cycle does not finish).
SESSIONS = """
SELECT application_name, state, wait_event_type, wait_event, now() - xact_start, left(query, 120)
FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
"""
PENDING = """
SELECT id, claimed_by, lease_until - now(), attempts, stats FROM notifier.diff_units
WHERE status = 'pending' ORDER BY id
"""
ADD_WEBHOOK = "INSERT INTO notifier.webhook_configs (user_id, url, secret) VALUES (%s, %s, %s)"
# Uses outbox's primary key only through a full scan: a few hundred rows.
OUTBOX = """
SELECT o.status, o.event_id::text, o.user_id::text
FROM notifier.outbox o
"""


async def _sse(url: str, user: uuid.UUID, frames: list[dict[str, Any]], opened: list[int]) -> None:
    """Follow the user's stream like an EventSource: reconnect when it ends, record frames."""
    headers = {"Authorization": f"Bearer {token(user, exp_in=3600)}"}
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client:
        while True:
            try:
                async with client.stream(
                    "GET", f"{url}/api/notifications/stream", headers=headers
                ) as r:
                    if r.status_code != 200:
                        await asyncio.sleep(0.5)
                        continue
                    opened.append(len(frames))
                    event = ""
                    async for line in r.aiter_lines():
                        if line.startswith("event: "):
                            event = line[7:]
                        elif line.startswith("data: "):
                            frames.append({"event": event, "data": json.loads(line[6:])})
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)


def _v2_units_done(pg_url: str) -> int:
    rows = q(
        pg_url,
        "SELECT count(*) FROM notifier.diff_units WHERE version = 'v2' AND status = 'done'",
    )
    return int(rows[0][0])


async def _marker_seen(
    client: httpx.AsyncClient, user: uuid.UUID, frames: list[dict[str, Any]]
) -> int:
    """Create notifications for `user` (service route) until one shows on the open stream."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 90
    sent = 0
    while loop.time() < deadline:
        marker = f"marker-{sent}"
        r = await client.post(
            "/internal/events",
            headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
            json={"user_ids": [str(user)], "event": "restart_check", "entity_type": "test",
                  "entity_id": marker, "entity_name": marker, "idempotency_key": marker},
        )  # fmt: skip
        assert r.status_code == 202, r.text
        sent += 1
        for _ in range(40):
            if any(
                f["event"] == "notification" and f["data"]["entity_id"] == marker for f in frames
            ):
                return sent
            await asyncio.sleep(0.05)
    raise AssertionError("no notification reached the SSE stream after the restart")


async def test_postgres_restart_under_router_delivery_and_api(
    private_pg: services.PostgresService,
    private_pg_url: str,
    rabbit_server: services.RabbitService,
    graph_server: services.GraphService,
    graph_db: str,
    graph_driver: AsyncDriver,
    exchange_name: str,
    publish: Publish,
    role_procs: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    pg_url = private_pg_url
    users = [uuid.uuid4() for _ in range(USERS)]

    await add_releases(graph_driver, graph_db, 10_000, ARTISTS)
    with receiver(lambda _: Plan(hang=0.02)) as hook:
        for u in users:
            q(pg_url, ADD_WATCHES, u, ARTISTS)
            q(pg_url, ADD_WEBHOOK, u, f"{hook.url}/{u}", SECRET)

        env = env_for(
            private_pg, pg_url, rabbit_server, graph_server, graph_db, exchange_name,
            NOTIFIER_SERVICE_TOKEN=SERVICE_TOKEN, NOTIFIER_API_RATE_LIMIT="0",
        )  # fmt: skip
        ports = {role: services.free_port() for role in ("router", "delivery", "api")}
        knobs = {
            "router": dict(NOTIFIER_ROUTER_POLL_SECONDS="0.05", NOTIFIER_ROUTER_LEASE_SECONDS="3",
                           NOTIFIER_ROUTER_UNIT_SIZE=str(UNIT_SIZE), NOTIFIER_ROUTER_WORKERS="2"),
            "delivery": dict(NOTIFIER_DELIVERY_TIMEOUT="2", NOTIFIER_DELIVERY_LEASE_SECONDS="6",
                             NOTIFIER_DELIVERY_POLL_SECONDS="0.1", NOTIFIER_DELIVERY_BATCH="8",
                             NOTIFIER_DELIVERY_CONCURRENCY="4"),
            "api": {},
        }  # fmt: skip
        for role, port in ports.items():
            role_procs.append(
                start_role(role, env, tmp_path / f"{role}.log", NOTIFIER_PORT=str(port),
                           NOTIFIER_REPLICA=role, **knobs[role])
            )  # fmt: skip
        health = HealthWatch(ports)
        health.start()
        api_url = f"http://127.0.0.1:{ports['api']}"
        frames: list[dict[str, Any]] = []
        opened: list[int] = []
        sse: asyncio.Task[None] | None = None
        try:
            await health.until(200)
            await signal_all(publish, "v1")  # the baseline cycle: no events
            await cycle_done(pg_url, "v1")
            sse = asyncio.create_task(_sse(api_url, users[0], frames, opened))
            await wait_until(lambda: bool(opened), 30, "the SSE stream to open")
            await add_releases(graph_driver, graph_db, 20_000, ARTISTS)
            await signal_all(publish, "v2")
            await wait_until(
                lambda: _v2_units_done(pg_url) >= STOP_AT_UNITS and len(hook.requests) > 0,
                90, "the v2 cycle and its deliveries to be under way",
            )  # fmt: skip
            units_before = _v2_units_done(pg_url)
            received_before = len(hook.requests)
            running = q(pg_url, "SELECT status FROM notifier.cycles WHERE version = 'v2'")

            await asyncio.to_thread(services.pg_ctl, private_pg, "stop")
            await health.until(503)
            received_down = len(hook.requests)
            await asyncio.to_thread(services.pg_ctl, private_pg, "start")
            ((restarted_at,),) = q(pg_url, "SELECT now()")
            await health.until(200)

            try:
                stats = await cycle_done(pg_url, "v2", limit=180)
            except AssertionError:
                print("\nstuck; sessions:", *q(pg_url, SESSIONS), sep="\n")
                print("pending units:", *q(pg_url, PENDING), sep="\n")
                raise
            async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:
                markers = await _marker_seen(client, users[0], frames)
                await wait_until(
                    lambda: all(s == "delivered" for s, _, _ in q(pg_url, OUTBOX)),
                    180, "every outbox row delivered",
                )  # fmt: skip
                auth = {"Authorization": f"Bearer {token(users[0])}"}
                page = await client.get("/api/notifications?limit=100", headers=auth)
                unread = await client.get("/api/notifications/unread-count", headers=auth)
        finally:
            await health.stop()
            if sse is not None:
                sse.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sse
        requests = list(hook.requests)

    feed_rows = q(
        pg_url,
        "SELECT count(*), count(DISTINCT (n.user_id, n.event_id)) FROM notifier.notification_events"
        " n JOIN notifier.events e ON e.id = n.event_id WHERE e.version = 'v2'",
    )[0]
    outbox = q(pg_url, OUTBOX)
    ((units_after, retried),) = q(
        pg_url,
        "SELECT count(*) FILTER (WHERE finished_at > %s), count(*) FILTER (WHERE attempts > 1)"
        " FROM notifier.diff_units WHERE version = 'v2'",
        restarted_at,
    )
    expected_deliveries = {(f"/hook/{u}", e) for _, e, u in outbox}
    copies: collections.Counter[tuple[str, str]] = collections.Counter()
    mismatched = 0
    for r in requests:
        body = json.loads(r.body)
        event_id = body["event_id"]
        copies[(r.path, event_id)] += 1
        mismatched += r.headers["webhook-id"] != body["id"]
    duplicated = sum(n - 1 for n in copies.values())
    lost = expected_deliveries - set(copies)
    print(
        f"\npostgres restart: cycle v2 {units_before} of {ARTISTS // UNIT_SIZE} units done and "
        f"{received_before} deliveries received at the stop ({received_down} when all roles "
        f"were 503), {units_after} units finished after the restart ({retried} claimed more "
        f"than once); events {len(events(pg_url, 'v2'))}/{ARTISTS}, feed rows {feed_rows[0]}"
        f"/{USERS * ARTISTS}, outbox rows {len(outbox)} ({USERS * ARTISTS} from the cycle + "
        f"{markers} SSE markers); deliveries sent {len(expected_deliveries)}, received "
        f"{len(requests)} ({len(copies)} distinct), duplicated {duplicated}, lost {len(lost)}; "
        f"SSE streams opened {len(opened)}, frames {len(frames)}; health transitions "
        f"{health.transitions} over {health.polls} polls; cycle stats {stats}"
    )
    assert running == [("running",)], "the cycle was not mid-way when PostgreSQL stopped"
    assert units_after > 0, "the cycle finished before PostgreSQL stopped"
    for role in ports:
        assert health.went_down_and_up(role), (role, health.transitions[role])
    assert events(pg_url, "v2") == new_release_events(20_000, ARTISTS)
    assert "failed_units" not in stats
    assert feed_rows == (USERS * ARTISTS, USERS * ARTISTS)
    assert len(outbox) == USERS * ARTISTS + markers
    assert {s for s, _, _ in outbox} == {"delivered"}
    assert not lost and set(copies) == expected_deliveries
    assert mismatched == 0
    assert page.status_code == 200 and len(page.json()["items"]) == 100
    assert unread.status_code == 200 and unread.json() == {"count": ARTISTS + markers}
    assert q(pg_url, "SELECT count(*) FROM notifier.events WHERE fanned_out_at IS NULL") == [(0,)]
    for p in role_procs:
        assert p.poll() is None, "a role exited: it should have survived the restart"


class _LosesOneCancellation(AsyncConnectionPool):
    """A real pool whose first wait for a connection swallows a cancellation.

    As Python 3.11's `asyncio.wait_for` (used by psycopg_pool) does when the
    connection arrives just as the task is cancelled: seen as PostgreSQL
    comes back after a restart.
    """

    lost = 0
    waiting = asyncio.Event()

    @contextlib.asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[Any]:  # noqa: ASYNC109
        if not self.lost:
            self.waiting.set()
            try:
                await asyncio.sleep(5)  # cancelled here by the test
            except asyncio.CancelledError:
                self.lost += 1
        async with super().connection(timeout) as conn:
            yield conn


async def test_lease_keeper_stops_even_when_its_cancellation_is_lost(
    router_env: dict[str, str], pg_url: str
) -> None:
    settings = config.load(dict(router_env, NOTIFIER_ROUTER_LEASE_SECONDS="1"), "router")
    q(pg_url, "INSERT INTO notifier.cycles (version, required_services, status)"
              " VALUES ('vk', '{}', 'running')")  # fmt: skip
    ((unit,),) = q(
        pg_url,
        "INSERT INTO notifier.diff_units (version, entity_type, seq, entity_ids, claimed_by,"
        " lease_until) VALUES ('vk', 'artist', 1, '{1}', 'me', now() + interval '1 second')"
        " RETURNING id",
    )
    router = Router(settings)
    pool = _LosesOneCancellation(pg_url, min_size=1, max_size=2, open=False,
                                 kwargs={"autocommit": True})  # fmt: skip
    await pool.open(wait=True)
    router.pool = pool
    try:
        pool.waiting = asyncio.Event()
        keeper = asyncio.create_task(router._keep_lease(unit, "me"))
        await asyncio.wait_for(pool.waiting.wait(), 30)
        keeper.cancel()
        await wait_until(keeper.done, 10, "the keeper to stop after its cancellation")
    finally:
        await pool.close()
    print(f"\nlease keeper: cancellations lost {pool.lost}, stopped {keeper.done()}")
    assert pool.lost == 1
