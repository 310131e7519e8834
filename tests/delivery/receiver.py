"""A real loopback HTTP receiver for delivery tests (threaded `http.server`).

Each `Receiver` listens on its own port and answers every POST according to
its `behaviour`: a status (with headers), hang, drip, redirect, a huge body,
or a connection reset; over TLS when given a server `ssl.SSLContext`. It
records every request it read in full (headers and body); a request cut off
mid-body (the sender died) is not a delivery and is not recorded.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    """One request as the receiver read it."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    sent: int = 0  # body bytes of the answer written before the sender hung up
    finished: bool = False  # the answer is over (written, reset, or cut off)
    wall: float = field(default_factory=time.time)  # when it was read, wall clock
    tls: str | None = None  # the TLS version it came over, None for plain HTTP


@dataclass
class Plan:
    """How to answer: status, headers, body, and what to do before/while answering."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    hang: float = 0.0  # sleep this long before answering
    drip: float = 0.0  # send the body one byte per `drip` seconds
    huge: int = 0  # stream this many bytes of body
    reset: bool = False  # answer nothing: close the connection with a TCP RST


class Receiver:
    """A loopback HTTP server with a programmable answer."""

    def __init__(
        self, answer: Callable[[Received], Plan] | None = None, tls: ssl.SSLContext | None = None
    ) -> None:
        self.answer: Callable[[Received], Plan] = answer or (lambda _: Plan())
        self.tls = tls
        self.requests: list[Received] = []
        self.connections = 0  # TCP connections accepted, whatever came over them
        self.lock = threading.Lock()
        self.closing = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def setup(self) -> None:
                if isinstance(self.request, ssl.SSLSocket):
                    self.request.do_handshake()  # here, not in the accepting thread
                super().setup()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if len(body) < length:  # the sender died mid-request: nothing was delivered
                    self.close_connection = True
                    return
                got = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                               time.monotonic())  # fmt: skip
                if isinstance(self.connection, ssl.SSLSocket):
                    got.tls = self.connection.version()
                with receiver.lock:
                    receiver.requests.append(got)
                plan = receiver.answer(got)
                try:
                    self._answer(plan, got)
                finally:
                    got.finished = True

            def _answer(self, plan: Plan, got: Received) -> None:
                if plan.hang and receiver.closing.wait(plan.hang):
                    return
                if plan.reset:
                    # Linger 0: close() sends RST, not FIN (the sender sees a reset).
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.connection.close()
                    self.close_connection = True
                    return
                try:
                    self.send_response(plan.status)
                    for k, v in plan.headers.items():
                        self.send_header(k, v)
                    size = plan.huge or len(plan.body)
                    self.send_header("Content-Length", str(size))
                    self.end_headers()
                    if plan.huge:
                        chunk = b"x" * 65536
                        while got.sent < plan.huge and not receiver.closing.is_set():
                            self.wfile.write(chunk[: plan.huge - got.sent])
                            got.sent += min(len(chunk), plan.huge - got.sent)
                    elif plan.drip:
                        for byte in plan.body:
                            if receiver.closing.wait(plan.drip):
                                return
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            got.sent += 1
                    else:
                        self.wfile.write(plan.body)
                        got.sent = len(plan.body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        class Server(ThreadingHTTPServer):
            request_queue_size = 1024  # the default 5 drops SYNs under a burst

            def get_request(self) -> tuple[socket.socket, Any]:
                sock, address = super().get_request()
                if receiver.tls is not None:
                    sock = receiver.tls.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False
                    )
                return sock, address

            def process_request(self, request: Any, client_address: Any) -> None:
                with receiver.lock:
                    receiver.connections += 1
                super().process_request(request, client_address)

            def handle_error(self, request: Any, client_address: Any) -> None:
                # A sender killed mid-request resets its connections, a sender
                # that does not trust the certificate aborts the handshake: not news.
                if not isinstance(sys.exc_info()[1], ConnectionError | ssl.SSLError):
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        # A short poll interval: close() (shutdown) waits up to one interval.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        """The URL to register as a webhook."""
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://127.0.0.1:{self.port}/hook"

    def bodies(self) -> list[bytes]:
        """Bodies received so far."""
        with self.lock:
            return [r.body for r in self.requests]

    def close(self) -> None:
        """Stop serving and release hanging handlers."""
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def receiver(
    answer: Callable[[Received], Plan] | None = None, tls: ssl.SSLContext | None = None
) -> Iterator[Receiver]:
    """A running `Receiver` (HTTPS with the server context `tls`), closed afterwards."""
    r = Receiver(answer, tls)
    r.thread.start()
    try:
        yield r
    finally:
        r.close()


_CONTENT_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)")
_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class FastReceiver:
    """A loopback HTTP/1.1 server that answers every request 200 and records it.

    Raw asyncio on a thread of its own: far cheaper per request than
    `Receiver`, for tests that push tens of thousands of deliveries. No
    programmable answer; a request cut off mid-body is not recorded.
    """

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._transports: set[asyncio.Transport] = set()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        requests, transports = self.requests, self._transports

        class Protocol(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                assert isinstance(transport, asyncio.Transport)
                self.transport, self.buf = transport, b""
                transports.add(transport)

            def connection_lost(self, exc: Exception | None) -> None:
                transports.discard(self.transport)

            def data_received(self, data: bytes) -> None:
                self.buf += data
                while (end := self.buf.find(b"\r\n\r\n")) >= 0:
                    m = _CONTENT_LENGTH.search(self.buf, 0, end)
                    total = end + 4 + (int(m.group(1)) if m else 0)
                    if len(self.buf) < total:
                        return
                    head, body = self.buf[:end].decode("latin-1"), self.buf[end + 4 : total]
                    self.buf = self.buf[total:]
                    first, *lines = head.split("\r\n")
                    headers = {}
                    for line in lines:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                    requests.append(Received(first.split(" ")[1], headers, body, time.monotonic()))
                    self.transport.write(_OK)

        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            self._loop.create_server(Protocol, "127.0.0.1", 0, backlog=1024)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    def start(self) -> None:
        """Start serving (returns once the port is known)."""
        self.thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the receiver did not start")

    @property
    def url(self) -> str:
        """The URL to register as a webhook."""
        return f"http://127.0.0.1:{self.port}/hook"

    def close(self) -> None:
        """Stop serving and drop open connections."""

        def stop() -> None:
            self._server.close()
            for transport in list(self._transports):
                transport.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(stop)
        self.thread.join(timeout=10)


@contextmanager
def fast_receiver() -> Iterator[FastReceiver]:
    """A running `FastReceiver`, closed afterwards."""
    r = FastReceiver()
    r.start()
    try:
        yield r
    finally:
        r.close()
