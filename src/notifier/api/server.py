"""How the API is served: uvicorn's h11 protocol with deadlines against slow clients.

uvicorn bounds only the idle time between requests (`timeout_keep_alive`). A
client may otherwise take forever to send its headers or its body, or connect
and send nothing at all, holding a connection (and, with the body, a request
task) for as long as it likes. `GuardedH11Protocol` adds:

- a header deadline: from the connection's start, or the first byte of a
  further request on it, the whole head must arrive within `header_timeout`
  (else `408` and close);
- a body deadline: once the head is in, the whole body must arrive within
  `body_timeout` (else the connection closes; the handler sees a disconnect);
- at most `max_requests` requests per connection (the last answer carries
  `Connection: close`), so one client cannot pin a connection for good;
- `limit_concurrency`: beyond that many open connections or requests in
  flight, a request answers `503` with the error envelope and `Retry-After`
  (uvicorn's own check answers plain text).
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
import msgspec
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from notifier.config import Settings

log = logging.getLogger(__name__)

CLOSE_HEADER = (b"connection", b"close")
_BUSY = msgspec.json.encode(
    {"error": {"code": "unavailable", "message": "the server is busy; try again"}}
)
_SLOW = msgspec.json.encode(
    {"error": {"code": "request_timeout", "message": "the request head came too slowly"}}
)
# Written raw: h11 cannot answer before it has parsed a request.
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: " + str(len(_SLOW)).encode() + b"\r\n\r\n" + _SLOW
)


@dataclass(frozen=True)
class HttpLimits:
    """The per-connection bounds (seconds, counts)."""

    header_timeout: float
    body_timeout: float
    max_requests: int
    limit_concurrency: int

    @classmethod
    def of(cls, s: Settings) -> HttpLimits:
        """The limits `s` configures."""
        return cls(s.http_header_timeout, s.http_body_timeout,
                   s.http_max_requests_per_connection, s.http_limit_concurrency)  # fmt: skip


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with header and body deadlines and a request cap."""

    limits: ClassVar[HttpLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None  # "head" or "body" while a deadline runs
        self._requests = 0
        self._counted: object = None
        # Checked in `_admit` instead, which answers with the error envelope.
        self.limit_concurrency = None
        self._inner = self.app
        self.app = self._admit

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the header deadline: a connection that sends nothing is cut too."""
        super().connection_made(transport)
        self._arm("head")

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the deadline."""
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        """Parse as uvicorn does, then follow the request's phase with the deadlines."""
        super().handle_events()
        if self.cycle is not None and self.cycle is not self._counted:
            self._counted = self.cycle
            self._requests += 1
            if self._requests >= self.limits.max_requests:
                self.cycle.keep_alive = False
                headers = self.cycle.scope["headers"]
                if isinstance(headers, list):  # uvicorn then sends `Connection: close`
                    headers.append(CLOSE_HEADER)
        state = self.conn.their_state
        if state is h11.IDLE:
            if self._phase != "head" and self.conn.trailing_data[0]:
                self._arm("head")  # part of a further request is in
        elif state is h11.SEND_BODY:
            if self._phase != "body":
                self._arm("body")
        else:
            self._disarm()

    def data_received(self, data: bytes) -> None:
        """The first byte of a further request on a kept-alive connection starts its deadline."""
        if self._phase is None and self.conn.their_state is h11.IDLE:
            self._arm("head")
        super().data_received(data)

    def _arm(self, phase: str) -> None:
        self._disarm()
        seconds = self.limits.header_timeout if phase == "head" else self.limits.body_timeout
        self._phase = phase
        self._deadline = self.loop.call_later(seconds, self._expired, phase)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._phase = None, None

    def _expired(self, phase: str) -> None:
        self._deadline, self._phase = None, None
        if self.transport.is_closing():
            return
        log.info("closing a slow client", extra={"phase": phase})
        if phase == "head" and self.conn.our_state is h11.IDLE:
            self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()

    async def _admit(self, scope: Any, receive: Any, send: Any) -> None:
        # This request's own task and connection are already counted.
        limit = self.limits.limit_concurrency
        if len(self.connections) > limit or len(self.tasks) > limit:
            log.warning("concurrency limit reached; answering 503")
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"), (b"retry-after", b"1"), CLOSE_HEADER,
            ]})  # fmt: skip
            await send({"type": "http.response.body", "body": _BUSY})
            return
        await self._inner(scope, receive, send)


def protocol(limits: HttpLimits) -> type[GuardedH11Protocol]:
    """A `GuardedH11Protocol` class bound to `limits` (uvicorn instantiates it)."""
    return type("BoundGuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})


def config(app: Any, settings: Settings, *, host: str, port: int, **kwargs: Any) -> uvicorn.Config:
    """The uvicorn config of the API: the guarded protocol and the keep-alive limit."""
    return uvicorn.Config(
        app, host=host, port=port, http=protocol(HttpLimits.of(settings)),
        timeout_keep_alive=max(1, math.ceil(settings.http_keepalive_timeout)),
        log_config=None, access_log=False, lifespan="on", **kwargs,
    )  # fmt: skip
