"""What every handler reaches through `request.app.state.ctx`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from neo4j import AsyncDriver
from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request

from notifier.api.emails import EmailBook
from notifier.api.ratelimit import RateLimiter
from notifier.config import Settings
from notifier.resolver import Resolver

if TYPE_CHECKING:
    from notifier.api.metrics import Metrics
    from notifier.api.sse import Hub


@dataclass
class Context:
    """The app's shared resources, built by the lifespan of `create_app`."""

    settings: Settings
    pool: AsyncConnectionPool
    graph: AsyncDriver
    hub: Hub
    limiter: RateLimiter
    metrics: Metrics
    emails: EmailBook = field(default_factory=EmailBook)
    # Webhook hosts are resolved here, never in the default executor.
    resolver: Resolver = field(default_factory=Resolver)
    # Per-user quota of test pings, redeliveries and recoveries (each sends webhooks).
    sends: RateLimiter = field(default_factory=lambda: RateLimiter(1, 10))


def ctx(request: Request) -> Context:
    """The `Context` of the app serving `request`."""
    context: Context = request.app.state.ctx
    return context
