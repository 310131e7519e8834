"""Prometheus metrics of the API: requests per route, latency, outbox depth, streams."""

from __future__ import annotations

import asyncio
import logging
import time

import psycopg
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from notifier.api.context import ctx
from notifier.lifecycle import metrics_response

log = logging.getLogger(__name__)

# The outbox depth on /metrics is at most this old.
REFRESH_SECONDS = 2.0
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Streams last as long as the client stays; their duration is not a latency.
_NO_LATENCY = {"/api/notifications/stream"}
# Any other method is counted as OTHER: a client inventing methods must not
# create a metric series per invention.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# Index: outbox_due_idx (next_attempt_at) WHERE status = 'pending' (index-only).
OUTBOX_DEPTH = """
SELECT count(*), count(*) FILTER (WHERE next_attempt_at <= now())
FROM notifier.outbox WHERE status = 'pending'
"""


class Metrics:
    """The API's collectors, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "notifier_http_requests", "HTTP requests answered, by route and status.",
            ["method", "route", "status"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "notifier_http_request_duration_seconds", "HTTP request latency by route.",
            ["method", "route"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.outbox_pending = Gauge(
            "notifier_outbox_pending", "Outbox rows waiting to be delivered.",
            registry=self.registry,
        )  # fmt: skip
        self.outbox_due = Gauge(
            "notifier_outbox_due", "Pending outbox rows already due.", registry=self.registry
        )
        self.sse_clients = Gauge(
            "notifier_sse_clients", "Open SSE streams on this replica.", registry=self.registry
        )
        self.refreshed_at = float("-inf")
        self._refreshing = asyncio.Lock()

    async def refresh(self, pool: AsyncConnectionPool) -> None:
        """Read the outbox depth (left unchanged when the database is down).

        At most once per REFRESH_SECONDS, one read at a time: /metrics needs
        no credentials, and a flood of scrapes must not reach the database.
        """
        if time.monotonic() - self.refreshed_at < REFRESH_SECONDS:
            return
        async with self._refreshing:
            if time.monotonic() - self.refreshed_at >= REFRESH_SECONDS:
                self.refreshed_at = time.monotonic()
                await self._read_depth(pool)

    async def _read_depth(self, pool: AsyncConnectionPool) -> None:
        try:
            async with pool.connection(timeout=2.0) as conn:
                row = await (await conn.execute(OUTBOX_DEPTH)).fetchone()
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("metrics: outbox depth unavailable", extra={"error": type(exc).__name__})
            return
        if row is not None:
            self.outbox_pending.set(row[0])
            self.outbox_due.set(row[1])


class MetricsMiddleware:
    """Counts and times every HTTP request under its route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "<unmatched>"
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "OTHER"
            self.metrics.requests.labels(method, path, str(status)).inc()
            if path not in _NO_LATENCY:
                self.metrics.latency.labels(method, path).observe(time.perf_counter() - start)


async def metrics_endpoint(request: Request) -> Response:
    """GET /metrics: Prometheus text."""
    c = ctx(request)
    await c.metrics.refresh(c.pool)
    # The process-wide registry too: process metrics, and under `notifier all`
    # the router's and delivery's collectors.
    return metrics_response(c.metrics.registry, REGISTRY)
