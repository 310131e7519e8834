"""httpcore's network interface on plain asyncio streams.

httpcore's default backend for asyncio goes through anyio, which wraps every
read and write in a cancel scope and answers each "is this idle connection
still open?" (asked on every request) through several layers of typed
attributes. Profiling the delivery loop put a third of its CPU there; these
streams do the same job with `asyncio.StreamReader`/`StreamWriter` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import typing

import httpcore


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One TCP (optionally TLS) connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        """Up to `max_bytes`; b"" at end of stream."""
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError:
            raise httpcore.ReadTimeout("read timed out") from None
        except OSError as exc:  # resets, TLS errors (ssl.SSLError is an OSError)
            raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Send all of `buffer`."""
        if not buffer:
            return
        try:
            self._writer.write(buffer)
            async with asyncio.timeout(timeout):
                await self._writer.drain()
        except TimeoutError:
            raise httpcore.WriteTimeout("write timed out") from None
        except (OSError, RuntimeError) as exc:  # RuntimeError: write on a closed transport
            raise httpcore.WriteError(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        """Close without waiting for the peer (a hung peer must not hang us)."""
        self._writer.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        """Upgrade this connection to TLS in place."""
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except TimeoutError:
            await self._abandon()
            raise httpcore.ConnectTimeout("TLS handshake timed out") from None
        except OSError as exc:
            await self._abandon()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        return self

    async def _abandon(self) -> None:
        """Close after a failed handshake, collecting the error asyncio stored for us."""
        self._writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1):
                await self._writer.wait_closed()

    def get_extra_info(self, info: str) -> typing.Any:
        """What httpcore asks about: TLS object, addresses, socket, readability."""
        if info == "is_readable":
            # On an idle keep-alive connection, anything readable means the
            # server closed it (or broke the protocol): do not reuse it.
            return self._reader.at_eof() or self._reader.exception() is not None
        if info == "ssl_object":
            return self._writer.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._writer.get_extra_info("sockname")
        if info == "server_addr":
            return self._writer.get_extra_info("peername")
        if info == "socket":
            return self._writer.get_extra_info("socket")
        return None


async def connect_tcp(
    host: str,
    port: int,
    timeout: float | None = None,  # noqa: ASYNC109
    local_address: str | None = None,
    socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
) -> AsyncioStream:
    """Open a TCP connection to `host` (an address: resolution is the caller's)."""
    local = (local_address, 0) if local_address else None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, local_addr=local)
    except TimeoutError:
        raise httpcore.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
    except OSError as exc:
        raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
    sock = writer.get_extra_info("socket")
    for option in socket_options or ():
        sock.setsockopt(*option)
    return AsyncioStream(reader, writer)
