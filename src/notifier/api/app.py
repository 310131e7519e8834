"""The API application (`create_app`) and the `notifier api` role (`main`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, version

import msgspec
import psycopg
from neo4j import AsyncGraphDatabase
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.loops.auto import auto_loop_factory

from notifier import db, lifecycle
from notifier.api import atom, errors, feed, health, internal, openapi, preferences, sse, watchlist
from notifier.api import server as serving
from notifier.api import webhook as webhook_routes
from notifier.api import webhooks as endpoint_routes
from notifier.api.context import Context
from notifier.api.metrics import Metrics, MetricsMiddleware
from notifier.api.ratelimit import RateLimiter
from notifier.api.revocation import Revocations
from notifier.api.routing import Endpoint, routes
from notifier.config import Settings
from notifier.resolver import Resolver

log = logging.getLogger(__name__)

POOL_TIMEOUT_SECONDS = 5.0
GRACEFUL_SHUTDOWN_SECONDS = 10


def _version() -> str:
    try:
        return version("notifier")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0"


def endpoints() -> list[Endpoint]:
    """Every endpoint, fixed paths before the `{id}` ones that could shadow them."""
    return [
        *sse.ENDPOINTS,
        *feed.ENDPOINTS,
        *atom.ENDPOINTS,
        *watchlist.ENDPOINTS,
        *preferences.ENDPOINTS,
        *webhook_routes.ENDPOINTS,
        *endpoint_routes.ENDPOINTS,
        *internal.ENDPOINTS,
        *health.ENDPOINTS,
    ]


async def _database_down(request: Request, exc: Exception) -> Response:
    # The route's template, not the path: a feed URL's path is its credential.
    path = getattr(request.scope.get("route"), "path", None) or "<unmatched>"
    log.warning("database unavailable", extra={"error": type(exc).__name__,
                                               "path": path})  # fmt: skip
    return errors.envelope(503, "database_unavailable", "the database is unavailable; try again",
                           headers={"Retry-After": "5"})  # fmt: skip


def create_app(settings: Settings, *, heartbeat_seconds: float = 15.0) -> Starlette:
    """The Starlette app; its lifespan opens the pool, the graph driver and the SSE hub."""
    eps = endpoints()
    metrics = Metrics()
    doc = msgspec.json.encode(
        openapi.document(
            eps, version=_version(), rate_per_minute=settings.api_rate_limit_per_minute,
            burst=settings.api_rate_limit_burst,
        )
    )  # fmt: skip

    async def openapi_json(request: Request) -> Response:
        return Response(doc, media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Not db.pool(): the API wants a short checkout timeout, so a request
        # during a database outage answers 503 quickly instead of hanging.
        conninfo = db.conninfo_for(settings, "api")
        pool = AsyncConnectionPool(
            conninfo, min_size=1, max_size=settings.api_pool_size,
            open=False, kwargs={"autocommit": True}, timeout=POOL_TIMEOUT_SECONDS,
        )  # fmt: skip
        await pool.open(wait=False)
        graph = AsyncGraphDatabase.driver(
            settings.neo4j_uri, auth=(settings.neo4j_username, settings.neo4j_password)
        )
        hub = sse.Hub(conninfo, pool)
        listener = asyncio.create_task(hub.run(), name="sse-listener")
        app.state.ctx = Context(
            settings=settings, pool=pool, graph=graph, hub=hub,
            limiter=RateLimiter(settings.api_rate_limit_per_minute, settings.api_rate_limit_burst),
            metrics=metrics,
            resolver=Resolver(threads=settings.resolver_threads, timeout=settings.resolver_timeout),
            sends=RateLimiter(settings.api_send_quota_per_hour / 60, settings.api_send_burst),
        )  # fmt: skip
        # The platform's revoked tokens (auth.check_revoked); None: REDIS_HOST unset.
        revocations = None
        if settings.redis_host:
            revocations = Revocations(
                settings.redis_host, settings.redis_port, settings.redis_password
            )
        app.state.revocations = revocations
        try:
            yield
        finally:
            if revocations is not None:
                await revocations.aclose()
            hub.close()
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            await pool.close()
            await graph.close()
            app.state.ctx.resolver.close()

    app = Starlette(
        routes=[*routes(eps), Route("/openapi.json", openapi_json, methods=["GET"])],
        exception_handlers={
            **errors.handlers(),
            psycopg.OperationalError: _database_down,
            PoolTimeout: _database_down,
        },
        middleware=[Middleware(MetricsMiddleware, metrics=metrics)],
        lifespan=lifespan,
    )
    app.state.heartbeat_seconds = heartbeat_seconds
    return app


def end_streams(app: Starlette) -> None:
    """Close the app's open SSE streams (they would hold uvicorn's graceful shutdown)."""
    ctx: Context | None = getattr(app.state, "ctx", None)
    if ctx is not None:
        ctx.hub.close()


def api_server(
    settings: Settings, *, graceful_seconds: float = GRACEFUL_SHUTDOWN_SECONDS
) -> tuple[Starlette, lifecycle.QuietServer]:
    """The API app and its uvicorn server on NOTIFIER_PORT, signals left to the role."""
    app = create_app(settings)
    config = serving.config(
        app, settings, host="0.0.0.0", port=settings.port,  # noqa: S104 - a server
        timeout_graceful_shutdown=graceful_seconds,
    )  # fmt: skip
    return app, lifecycle.QuietServer(config)


async def serve(settings: Settings, stop: asyncio.Event) -> int:
    """Serve the API until `stop` is set, then end the streams and drain; the exit code."""
    app, api = api_server(settings)
    task = asyncio.create_task(api.serve(), name="api")
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    end_streams(app)
    api.should_exit = True
    await task
    return 0 if api.started else 1


def main(settings: Settings) -> int:
    """`notifier api`: serve the API on NOTIFIER_PORT until SIGTERM/SIGINT, then exit 0."""
    # The event loop uvicorn would choose itself (uvloop where it is installed).
    return lifecycle.run(
        "api", lambda stop: serve(settings, stop), loop_factory=auto_loop_factory()
    )
