"""A real loopback HTTP receiver for delivery tests (threaded `http.server`).

Each `Receiver` listens on its own port and answers every POST according to
its `behaviour`: a status (with headers), hang, drip, redirect, or a huge
body. It records every request it read (headers and body).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    """One request as the receiver read it."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Plan:
    """How to answer: status, headers, body, and what to do before/while answering."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    hang: float = 0.0  # sleep this long before answering
    drip: float = 0.0  # send the body one byte per `drip` seconds
    huge: int = 0  # stream this many bytes of body


class Receiver:
    """A loopback HTTP server with a programmable answer."""

    def __init__(self, answer: Callable[[Received], Plan] | None = None) -> None:
        self.answer: Callable[[Received], Plan] = answer or (lambda _: Plan())
        self.requests: list[Received] = []
        self.lock = threading.Lock()
        self.closing = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                got = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                               time.monotonic())  # fmt: skip
                with receiver.lock:
                    receiver.requests.append(got)
                plan = receiver.answer(got)
                if plan.hang and receiver.closing.wait(plan.hang):
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
                        sent = 0
                        while sent < plan.huge and not receiver.closing.is_set():
                            self.wfile.write(chunk)
                            sent += len(chunk)
                    elif plan.drip:
                        for byte in plan.body:
                            if receiver.closing.wait(plan.drip):
                                return
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                    else:
                        self.wfile.write(plan.body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        class Server(ThreadingHTTPServer):
            request_queue_size = 1024  # the default 5 drops SYNs under a burst

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The URL to register as a webhook."""
        return f"http://127.0.0.1:{self.port}/hook"

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
def receiver(answer: Callable[[Received], Plan] | None = None) -> Iterator[Receiver]:
    """A running `Receiver`, closed afterwards."""
    r = Receiver(answer)
    r.thread.start()
    try:
        yield r
    finally:
        r.close()
