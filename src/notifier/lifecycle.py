"""How a role runs and answers `/health` and `/metrics`, the same for every role.

`run` is the one way a long-running role (router, delivery, api, all) runs:
SIGTERM or SIGINT sets one `stop` event, the role drains on it and returns,
and the process exits 0; a role that cannot start (its database or broker
unreachable) logs one line and exits 1. Router and delivery serve `ops_app`
on NOTIFIER_PORT (`OpsServer`); the API answers with the same
`health_response` and `metrics_response` among its own routes, and under
`notifier all` its port answers for the whole process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import msgspec
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

log = logging.getLogger(__name__)

# A role's health: whether it is healthy, and the fields its answer carries
# after `status` (contract §1; the README lists them per role).
Probe = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


def run(
    role: str,
    serve: Callable[[asyncio.Event], Awaitable[int | None]],
    *,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> int:
    """Run `serve(stop)` in a new event loop; SIGTERM and SIGINT set `stop`.

    Returns the exit code: what `serve` returns (None is 0), or 1 with one log
    line when it raised (a role that could not start).
    """

    async def main() -> int | None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await serve(stop)

    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            code = runner.run(main())
    except KeyboardInterrupt:  # SIGINT before the handlers were in place
        return 0
    except Exception as exc:
        log.error("%s stopped: %s: %s", role, type(exc).__name__, exc)
        log.debug("%s stopped", role, exc_info=exc)
        return 1
    return code or 0


def health_response(healthy: bool, fields: Mapping[str, Any]) -> Response:
    """The `/health` answer: 200 and `healthy`, or 503 and `unhealthy`, then `fields`."""
    body = {"status": "healthy" if healthy else "unhealthy", **fields}
    return Response(
        msgspec.json.encode(body), status_code=200 if healthy else 503,
        media_type="application/json",
    )  # fmt: skip


def metrics_response(*registries: CollectorRegistry) -> Response:
    """The `/metrics` answer: Prometheus text of `registries` (the process's by default)."""
    body = b"".join(generate_latest(r) for r in registries or (REGISTRY,))
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def ops_app(probe: Probe) -> Starlette:
    """`/health` (answered by `probe`) and `/metrics` of a role without an API."""

    async def health(_: Request) -> Response:
        return health_response(*await probe())

    async def metrics(_: Request) -> Response:
        return metrics_response()

    return Starlette(routes=[Route("/health", health), Route("/metrics", metrics)])


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the role owns SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leave signals to the caller."""
        yield


class OpsServer:
    """`ops_app(probe)` on `port`, served in the role's loop from `start` to `close`."""

    def __init__(self, probe: Probe, port: int) -> None:
        self._server = QuietServer(
            uvicorn.Config(
                ops_app(probe), host="0.0.0.0", port=port,  # noqa: S104 - a server
                log_config=None, access_log=False, lifespan="off",
            )
        )  # fmt: skip
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start serving (a task of the running loop)."""
        self._task = asyncio.create_task(self._server.serve(), name="ops-http")

    async def close(self) -> None:
        """Stop serving and wait until the server is down."""
        if self._task is not None:
            self._server.should_exit = True
            await self._task
            self._task = None
