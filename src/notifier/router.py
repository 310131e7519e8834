"""`notifier router`: completion signals in, cycles out (contract §3, §3a; design "The flow" 1-3).

Up to three loops in one process:
- the consumer (`amqp` in NOTIFIER_TRIGGER): a durable queue
  `notifier.<exchange>` bound to the fanout completion exchange; each message
  is validated (msgspec), recorded in PostgreSQL, and acked only after that
  commit. A malformed message is rejected without requeue, which the queue's
  dead-letter exchange routes to `notifier.<exchange>.dead`; the router keeps
  running.
- the latch poller (`graph` in NOTIFIER_TRIGGER): reads the graph's
  ExtractionCompletion nodes every NOTIFIER_GRAPH_POLL_SECONDS and records the
  newest complete version (notifier.latch, cycles.record_latch).
- the worker: claims diff units of the oldest running cycle
  (notifier.cycles), runs them (notifier.units), and marks a cycle done when
  its last unit is. Every replica runs both loops.

`GET /health` and `GET /metrics` are served on NOTIFIER_PORT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
from datetime import datetime
from typing import Annotated, Any, Literal

import aio_pika
import msgspec
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from neo4j import AsyncDriver, AsyncGraphDatabase
from prometheus_client import (
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
)
from psycopg_pool import AsyncConnectionPool

from notifier import cycles, db, latch, lifecycle
from notifier.config import Settings
from notifier.graph import Graph
from notifier.releases import Stopping
from notifier.units import Ahead, Pipeline, UnitRunner

log = logging.getLogger(__name__)

# A completion message is a few hundred bytes; anything this big is not one.
MAX_MESSAGE_BYTES = 64 * 1024
VERSION_PATTERN = cycles.VERSION_PATTERN

# The process-wide registry: under `notifier all` the API's /metrics shows it.
MESSAGES = Counter(
    "notifier_router_messages", "Completion messages by outcome", ["outcome"], registry=REGISTRY
)
UNITS = Counter("notifier_router_units", "Diff units by outcome", ["outcome"], registry=REGISTRY)
EVENTS = Counter("notifier_router_events", "Events written by the router", registry=REGISTRY)
FEED_ROWS = Counter("notifier_router_feed_rows", "Feed rows written", registry=REGISTRY)
OUTBOX_ROWS = Counter("notifier_router_outbox_rows", "Outbox rows written", registry=REGISTRY)
CYCLES_DONE = Counter("notifier_router_cycles_done", "Cycles finished", registry=REGISTRY)
CYCLE_SECONDS = Histogram(
    "notifier_router_cycle_seconds", "Cycle duration, from firing to done",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600), registry=REGISTRY,
)  # fmt: skip
BUSY = Gauge("notifier_router_busy", "Units being processed now", registry=REGISTRY)
LATCH_READS = Counter(
    "notifier_router_latch_reads", "Graph latch reads by outcome", ["outcome"], registry=REGISTRY
)


Service = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")]
Version = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=VERSION_PATTERN)]


class CompletionMessage(msgspec.Struct):
    """Contract §3; unknown fields are ignored."""

    type: Literal["import_completed"]
    service: Service
    version: Version
    completed_at: datetime | None = None


class BadMessage(ValueError):
    """A completion message that cannot be used; `str()` says why."""


_decoder = msgspec.json.Decoder(CompletionMessage)


def decode_message(body: bytes) -> CompletionMessage:
    """Validate one completion message body, or raise BadMessage with the reason."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise BadMessage(f"message of {len(body)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        return _decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # non-UTF-8 strings raise the latter
        raise BadMessage(str(exc)[:300]) from None


def amqp_url(s: Settings) -> str:
    """The AMQP URL of the configured broker (credentials quoted; never logged)."""
    user = urllib.parse.quote(s.rabbitmq_username, safe="")
    password = urllib.parse.quote(s.rabbitmq_password, safe="")
    vhost = urllib.parse.quote(s.rabbitmq_vhost, safe="")
    return f"amqp://{user}:{password}@{s.rabbitmq_host}:{s.rabbitmq_port}/{vhost}"


def queue_names(exchange: str) -> tuple[str, str, str]:
    """(queue, dead-letter exchange, dead-letter queue) for a completion exchange."""
    return f"notifier.{exchange}", f"notifier.{exchange}.dlx", f"notifier.{exchange}.dead"


class Router:
    """One router replica: consumer, unit worker, health endpoint."""

    def __init__(self, settings: Settings, stop: asyncio.Event | None = None) -> None:
        self.settings = settings
        self.me = cycles.claim_token(settings.replica)
        self.stop = stop or asyncio.Event()
        self.wake = asyncio.Event()
        self.ready = asyncio.Event()  # set once the queue is consumed
        self.pool: AsyncConnectionPool | None = None
        self.driver: AsyncDriver | None = None
        self.amqp: AbstractRobustConnection | None = None
        # The last latch read's failure (None: it worked, or no graph trigger).
        self.latch_error: str | None = None

    async def run(self, *, serve_http: bool = True) -> int:
        """Run until `stop` is set (SIGTERM); return the exit code."""
        s = self.settings
        self.pool = db.pool(db.conninfo_for(s, "router"), min_size=1, max_size=s.router_workers + 3)
        await self.pool.open(wait=True, timeout=30)
        self.driver = AsyncGraphDatabase.driver(
            s.neo4j_uri, auth=(s.neo4j_username, s.neo4j_password)
        )
        http = lifecycle.OpsServer(self._health, s.port) if serve_http else None
        try:
            queue: aio_pika.abc.AbstractQueue | None = None
            tag = ""
            if "amqp" in s.trigger:
                self.amqp = await aio_pika.connect_robust(amqp_url(s))
                queue = await self._declare(self.amqp)
                tag = await queue.consume(self._on_message)
            if http is not None:
                http.start()
            log.info(
                "router started",
                extra={"trigger": ",".join(s.trigger), "claim": self.me,
                       "queue": queue.name if queue is not None else None},
            )  # fmt: skip
            self.ready.set()
            # Several workers per process overlap graph and database waits; each
            # has its own claim token, as if it were a replica of its own.
            loops = [self._work(f"{self.me}.{n}") for n in range(s.router_workers)]
            if "graph" in s.trigger:
                loops.append(self._poll_latch())
            await asyncio.gather(*loops)
            if queue is not None:
                await queue.cancel(tag)
            return 0
        finally:
            if http is not None:
                await http.close()
            if self.amqp is not None:
                await self.amqp.close()
            await self.driver.close()
            await self.pool.close()

    async def _declare(self, conn: AbstractRobustConnection) -> aio_pika.abc.AbstractQueue:
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=self.settings.router_prefetch)
        queue_name, dlx_name, dlq_name = queue_names(self.settings.completion_exchange)
        exchange = await channel.declare_exchange(
            self.settings.completion_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        dlx = await channel.declare_exchange(dlx_name, aio_pika.ExchangeType.FANOUT, durable=True)
        dlq = await channel.declare_queue(dlq_name, durable=True)
        await dlq.bind(dlx)
        queue = await channel.declare_queue(
            queue_name, durable=True, arguments={"x-dead-letter-exchange": dlx_name}
        )
        await queue.bind(exchange)
        return queue

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            msg = decode_message(message.body)
        except BadMessage as exc:
            log.warning(
                "malformed completion message dead-lettered",
                extra={"reason": str(exc), "bytes": len(message.body)},
            )
            MESSAGES.labels("dead_lettered").inc()
            await message.reject(requeue=False)
            return
        assert self.pool is not None
        try:
            # Only the validated fields are kept: unknown ones may hold anything
            # (a \u0000 that jsonb refuses would otherwise requeue for ever).
            recorded = msgspec.to_builtins(msg)
            async with self.pool.connection() as conn:
                fired = await cycles.record_signal(
                    conn,
                    version=msg.version,
                    service=msg.service,
                    completed_at=msg.completed_at,
                    message=recorded,
                    required=self.settings.required_services,
                    unit_size=self.settings.router_unit_size,
                )
        except Exception:
            log.exception("could not record a completion signal; requeued")
            MESSAGES.labels("requeued").inc()
            await asyncio.sleep(1)
            await message.nack(requeue=True)
            return
        await message.ack()
        MESSAGES.labels("recorded").inc()
        if msg.service not in self.settings.required_services:
            log.info("signal from a service that is not required", extra={"service": msg.service})
        log.info(
            "completion signal recorded",
            extra={"version": msg.version, "service": msg.service, "fired": fired},
        )
        if fired:
            self.wake.set()

    async def _poll_latch(self) -> None:
        """Read the graph latch now and every NOTIFIER_GRAPH_POLL_SECONDS until stopped."""
        s = self.settings
        # A read slower than this is abandoned and retried at the next poll.
        timeout = min(max(s.graph_poll_seconds, 5.0), 30.0)
        while not self.stop.is_set():
            try:
                await asyncio.wait_for(self._check_latch(), timeout)
            except Exception as exc:
                error = "TimeoutError" if isinstance(exc, TimeoutError) else type(exc).__name__
                if self.latch_error is None:  # once per outage, not once per poll
                    log.warning(
                        "could not read the graph latch; retrying every %ss",
                        s.graph_poll_seconds, extra={"error": f"{error}: {exc}"[:300]},
                    )  # fmt: skip
                self.latch_error = error
                LATCH_READS.labels("failed").inc()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), s.graph_poll_seconds)

    async def _check_latch(self) -> None:
        """One latch read: record (and fire) the newest complete version, if any."""
        assert self.pool is not None and self.driver is not None
        s = self.settings
        latches, bad = await latch.read(self.driver, s.neo4j_database)
        if self.latch_error is not None:
            log.info("graph latch readable again")
            self.latch_error = None
        LATCH_READS.labels("ok").inc()
        if bad:
            log.warning("unusable ExtractionCompletion nodes ignored", extra={"count": bad})
        newest = latch.newest_complete(latches, s.graph_signals)
        if newest is None:
            return
        async with self.pool.connection() as conn:
            fired = await cycles.record_latch(
                conn, version=newest.version, completed_at=newest.updated_at,
                latch={"version": newest.version, "signals": sorted(newest.signals)},
                required=s.required_services, unit_size=s.router_unit_size,
            )  # fmt: skip
        if fired:
            log.info("graph latch complete: cycle fired", extra={"version": newest.version})
            self.wake.set()

    async def _work(self, me: str) -> None:
        """One worker: claim and run units (as `me`) until stopped.

        The next unit's graph read overlaps the current unit's transaction
        (units.Pipeline); units read ahead when stopping are given back.
        """
        assert self.pool is not None and self.driver is not None
        s = self.settings
        graph = Graph(self.driver, s.neo4j_database)
        runner = UnitRunner(self.pool, graph, me, email=s.smtp_enabled, batch=1000, stop=self.stop)
        pipeline = Pipeline(
            runner,
            lambda: self._claim(me),
            keeper=lambda unit: self._keep_lease(unit.id, me),
            stop=self.stop,
        )
        try:
            while not self.stop.is_set():
                current = await pipeline.next()
                if current is None:
                    await self._finish_cycles()
                    self.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._either(), s.router_poll_seconds)
                    continue
                await self._run_unit(runner, current, me)
        finally:
            for left in await pipeline.leftover():
                log.info("shutting down: diff unit given back", extra={"unit": left.unit.id})
                await self._give_back(left.unit, None, me)

    async def _claim(self, me: str) -> cycles.Unit | None:
        assert self.pool is not None
        try:
            async with self.pool.connection() as conn:
                return await cycles.claim(conn, me, self.settings.router_lease_seconds)
        except Exception:
            log.exception("could not claim a diff unit")
            return None

    async def _finish_cycles(self) -> None:
        assert self.pool is not None
        try:
            async with self.pool.connection() as conn:
                for done in await cycles.finish_cycles(conn):
                    CYCLES_DONE.inc()
                    CYCLE_SECONDS.observe(done.seconds)
                    log.info("cycle done", extra={"version": done.version, "seconds": done.seconds})
        except Exception:
            log.exception("could not finish the cycle (the next idle poll retries)")

    async def _either(self) -> None:
        waits = [asyncio.create_task(self.stop.wait()), asyncio.create_task(self.wake.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _run_unit(self, runner: UnitRunner, ahead: Ahead, me: str) -> None:
        assert self.pool is not None
        unit = ahead.unit
        started = time.monotonic()
        BUSY.inc()
        try:
            stats = await ahead.write(runner)
        except Stopping:
            log.info("shutting down: diff unit given back", extra={"unit": unit.id})
            await self._give_back(unit, None, me)
            return
        except Exception as exc:
            log.exception("diff unit failed", extra={"unit": unit.id, "attempts": unit.attempts})
            UNITS.labels("failed").inc()
            await self._give_back(unit, exc, me)
            return
        finally:
            ahead.close()
            BUSY.dec()
        if stats is None:
            UNITS.labels("lost").inc()
            log.warning("diff unit taken over by another router", extra={"unit": unit.id})
            return
        UNITS.labels("done").inc()
        EVENTS.inc(stats.get("events", 0))
        FEED_ROWS.inc(stats.get("feed_rows", 0))
        OUTBOX_ROWS.inc(stats.get("outbox_rows", 0))
        log.info(
            "diff unit done",
            extra={
                "unit": unit.id,
                "version": unit.version,
                "entity_type": unit.entity_type,
                "seconds": round(time.monotonic() - started, 3),
                "stats": stats,
            },
        )
        await self._finish_cycles()

    async def _give_back(self, unit: cycles.Unit, exc: BaseException | None, me: str) -> None:
        """Release a unit after a failure (with a backoff) or at shutdown (`exc` None)."""
        assert self.pool is not None
        error = "" if exc is None else f"{type(exc).__name__}: {exc}"[:500]
        try:
            async with self.pool.connection() as conn, conn.transaction():
                if exc is None:
                    await cycles.release(conn, unit.id, me, 0, {})
                elif unit.attempts >= cycles.MAX_ATTEMPTS:
                    if await cycles.lock_owned(conn, unit.id, me):
                        await cycles.mark_done(
                            conn, unit.id, {"failed_units": 1, "last_error": error}
                        )
                        log.error("diff unit abandoned", extra={"unit": unit.id, "error": error})
                else:
                    delay = min(2.0**unit.attempts, 300.0)
                    await cycles.release(conn, unit.id, me, delay, {"last_error": error})
        except Exception:
            log.exception("could not release a failed unit (its lease expires anyway)")

    async def _keep_lease(self, unit_id: int, me: str) -> None:
        """Renew a unit's lease until cancelled (the unit is over) or no longer ours.

        A cancellation can be lost inside the database client (Python 3.11's
        `asyncio.wait_for`, which psycopg_pool uses to wait for a connection,
        drops it when the result arrives at the same moment); this was seen
        after a PostgreSQL restart. A keeper still running renews the lease of
        its failed unit for ever and the cycle never finishes, so the task's
        pending cancellation is checked at every turn.
        """
        assert self.pool is not None
        lease = self.settings.router_lease_seconds
        task = asyncio.current_task()
        while task is None or not task.cancelling():
            await asyncio.sleep(max(lease / 3, 0.2))
            if task is not None and task.cancelling():
                return
            try:
                async with self.pool.connection() as conn:
                    if not await cycles.renew(conn, unit_id, me, lease):
                        return
            except Exception:
                log.exception("could not renew a unit lease")

    async def _health(self) -> tuple[bool, dict[str, Any]]:
        """This replica's health: PostgreSQL, and the broker or the latch it listens to."""
        checks: dict[str, str] = {}
        try:
            assert self.pool is not None
            async with self.pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
            checks["postgres"] = "ok"
        except Exception as exc:
            checks["postgres"] = type(exc).__name__
        # A robust connection is not `is_closed` while it reconnects (that is only
        # the final close); `connected` is cleared as soon as the broker goes away.
        if "amqp" in self.settings.trigger:
            amqp_ok = self.amqp is not None and self.amqp.connected.is_set()
            checks["rabbitmq"] = "ok" if amqp_ok else "disconnected"
        if "graph" in self.settings.trigger:
            checks["graph"] = self.latch_error or "ok"
        return all(v == "ok" for v in checks.values()), {"role": "router", "checks": checks}


def main(settings: Settings) -> int:
    """Entry point of `notifier router`: run until SIGTERM/SIGINT, then drain and exit 0."""
    return lifecycle.run("router", lambda stop: Router(settings, stop).run())
