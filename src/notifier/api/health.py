"""The API's `/health` (PostgreSQL and the graph; 503 when one is down) and `/metrics`."""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import Response

from notifier.api.context import Context, ctx
from notifier.api.metrics import metrics_endpoint
from notifier.api.routing import Endpoint
from notifier.api.schemas import Health
from notifier.lifecycle import health_response

CHECK_TIMEOUT_SECONDS = 3.0
# /health needs no credentials: its answer is reused this long, and callers
# arriving meanwhile share one probe, so a flood of calls costs the databases
# (and the API's pool) at most one probe of each every two seconds.
HEALTH_CACHE_SECONDS = 2.0


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


class HealthCache:
    """The last probe's checks, reused for HEALTH_CACHE_SECONDS; one probe in flight at most."""

    def __init__(self) -> None:
        self.checks: dict[str, str] = {}
        self.at = float("-inf")
        self.probes = 0  # how many probes ran (tests read it)
        self._lock = asyncio.Lock()

    async def get(self, c: Context) -> dict[str, str]:
        """Fresh enough checks, probing PostgreSQL and the graph when they are stale."""
        if time.monotonic() - self.at < HEALTH_CACHE_SECONDS:
            return self.checks
        async with self._lock:
            if time.monotonic() - self.at >= HEALTH_CACHE_SECONDS:  # not refreshed meanwhile
                names = ("postgres", "graph")
                results = await asyncio.gather(*(_check(n, c) for n in names))
                self.checks = dict(zip(names, results, strict=True))
                self.at = time.monotonic()
                self.probes += 1
        return self.checks


def health_cache(request: Request) -> HealthCache:
    """The app's HealthCache (made on first use)."""
    state = request.app.state
    if not hasattr(state, "health_cache"):
        state.health_cache = HealthCache()
    cache: HealthCache = state.health_cache
    return cache


async def health(request: Request) -> Response:
    """GET /health (its answer documented by `Health`)."""
    checks = await health_cache(request).get(ctx(request))
    return health_response(all(v == "ok" for v in checks.values()), {"checks": checks})


ENDPOINTS = [
    Endpoint("GET", "/health", health, "Health of this replica and its dependencies",
             "operations", response=Health, auth="none", also=(503,)),
    Endpoint("GET", "/metrics", metrics_endpoint, "Prometheus metrics", "operations",
             auth="none", media_type="text/plain"),
]  # fmt: skip
