"""What every handler reaches through `request.app.state.ctx`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from neo4j import AsyncDriver
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request

from notifier.api.emails import EmailBook
from notifier.api.errors import not_found
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


async def row_or_404(
    request: Request, sql: str, params: Sequence[Any] | Mapping[str, Any], what: str
) -> dict[str, Any]:
    """The one row `sql` finds, by column name; a 404 for `what` when it finds none.

    The queries select by the caller's user id as well, so someone else's id
    is a 404 too.
    """
    async with ctx(request).pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(sql, params)
        row = await cur.fetchone()
    if row is None:
        raise not_found(what)
    return row
