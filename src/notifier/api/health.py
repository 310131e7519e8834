"""`/health` (PostgreSQL and the graph; 503 when one is down) and `/metrics`."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from notifier.api.context import Context, ctx
from notifier.api.metrics import metrics_endpoint
from notifier.api.routing import Endpoint, respond
from notifier.api.schemas import Health

CHECK_TIMEOUT_SECONDS = 3.0


async def _postgres(c: Context) -> None:
    async with c.pool.connection(timeout=CHECK_TIMEOUT_SECONDS) as conn:
        await conn.execute("SELECT 1")


async def _graph(c: Context) -> None:
    async with c.graph.session(database=c.settings.neo4j_database) as session:
        result = await session.run("RETURN 1 AS ok")
        await result.consume()


async def _check(name: str, c: Context) -> str:
    probe = _postgres if name == "postgres" else _graph
    try:
        await asyncio.wait_for(probe(c), CHECK_TIMEOUT_SECONDS)
    except Exception as exc:  # any failure is "down", with its kind for the operator
        return f"down: {type(exc).__name__}"
    return "ok"


async def health(request: Request) -> Response:
    """GET /health."""
    c = ctx(request)
    names = ("postgres", "graph")
    results = await asyncio.gather(*(_check(n, c) for n in names))
    checks = dict(zip(names, results, strict=True))
    healthy = all(v == "ok" for v in results)
    body = Health(status="healthy" if healthy else "unhealthy", checks=checks)
    return respond(body, 200 if healthy else 503)


ENDPOINTS = [
    Endpoint("GET", "/health", health, "Health of this replica and its dependencies",
             "operations", response=Health, auth="none", also=(503,)),
    Endpoint("GET", "/metrics", metrics_endpoint, "Prometheus metrics", "operations",
             auth="none", media_type="text/plain"),
]  # fmt: skip
