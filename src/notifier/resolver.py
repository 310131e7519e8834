"""A bounded DNS resolver for webhook hosts.

`getaddrinfo` blocks a thread until the C resolver gives up (tens of seconds
for a black-holed name server). Run in asyncio's default executor, a flood of
such names would occupy every thread of it, and psycopg resolves PostgreSQL's
host there too: connects would stall. Webhook names are therefore looked up
in a small pool of their own, each lookup under a hard deadline. A lookup
still running when its deadline passes keeps its thread until the C resolver
returns, but never more than `threads` threads are used; lookups queued
behind them time out without ever starting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import socket
from collections.abc import Callable, Sequence
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# socket.getaddrinfo's signature, as far as it is used here (replaceable for tests).
Lookup = Callable[[str, int], list[tuple[Any, ...]]]


class ResolveTimeout(Exception):
    """The name did not resolve within the deadline."""


class ResolveFailed(Exception):
    """The name does not resolve; `str()` says why."""


def _getaddrinfo(host: str, port: int) -> list[tuple[Any, ...]]:
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


class Resolver:
    """At most `threads` lookups at a time, each answered or abandoned within `timeout` s."""

    def __init__(self, *, threads: int = 8, timeout: float = 5.0,
                 lookup: Lookup = _getaddrinfo) -> None:  # fmt: skip
        self.timeout = timeout
        self.threads = threads
        self._lookup = lookup
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="resolver")

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """The distinct addresses of `host`, in the resolver's order."""
        future = self._pool.submit(self._lookup, host, port)
        try:
            infos = await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except TimeoutError:
            future.cancel()  # a queued lookup never starts; a running one ends on its own
            raise ResolveTimeout(f"resolving {host} took longer than {self.timeout:g} s") from None
        except (OSError, UnicodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ResolveFailed(f"the host {host!r} does not resolve ({reason})") from None
        return unique_addresses(infos)

    def close(self) -> None:
        """Stop the threads once their lookups end (nothing waits for them)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def unique_addresses(infos: Sequence[Any]) -> list[IPAddress]:
    """The addresses of `getaddrinfo` answers, once each, in order (zone ids dropped)."""
    addresses: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if ip not in addresses:
            addresses.append(ip)
    return addresses
