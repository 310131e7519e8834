"""`notifier all`: every role in one process, for small installs and development.

The API's port serves the API, `/health` and `/metrics` for the whole process;
the router and delivery run beside it without their own HTTP servers. SIGTERM
(or SIGINT) drains every role: in-flight deliveries finish or release their
claims, the broker consumer stops, SSE streams end, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging

from notifier import config, delivery, lifecycle
from notifier.api.app import api_server, end_streams
from notifier.router import Router

log = logging.getLogger(__name__)


async def serve(settings: config.Settings, stop: asyncio.Event) -> None:
    """Run API, router and delivery until `stop` is set, then drain them all."""
    app, api = api_server(settings, graceful_seconds=5)
    router = Router(settings, stop)
    tasks = {
        asyncio.create_task(api.serve(), name="api"),
        asyncio.create_task(router.run(serve_http=False), name="router"),
        asyncio.create_task(delivery.serve(settings, stop, serve_http=False), name="delivery"),
    }
    log.info("all roles started", extra={"port": settings.port})
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({*tasks, waiter}, return_when=asyncio.FIRST_COMPLETED)
    for task in done - {waiter}:
        if task.exception() is not None:  # a role died: stop the others, then re-raise
            log.error("role failed", extra={"role": task.get_name()}, exc_info=task.exception())
    stop.set()
    end_streams(app)
    api.should_exit = True
    waiter.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    log.info("all roles stopped")
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result


def main(settings: config.Settings) -> int:
    """Entry point of `notifier all`: run until SIGTERM/SIGINT, then drain and exit 0."""
    return lifecycle.run("all", lambda stop: serve(settings, stop))
