"""The graph latch trigger (contract §3a): ExtractionCompletion nodes fire cycles.

Latches are written with graphinator's own statement (GraphBuilder.latch).
Routers run in this process, polling every 50 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from neo4j import AsyncDriver

from notifier import config, latch
from notifier.devkit import services
from notifier.devkit.graphbuilder import GraphBuilder
from notifier.router import Router
from tests.router.conftest import Publish, completion, cycle_done, events, q, wait_until, watch

ALL = ["artists", "labels", "masters", "releases"]


async def write_latch(
    driver: AsyncDriver, database: str, version: str, signals: Sequence[str]
) -> None:
    """What graphinator writes after flushing each data type of `version`."""
    await GraphBuilder.latch(driver, database, version, signals)


def latch_env(router_env: dict[str, str], trigger: str = "graph", **extra: str) -> dict[str, str]:
    """A router environment with the graph trigger polling every 50 ms."""
    return {
        **router_env,
        "NOTIFIER_TRIGGER": trigger,
        "NOTIFIER_GRAPH_POLL_SECONDS": "0.05",
        **extra,
    }


@contextlib.asynccontextmanager
async def running(env: dict[str, str], *, serve_http: bool = False) -> AsyncIterator[Router]:
    """A router in this process for the block; it must stop cleanly (exit 0)."""
    r = Router(config.load(env, "router"))
    task = asyncio.create_task(r.run(serve_http=serve_http))
    ready = asyncio.create_task(r.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
    assert ready in done, "router did not start"
    try:
        yield r
    finally:
        r.stop.set()
        assert await asyncio.wait_for(task, 60) == 0


def cycles_of(pg_url: str) -> list[tuple[Any, ...]]:
    """(version, fired_by, fired?) of every cycle row, by version."""
    return q(
        pg_url,
        "SELECT version, fired_by, fired_at IS NOT NULL FROM notifier.cycles ORDER BY version",
    )


def release_units(pg_url: str) -> list[tuple[Any, ...]]:
    """(version, count) of 'releases' units: exactly one per fired cycle."""
    return q(
        pg_url,
        "SELECT version, count(*) FROM notifier.diff_units WHERE entity_type = 'releases'"
        " GROUP BY version ORDER BY version",
    )


# --------------------------------------------------------------------------- pure selection


def test_parse_keeps_well_formed_latches_and_counts_the_rest() -> None:
    at = datetime(2026, 3, 5, 14, 0, tzinfo=UTC)
    rows = [
        {"version": "20260301", "signals": ALL, "updated_at": at},
        {"version": "20260201", "signals": ["artists"], "updated_at": None},
        {"version": 20260401, "signals": ALL},  # not a string
        {"version": "20260501", "signals": "artists,labels"},  # not a list
        {"version": "20260601", "signals": ["artists", 7]},  # not all strings
        {"version": "unknown", "signals": ALL},  # graphinator's version-less latch
        {"version": "bad version!", "signals": ALL},
        {"version": None, "signals": None},
    ]
    latches, bad = latch.parse(rows)
    assert bad == 6
    assert latches == [
        latch.Latch("20260301", frozenset(ALL), at),
        latch.Latch("20260201", frozenset({"artists"}), None),
    ]


def test_newest_complete_is_the_newest_version_holding_every_required_type() -> None:
    latches = [
        latch.Latch("20260101", frozenset(ALL), None),
        latch.Latch("20260201", frozenset([*ALL, "extra"]), None),  # extra signals are fine
        latch.Latch("20260301", frozenset(ALL[:3]), None),  # releases still importing
    ]
    newest = latch.newest_complete(latches, ALL)
    assert newest is not None and newest.version == "20260201"
    assert latch.newest_complete(latches, ["artists"]) == latches[2]
    assert latch.newest_complete(latches, [*ALL, "images"]) is None
    assert latch.newest_complete([], ALL) is None


# --------------------------------------------------------------------------- one router


async def test_a_complete_latch_fires_once_and_an_incomplete_one_never(
    router_env: dict[str, str], pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:
    watch(pg_url, uuid.uuid4(), "artist", "1")
    async with running(latch_env(router_env)) as router:
        for signals in (["artists"], ["artists", "labels"], ALL[:3]):
            await write_latch(graph_driver, graph_db, "20260301", signals)
            await asyncio.sleep(0.3)  # several polls
            assert cycles_of(pg_url) == []
        assert router.latch_error is None
        await write_latch(graph_driver, graph_db, "20260301", ALL)
        await cycle_done(pg_url, "20260301")
        # Rewritten (graphinator re-sets the signals on a redelivery), polled again.
        await write_latch(graph_driver, graph_db, "20260301", ALL)
        await asyncio.sleep(0.3)
    assert cycles_of(pg_url) == [("20260301", "graph", True)]
    assert release_units(pg_url) == [("20260301", 1)]
    signal = q(pg_url, "SELECT source, service, message FROM notifier.cycle_signals")
    assert signal == [("graph", "ExtractionCompletion", {"version": "20260301", "signals": ALL})]


async def test_first_start_fires_only_the_newest_complete_version_then_never_an_older_one(
    router_env: dict[str, str], pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:
    await write_latch(graph_driver, graph_db, "20260101", ALL)
    await write_latch(graph_driver, graph_db, "20260201", ALL)
    await write_latch(graph_driver, graph_db, "20260301", ["artists", "labels"])
    await write_latch(graph_driver, graph_db, "unknown", ALL)  # sorts last; never fires
    async with running(latch_env(router_env)):
        await cycle_done(pg_url, "20260201")
        await asyncio.sleep(0.3)
        assert cycles_of(pg_url) == [("20260201", "graph", True)]  # the baseline only
        # A latch for an older dump appears late: it never fires.
        await write_latch(graph_driver, graph_db, "20251201", ALL)
        await asyncio.sleep(0.3)
        assert cycles_of(pg_url) == [("20260201", "graph", True)]
        # The next dump completes: it fires, with the baseline as its previous cycle.
        await write_latch(graph_driver, graph_db, "20260301", ALL)
        await cycle_done(pg_url, "20260301")
    assert cycles_of(pg_url) == [("20260201", "graph", True), ("20260301", "graph", True)]
    assert q(pg_url, "SELECT previous_version FROM notifier.cycles WHERE version = '20260301'") == [
        ("20260201",)
    ]


async def test_graph_only_needs_no_broker_and_fires_the_diff(
    router_env: dict[str, str], pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:
    user = uuid.uuid4()
    watch(pg_url, user, "artist", "1")
    await (
        GraphBuilder()
        .artist("1", "Alice Coltrane")
        .release("10", artists=["1"])
        .write(graph_driver, graph_db)
    )
    # The broker is unreachable: a graph-only router never connects to it.
    env = latch_env(router_env, RABBITMQ_HOST="127.0.0.1", RABBITMQ_PORT=str(services.free_port()))
    async with running(env) as router:
        assert router.amqp is None
        await write_latch(graph_driver, graph_db, "20260201", ALL)
        await cycle_done(pg_url, "20260201")
        await (
            GraphBuilder()
            .release("11", "Journey in Satchidananda", artists=["1"])
            .write(graph_driver, graph_db)
        )
        await write_latch(graph_driver, graph_db, "20260301", ALL)
        await cycle_done(pg_url, "20260301")
    assert [(e, t, i, d["release_ids"]) for e, t, i, d in events(pg_url, "20260301")] == [
        ("new_releases", "artist", "1", ["11"])
    ]


async def test_custom_signals_decide_completeness(
    router_env: dict[str, str], pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:
    async with running(latch_env(router_env, NOTIFIER_GRAPH_SIGNALS="releases")):
        await write_latch(graph_driver, graph_db, "20260301", ["artists"])
        await asyncio.sleep(0.3)
        assert cycles_of(pg_url) == []
        await write_latch(graph_driver, graph_db, "20260301", ["artists", "releases"])
        await cycle_done(pg_url, "20260301")


# --------------------------------------------------------------------------- several routers


async def test_two_routers_polling_fire_each_version_once(
    router_env: dict[str, str], pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:
    for n in range(20):
        watch(pg_url, uuid.uuid4(), "artist", str(n))
    env = latch_env(router_env, NOTIFIER_GRAPH_POLL_SECONDS="0.01")
    async with running(env), running(env):
        for version in ("20260101", "20260201", "20260301"):
            await write_latch(graph_driver, graph_db, version, ALL)
            await cycle_done(pg_url, version)
            await asyncio.sleep(0.2)  # both keep polling the same complete latch
    assert cycles_of(pg_url) == [
        ("20260101", "graph", True),
        ("20260201", "graph", True),
        ("20260301", "graph", True),
    ]
    assert release_units(pg_url) == [("20260101", 1), ("20260201", 1), ("20260301", 1)]
    assert q(pg_url, "SELECT count(*) FROM notifier.cycle_signals") == [(3,)]


async def test_amqp_and_graph_together_fire_each_version_once_whoever_is_first(
    router_env: dict[str, str],
    pg_url: str,
    publish: Publish,
    graph_driver: AsyncDriver,
    graph_db: str,
) -> None:
    env = latch_env(router_env, trigger="amqp,graph")
    async with running(env) as router, running(env):
        assert router.amqp is not None
        # Messages first: both services signal, the cycle fires; the latch comes after.
        await publish(completion("graphinator", "20260201"))
        await publish(completion("tableinator", "20260201"))
        await cycle_done(pg_url, "20260201")
        await write_latch(graph_driver, graph_db, "20260201", ALL)
        await asyncio.sleep(0.3)
        # The latch first, then one message, then the other: fired by the latch alone.
        await write_latch(graph_driver, graph_db, "20260301", ALL)
        await cycle_done(pg_url, "20260301")
        await publish(completion("graphinator", "20260301"))
        await publish(completion("tableinator", "20260301"))
        await wait_until(
            lambda: q(pg_url, "SELECT count(*) FROM notifier.cycle_signals") == [(5,)],
            what="the late messages recorded",
        )
        await asyncio.sleep(0.3)
    assert cycles_of(pg_url) == [("20260201", "amqp", True), ("20260301", "graph", True)]
    assert release_units(pg_url) == [("20260201", 1), ("20260301", 1)]
    # A message naming the latch's service is a message: it cannot fire a version alone.
    assert q(
        pg_url,
        "SELECT source, service FROM notifier.cycle_signals ORDER BY version, source, service",
    ) == [
        ("amqp", "graphinator"),
        ("amqp", "tableinator"),
        ("amqp", "graphinator"),
        ("amqp", "tableinator"),
        ("graph", "ExtractionCompletion"),
    ]


async def test_a_message_named_like_the_latch_does_not_fire(
    router_env: dict[str, str],
    pg_url: str,
    publish: Publish,
    graph_driver: AsyncDriver,
    graph_db: str,
) -> None:
    async with running(latch_env(router_env, trigger="amqp,graph")):
        await publish(completion("ExtractionCompletion", "20260301"))
        await wait_until(
            lambda: q(pg_url, "SELECT count(*) FROM notifier.cycle_signals") == [(1,)],
            what="the message recorded",
        )
        await asyncio.sleep(0.3)
        assert cycles_of(pg_url) == [("20260301", None, False)]
        await write_latch(graph_driver, graph_db, "20260301", ALL)
        await cycle_done(pg_url, "20260301")
    assert cycles_of(pg_url) == [("20260301", "graph", True)]


# --------------------------------------------------------------------------- the graph down or slow


class Gate:
    """A TCP forwarder to the graph that can refuse, stall (accept, never answer) or pass."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.mode = target, "refuse"
        self.port = services.free_port()
        self.server: asyncio.AbstractServer | None = None
        self.held: list[asyncio.StreamWriter] = []

    async def set(self, mode: str) -> None:
        """`refuse` (nothing listens), `stall` or `pass`."""
        self.mode = mode
        if mode == "refuse" and self.server is not None:
            self.server.close()
            for w in self.held:
                w.close()
            self.held.clear()
            self.server = None
        elif mode != "refuse" and self.server is None:
            self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.held.append(writer)
        if self.mode == "stall":
            return  # held open, never answered
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.held.append(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def close(self) -> None:
        """Stop forwarding and drop every connection."""
        await self.set("refuse")


async def health(port: int) -> tuple[int, dict[str, Any]]:
    """The router's /health."""
    async with httpx.AsyncClient() as client:
        r = await client.get(f"http://127.0.0.1:{port}/health", timeout=5)
    return r.status_code, r.json()


@pytest.mark.timeout(180)
async def test_graph_down_or_slow_is_503_and_retried_never_a_crash_or_a_double_fire(
    router_env: dict[str, str],
    pg_url: str,
    graph_server: services.GraphService,
    graph_driver: AsyncDriver,
    graph_db: str,
) -> None:
    gate = Gate((graph_server.host, graph_server.port))
    port = services.free_port()
    env = latch_env(
        router_env, NEO4J_HOST="127.0.0.1", NEO4J_PORT=str(gate.port), NOTIFIER_PORT=str(port)
    )
    await write_latch(graph_driver, graph_db, "20260201", ALL)
    try:
        async with running(env, serve_http=True) as router:
            await wait_until(lambda: router.latch_error is not None, 30, "the refused read")
            status, body = await health(port)
            assert status == 503 and body["checks"]["graph"] != "ok"
            assert body["checks"]["postgres"] == "ok" and "rabbitmq" not in body["checks"]
            assert cycles_of(pg_url) == []
            # Up again: the next poll fires the version.
            await gate.set("pass")
            await cycle_done(pg_url, "20260201")
            assert (await health(port))[0] == 200
            # Slow: a server that accepts and never answers; the read is abandoned.
            await gate.set("refuse")
            await gate.set("stall")
            await write_latch(graph_driver, graph_db, "20260301", ALL)
            await wait_until(lambda: router.latch_error is not None, 60, "the stalled read")
            status, body = await health(port)
            assert status == 503 and body["checks"]["graph"] != "ok"
            assert q(pg_url, "SELECT version FROM notifier.cycles ORDER BY version") == [
                ("20260201",)
            ]
            await gate.set("refuse")
            await gate.set("pass")
            await cycle_done(pg_url, "20260301")
            await wait_until(lambda: router.latch_error is None, 30, "the latch readable")
            assert (await health(port))[0] == 200
    finally:
        await gate.close()
    assert cycles_of(pg_url) == [("20260201", "graph", True), ("20260301", "graph", True)]
    assert release_units(pg_url) == [("20260201", 1), ("20260301", 1)]
