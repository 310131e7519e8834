"""HTTP/1.1 keep-alive connections to one endpoint, for the webhook client's transport.

What httpcore's connection pool does for us, minus what we never use
(HTTP/2, proxies, upgrades, a pool shared by many origins) and minus its
per-request cost: httpcore walks every connection and every queued request of
its pool at each request start and end, takes two anyio locks per request
(each yielding to the event loop once) and opens several anyio cancel scopes.
That bookkeeping was a large share of the delivery loop's CPU; the protocol
itself (h11, which httpcore uses too) and our own
`asyncio_net` streams stay.

One `EndpointPool` per (scheme, host, port): at most `limit` connections,
idle ones reused last-in first-out while their keep-alive lasts and the peer
has not closed them, requests beyond the limit queue for `pool` seconds.
Errors come out as httpx's exceptions, with the original in the chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import typing

import h11
import httpcore
import httpx

from notifier.channels.gate import Gate

READ_BYTES = 64 * 1024
MAX_HEAD_BYTES = 100 * 1024  # a response head larger than this is a protocol error

_ERRORS: dict[type[Exception], type[httpx.TransportError]] = {
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    h11.RemoteProtocolError: httpx.RemoteProtocolError,
    h11.LocalProtocolError: httpx.LocalProtocolError,
}


# (h11 ends a close-delimited body with EndOfMessage, then ConnectionClosed.)
_BODY_ENDS = (h11.EndOfMessage, h11.ConnectionClosed)


class Backend(typing.Protocol):
    """What opens connections (`webhook.GuardedBackend`: resolves and checks addresses)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        """A TCP connection to `host`:`port`."""
        ...


def _mapped(exc: Exception, request: httpx.Request | None) -> Exception:
    """httpx's exception for a stream or h11 error (others unchanged)."""
    for kind, mapped in _ERRORS.items():
        if isinstance(exc, kind):
            return mapped(str(exc) or type(exc).__name__, request=request)
    return exc


class Answer(typing.NamedTuple):
    """What `EndpointPool.post` read of a response."""

    status_code: int
    retry_after: str | None  # the Retry-After header, as sent
    body: bytes  # at most the first `max_body` bytes


class Connection:
    """One HTTP/1.1 connection: an h11 state machine over a network stream."""

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.expires = 0.0

    def reusable(self, now: float) -> bool:
        """Idle, within its keep-alive, and not closed (nor written to) by the peer."""
        return now < self.expires and not self.stream.get_extra_info("is_readable")

    async def next_event(self, timeout: float | None) -> typing.Any:  # noqa: ASYNC109
        """The next h11 event of the response, reading as needed."""
        h = self.h11
        while True:
            event = h.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.stream.read(READ_BYTES, timeout=timeout)
            if not data and h.their_state is h11.SEND_RESPONSE:
                raise httpcore.RemoteProtocolError(
                    "Server disconnected without sending a response."
                )
            h.receive_data(data)

    async def aclose(self) -> None:
        """Close the connection (without waiting for the peer)."""
        await self.stream.aclose()


class _Body(httpx.AsyncByteStream):
    """A response body read from its connection; closing it gives the connection back."""

    def __init__(
        self, pool: EndpointPool, conn: Connection, request: httpx.Request, timeout: float | None
    ) -> None:
        self._pool = pool
        self._conn: Connection | None = conn
        self._request = request
        self._timeout = timeout

    async def __aiter__(self) -> typing.AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            raise httpx.StreamClosed()
        try:
            while True:
                event = await conn.next_event(self._timeout)
                if type(event) is h11.Data:
                    yield bytes(event.data)
                elif type(event) in _BODY_ENDS or event is h11.PAUSED:
                    return
        except Exception as exc:
            raise _mapped(exc, self._request) from exc

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        h = conn.h11
        if h.our_state is h11.DONE and h.their_state is h11.DONE and not h.trailing_data[0]:
            # (Bytes after the response would be taken for the next answer.)
            h.start_next_cycle()
            self._pool.release(conn)
        else:
            self._pool.release(None)
            await conn.aclose()


class EndpointPool:
    """Keep-alive connections to one endpoint, at most `limit` at a time."""

    def __init__(
        self,
        backend: Backend,
        ssl_context: ssl.SSLContext,
        *,
        limit: int,
        keepalive: float,
    ) -> None:
        self._backend = backend
        self._ssl = ssl_context
        self._limit = limit
        self._keepalive = keepalive
        self._idle: list[Connection] = []
        self._slots = Gate(limit)  # a slot per connection in use or being opened

    @property
    def idle(self) -> bool:
        """No request in flight or waiting."""
        return self._slots.free == self._limit

    async def _acquire(self, timeout: float | None) -> Connection | None:  # noqa: ASYNC109
        """A slot, with a reusable idle connection or None (the caller may open one)."""
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        try:
            await self._slots.enter(deadline)
        except TimeoutError:
            raise httpcore.PoolTimeout("no connection became free in time") from None
        try:
            now = time.monotonic()
            while self._idle:
                conn = self._idle.pop()
                if conn.reusable(now):
                    return conn
                await conn.aclose()
        except BaseException:
            self._slots.leave()
            raise
        return None

    def release(self, conn: Connection | None) -> None:
        """Give a connection slot back; `conn` (done with its exchange) is kept for reuse."""
        if conn is not None:
            conn.expires = time.monotonic() + self._keepalive
            self._idle.append(conn)
        self._slots.leave()

    async def _connect(self, url: httpx.URL, timeout: float | None) -> Connection:  # noqa: ASYNC109
        host = url.raw_host.decode("ascii")
        port = url.port or (443 if url.scheme == "https" else 80)
        stream = await self._backend.connect_tcp(host, port, timeout=timeout)
        if url.scheme == "https":
            try:
                stream = await stream.start_tls(self._ssl, server_hostname=host, timeout=timeout)
            except BaseException:
                await stream.aclose()
                raise
        return Connection(stream)

    async def request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` on a connection of this pool; the response streams its body."""
        timeouts = request.extensions.get("timeout", {})
        try:
            conn = await self._acquire(timeouts.get("pool"))
        except Exception as exc:
            raise _mapped(exc, request) from exc
        try:
            if conn is None:
                conn = await self._connect(request.url, timeouts.get("connect"))
            event = await self._exchange(conn, request, timeouts)
        except BaseException as exc:
            self.release(None)
            if conn is not None:
                await conn.aclose()
            if isinstance(exc, Exception):
                raise _mapped(exc, request) from exc
            raise
        return httpx.Response(
            status_code=event.status_code,
            headers=event.headers.raw_items(),
            stream=_Body(self, conn, request, timeouts.get("read")),
            extensions={
                "http_version": b"HTTP/" + event.http_version,
                "reason_phrase": event.reason,
                "network_stream": conn.stream,
            },
        )

    async def _exchange(
        self, conn: Connection, request: httpx.Request, timeouts: dict[str, float | None]
    ) -> typing.Any:
        """Write the request, read the response head (h11.Response)."""
        h = conn.h11
        write = timeouts.get("write")
        try:
            url = request.url
            data = h.send(
                h11.Request(method=request.method, target=url.raw_path, headers=request.headers.raw)
            )
            if data:
                await conn.stream.write(data, timeout=write)
            assert isinstance(request.stream, httpx.AsyncByteStream)
            async for chunk in request.stream:
                data = h.send(h11.Data(data=chunk))
                if data:
                    await conn.stream.write(data, timeout=write)
            data = h.send(h11.EndOfMessage())
            if data:
                await conn.stream.write(data, timeout=write)
        except httpcore.WriteError:
            pass  # the server may have answered early and closed: read what it said
        read = timeouts.get("read")
        while True:
            event = await conn.next_event(read)
            if type(event) is h11.Response:
                return event
            if type(event) is not h11.InformationalResponse:
                raise httpcore.RemoteProtocolError(f"unexpected {type(event).__name__}")

    async def post(
        self,
        url: httpx.URL,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeouts: dict[str, float | None],
        max_body: int,
    ) -> Answer:
        """POST `body` with `headers` (Host and Content-Length included) and read the answer.

        The webhook sender's path: no httpx request or response objects, and
        h11 is told the head is already valid (`_parsed`), since the caller
        builds every header from values it made itself. Reads at most
        `max_body` bytes of the body; a connection whose body was not read
        to its end is closed, not reused. Errors come out as httpx's.
        """
        try:
            conn = await self._acquire(timeouts.get("pool"))
        except Exception as exc:
            raise _mapped(exc, None) from exc
        reuse = False
        try:
            if conn is None:
                conn = await self._connect(url, timeouts.get("connect"))
            h = conn.h11
            data = h.send(h11.Request(method=b"POST", target=url.raw_path, headers=headers,
                                      _parsed=True))  # fmt: skip
            data += h.send(h11.Data(data=body)) or b""
            data += h.send(h11.EndOfMessage()) or b""
            # The server may have answered early and closed: read what it said.
            with contextlib.suppress(httpcore.WriteError):
                await conn.stream.write(data, timeout=timeouts.get("write"))
            read = timeouts.get("read")
            while True:
                event = await conn.next_event(read)
                if type(event) is h11.Response:
                    break
                if type(event) is not h11.InformationalResponse:
                    raise httpcore.RemoteProtocolError(f"unexpected {type(event).__name__}")
            retry_after = None
            for name, value in event.headers:
                if name == b"retry-after":
                    retry_after = value.decode("latin-1")
            got = b""
            while len(got) < max_body:
                part = await conn.next_event(read)
                if type(part) is h11.Data:
                    got += part.data
                elif type(part) in _BODY_ENDS or part is h11.PAUSED:
                    break
            # (Bytes after the response would be taken for the next answer.)
            reuse = h.our_state is h11.DONE and h.their_state is h11.DONE
            reuse = reuse and not h.trailing_data[0]
            if reuse:
                h.start_next_cycle()
        except BaseException as exc:
            if conn is not None:
                await conn.aclose()
            self.release(None)
            if isinstance(exc, Exception):
                raise _mapped(exc, None) from exc
            raise
        if reuse:
            self.release(conn)
        else:
            await conn.aclose()
            self.release(None)
        return Answer(event.status_code, retry_after, got[:max_body])

    async def aclose(self) -> None:
        """Close the idle connections (those in use close when their response does)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.aclose()
