"""`notifier all`: every role in one process, for small installs and development.

The API's port serves the API, `/health` and `/metrics` for the whole process;
the router and delivery run beside it without their own HTTP servers. SIGTERM
(or SIGINT) drains every role: in-flight deliveries finish or release their
claims, the broker consumer stops, SSE streams end, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from notifier import config, delivery
from notifier.api import server
from notifier.api.app import create_app
from notifier.router import Router
from notifier.serving import QuietServer, until_signalled

log = logging.getLogger(__name__)


async def serve(settings: config.Settings, stop: asyncio.Event) -> None:
    """Run API, router and delivery until `stop` is set, then drain them all."""
    app = create_app(settings)
    api = QuietServer(
        server.config(
            app, settings, host="0.0.0.0", port=settings.port,  # noqa: S104 - a server
            timeout_graceful_shutdown=5,
        )
    )  # fmt: skip
    router = Router(settings)
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
    router.stop.set()
    hub = getattr(getattr(app.state, "ctx", None), "hub", None)
    if hub is not None:
        hub.close()  # open SSE streams would otherwise hold uvicorn's shutdown
    api.should_exit = True
    waiter.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    log.info("all roles stopped")
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result


def main(settings: config.Settings) -> int:
    """Entry point of `notifier all`."""

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(until_signalled(lambda stop: serve(settings, stop)))
    return 0
