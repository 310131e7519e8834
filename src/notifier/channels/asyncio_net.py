"""Network streams (httpcore's interface) on a plain asyncio protocol.

httpcore's default backend for asyncio goes through anyio, which wraps every
read and write in a cancel scope and answers each "is this idle connection
still open?" (asked on every request) through several layers of typed
attributes, a large share of the delivery loop's CPU. This stream talks to
the asyncio transport directly, and does less per request:

- Writes are gathered and go out in one `send()` when the client starts
  reading the answer: a request's head and body then cost one system call
  (and one TCP segment for the receiver) instead of two. (An HTTP/1.1 client,
  http1.py, writes the whole request before it reads; a big body is written
  as it comes, with the write timeout, once more than `FLUSH_BYTES` wait.)
- A read that finds data already buffered returns it without a timer; a read
  that has to wait arms one timer, the read timeout.
"""

from __future__ import annotations

import asyncio
import ssl
import typing

import httpcore

FLUSH_BYTES = 64 * 1024  # gathered writes beyond this go out at once
READ_HIGH_WATER = 256 * 1024  # buffered unread bytes beyond this pause the socket
# httpcore's names for stream info -> asyncio's transport names
_TRANSPORT_INFO = {
    "ssl_object": "ssl_object",
    "client_addr": "sockname",
    "server_addr": "peername",
    "socket": "socket",
}


class _Protocol(asyncio.Protocol):
    """Buffers what arrives; wakes the one reader or writer waiting."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.data = b""
        self.eof = False
        self.error: BaseException | None = None
        self.reading_paused = False
        self.writing_paused = False
        self.waiter: asyncio.Future[bool] | None = None  # a read or a drain

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not asyncio.Transport subclasses).
        self.transport = typing.cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.data = self.data + data if self.data else data
        if len(self.data) > READ_HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self.writing_paused = False
        self._wake()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


async def _wait(p: _Protocol, timeout: float | None) -> bool:  # noqa: ASYNC109
    """Wait for the protocol's next event; False when `timeout` ran out first."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[bool] = loop.create_future()
    p.waiter = waiter
    timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
    try:
        return await waiter
    finally:
        p.waiter = None
        if timer is not None:
            timer.cancel()


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One TCP (optionally TLS) connection."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._p = protocol
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def _flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        if not self._transport.is_closing():
            # A connection already lost: the read that follows sees its end.
            self._transport.write(data)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        """Up to `max_bytes`; b"" at end of stream."""
        p = self._p
        self._flush()
        while not p.data:
            if p.error is not None:
                exc = p.error
                raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc
            if p.eof:
                return b""
            if not await _wait(p, timeout):
                raise httpcore.ReadTimeout("read timed out")
        data = p.data
        if len(data) > max_bytes:
            data, p.data = data[:max_bytes], data[max_bytes:]
        else:
            p.data = b""
        if p.reading_paused and len(p.data) <= READ_HIGH_WATER // 4:
            p.reading_paused = False
            self._transport.resume_reading()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Send all of `buffer` (gathered until the next read, if small)."""
        if not buffer:
            return
        p = self._p
        if p.error is not None or self._transport.is_closing():
            exc = p.error
            raise httpcore.WriteError(str(exc) if exc else "connection closed") from exc
        self._pending.append(buffer)
        self._pending_bytes += len(buffer)
        if self._pending_bytes < FLUSH_BYTES:
            return
        self._flush()
        while p.writing_paused:
            if not await _wait(p, timeout):
                raise httpcore.WriteTimeout("write timed out")
            if p.error is not None:
                exc = p.error
                raise httpcore.WriteError(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        """Close without waiting for the peer (a hung peer must not hang us)."""
        self._pending.clear()
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        """Upgrade this connection to TLS."""
        self._flush()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport, self._p, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            self._transport.abort()
            raise httpcore.ConnectTimeout("TLS handshake timed out") from None
        except OSError as exc:  # ssl.SSLError is an OSError
            self._transport.abort()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        if transport is None:  # the connection was lost during the handshake
            raise httpcore.ConnectError("connection closed during the TLS handshake")
        self._p.transport = self._transport = transport
        return self

    def get_extra_info(self, info: str) -> typing.Any:
        """httpcore's stream info: readability (asked by `http1`), TLS object, addresses, socket."""
        if info == "is_readable":
            # On an idle keep-alive connection, anything readable means the
            # server closed it (or broke the protocol): do not reuse it.
            p = self._p
            return bool(p.data) or p.eof or p.error is not None or self._transport.is_closing()
        name = _TRANSPORT_INFO.get(info)
        return None if name is None else self._transport.get_extra_info(name)


async def connect_tcp(
    host: str,
    port: int,
    timeout: float | None = None,  # noqa: ASYNC109
) -> AsyncioStream:
    """Open a TCP connection to `host` (an address: resolution is the caller's)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            transport, protocol = await loop.create_connection(_Protocol, host, port)
    except TimeoutError:
        raise httpcore.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
    except OSError as exc:
        raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
    return AsyncioStream(transport, protocol)
