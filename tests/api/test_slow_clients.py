"""Slow and idle clients are cut: header and body deadlines, requests per connection,
the concurrency limit. Real sockets against the API served as `notifier api` serves it."""

from __future__ import annotations

import http.client
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import msgspec
import pytest
import uvicorn

from notifier import config
from notifier.api import server
from notifier.api.app import create_app
from tests.api.conftest import SERVICE_TOKEN

# The most a failing test waits for a cut that never comes (a bound, not a measurement).
PATIENCE = 30.0


class Served:
    """The API under the production uvicorn config, on a loopback port, in a thread."""

    def __init__(self, env: dict[str, str]) -> None:
        settings = config.load(env, role="api")
        cfg = server.config(create_app(settings), settings, host="127.0.0.1", port=0,
                            timeout_graceful_shutdown=2)  # fmt: skip
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "no server"
            time.sleep(0.02)
        self.port = int(self.server.servers[0].sockets[0].getsockname()[1])

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=PATIENCE)
        return sock

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)


def _serve(api_env: dict[str, str], **extra: str) -> Iterator[Served]:
    served = Served(dict(api_env, **extra))
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def served(api_env: dict[str, str]) -> Iterator[Served]:
    """Deadlines of 1 s, three requests a connection."""
    yield from _serve(api_env, NOTIFIER_HTTP_HEADER_TIMEOUT="1", NOTIFIER_HTTP_BODY_TIMEOUT="1",
                      NOTIFIER_HTTP_MAX_REQUESTS_PER_CONNECTION="3")  # fmt: skip


def _read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def _drip(sock: socket.socket, data: bytes) -> bytes | None:
    """Send `data` a byte every 0.2 s; what the server answered if it cut us first, else None."""
    for i in range(len(data)):
        if select.select([sock], [], [], 0)[0]:
            return _read_all(sock)
        try:
            sock.sendall(data[i : i + 1])
        except (BrokenPipeError, ConnectionResetError):
            return b""
        time.sleep(0.2)
    return None


def _get_ok(port: int) -> None:
    r = httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=10)
    assert r.status_code == 200


def test_headers_sent_byte_by_byte_are_cut(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n")
        _get_ok(served.port)  # others are served meanwhile
        answer = _drip(sock, b"X-Slow: " + b"a" * 200 + b"\r\n\r\n")
        assert answer is not None, "the server waited for the whole slow head"
        assert answer.startswith(b"HTTP/1.1 408 ")
        body = msgspec.json.decode(answer.split(b"\r\n\r\n", 1)[1])
        assert body["error"]["code"] == "request_timeout"
    _get_ok(served.port)


def test_a_connection_that_sends_nothing_is_cut(served: Served) -> None:
    with served.connect() as sock:
        answer = _read_all(sock)  # the socket timeout (PATIENCE) fails the test
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_a_further_request_on_a_kept_alive_connection_has_its_own_deadline(
    served: Served,
) -> None:
    with served.connect() as sock:
        sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        length = int(head.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
        rest = head.split(b"\r\n\r\n", 1)[1]
        while len(rest) < length:
            rest += sock.recv(65536)
        answer = _drip(sock, b"GET /openapi.json HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200)
        assert answer is not None, "the second, slow head was waited for"


def test_a_body_sent_byte_by_byte_is_cut(served: Served) -> None:
    body = b'{"user_ids": [], "event": "x", "idempotency_key": "' + b"k" * 400 + b'"}'
    head = (
        b"POST /internal/events HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer " + SERVICE_TOKEN.encode() + b"\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    with served.connect() as sock:
        sock.sendall(head)
        answer = _drip(sock, body)
        assert answer is not None, "the server waited for the whole slow body"
    _get_ok(served.port)
    # The handler saw a client that left: a 4xx in the metrics, never a 500.
    series = 'notifier_http_requests_total{method="POST",route="/internal/events",status='
    for _ in range(100):
        text = httpx.get(f"http://127.0.0.1:{served.port}/metrics", timeout=10).text
        if series in text:
            break
        time.sleep(0.05)
    assert series + '"400"}' in text and series + '"500"}' not in text


def test_a_connection_serves_at_most_the_configured_requests(served: Served) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=PATIENCE)
    try:
        for i in range(3):
            conn.request("GET", "/openapi.json")
            r = conn.getresponse()
            r.read()
            assert r.status == 200
            assert (r.getheader("connection") == "close") == (i == 2)
        assert conn.sock is None or _read_all(conn.sock) == b""  # closed by the server
    finally:
        conn.close()


@pytest.fixture
def narrow(api_env: dict[str, str]) -> Iterator[Served]:
    """At most two connections or requests in flight; long header deadline."""
    yield from _serve(api_env, NOTIFIER_HTTP_LIMIT_CONCURRENCY="2",
                      NOTIFIER_HTTP_HEADER_TIMEOUT="60")  # fmt: skip


def test_beyond_the_concurrency_limit_a_request_answers_503_in_the_envelope(
    narrow: Served,
) -> None:
    idle = [narrow.connect(), narrow.connect()]
    try:
        r = httpx.get(f"http://127.0.0.1:{narrow.port}/openapi.json", timeout=10)
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "unavailable"
    finally:
        for sock in idle:
            sock.close()
    for _ in range(100):  # the server notices the closed sockets
        r = httpx.get(f"http://127.0.0.1:{narrow.port}/openapi.json", timeout=10)
        if r.status_code == 200:
            break
        time.sleep(0.05)
    assert r.status_code == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_notifier_api_process_cuts_a_silent_connection(api_env: dict[str, str]) -> None:
    port = _free_port()
    env = dict(api_env, NOTIFIER_PORT=str(port), NOTIFIER_HTTP_HEADER_TIMEOUT="1")
    cmd = [sys.executable, "-m", "notifier.cli", "api"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "api did not start"
                time.sleep(0.1)
        with sock:
            assert _read_all(sock).startswith(b"HTTP/1.1 408 ")
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
