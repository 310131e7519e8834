"""The webhook client's transport: per-endpoint pools on asyncio-native streams."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from notifier.channels import asyncio_net
from notifier.channels.webhook import EndpointPools, WebhookOptions, WebhookSender, classify
from notifier.outbox import Job
from tests.delivery.conftest import new_secret
from tests.delivery.receiver import Plan, receiver

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[int]:
    """A loopback TCP server running `handler` per connection; yields its port."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def _read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n")
         if line.lower().startswith(b"content-length")), 0,
    )  # fmt: skip
    await reader.readexactly(length)


def client(pools: EndpointPools, **timeouts: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=pools, timeout=httpx.Timeout(5, **timeouts))


def local_port(r: httpx.Response) -> int:
    return int(r.extensions["network_stream"].get_extra_info("client_addr")[1])


async def test_one_pool_per_endpoint_and_idle_pools_are_dropped() -> None:
    pools = EndpointPools(allow_private=True, per_endpoint=2, max_pools=2)
    with receiver() as a, receiver() as b, receiver() as c:
        async with client(pools) as http:
            for r in (a, b):
                assert (await http.post(r.url, content=b"{}")).status_code == 200
            assert pools.pools == 2
            assert (await http.post(c.url, content=b"{}")).status_code == 200
            assert pools.pools == 1  # a's and b's idle pools went when c needed one
            assert (await http.post(a.url, content=b"{}")).status_code == 200
            assert pools.pools == 2
        assert pools.pools == 0
    assert [len(r.requests) for r in (a, b, c)] == [2, 1, 1]


async def test_a_kept_alive_connection_is_reused_until_the_server_closes_it() -> None:
    served = []

    async def answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(OK)  # no "Connection: close": the client thinks it may reuse it
        await writer.drain()
        served.append(writer.get_extra_info("peername")[1])
        await asyncio.sleep(0.05)
        writer.close()

    pools = EndpointPools(allow_private=True, per_endpoint=1, max_pools=8)
    with receiver() as r:
        async with client(pools) as http:
            first = await http.post(r.url, content=b"{}")
            second = await http.post(r.url, content=b"{}")
            assert local_port(first) == local_port(second)
    async with raw_server(answer_then_close) as port, client(pools) as http:
        url = f"http://127.0.0.1:{port}/hook"
        assert (await http.post(url, content=b"{}")).status_code == 200
        await asyncio.sleep(0.3)  # the server has closed the idle connection by now
        assert (await http.post(url, content=b"{}")).status_code == 200
    assert len(served) == 2 and served[0] != served[1]


async def test_tls_to_a_plain_server_is_a_tls_error() -> None:
    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    async with raw_server(plain) as port:
        pools = EndpointPools(allow_private=True, per_endpoint=1, max_pools=8)
        async with client(pools) as http:
            with pytest.raises(httpx.ConnectError) as caught:
                await http.post(f"https://127.0.0.1:{port}/hook", content=b"{}")
    assert classify(caught.value) == "tls_error"


async def test_silence_is_a_read_timeout_and_a_refusal_a_connect_error() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)

    pools = EndpointPools(allow_private=True, per_endpoint=1, max_pools=8)
    async with raw_server(silent) as port, client(pools, read=0.2) as http:
        with pytest.raises(httpx.ReadTimeout) as caught:
            await http.post(f"http://127.0.0.1:{port}/hook", content=b"{}")
        assert classify(caught.value) == "timeout"
    async with raw_server(silent) as port:
        pass  # closed: nothing listens on `port` any more
    async with client(pools) as http:
        with pytest.raises(httpx.ConnectError):
            await http.post(f"http://127.0.0.1:{port}/hook", content=b"{}")


async def test_a_reset_mid_answer_is_a_read_error() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        writer.transport.abort()  # RST, not FIN

    pools = EndpointPools(allow_private=True, per_endpoint=1, max_pools=8)
    async with raw_server(reset) as port, client(pools) as http:
        with pytest.raises(httpx.TransportError) as caught:
            await http.post(f"http://127.0.0.1:{port}/hook", content=b"{}")
    assert classify(caught.value) in {"protocol_error", "transport_error: ReadError"}


def _job(url: str) -> Job:
    return Job(
        outbox_id=1, claim_token=uuid.uuid4(), user_id=uuid.uuid4(), channel="webhook",
        attempts=1, webhook_id=uuid.uuid4(), message_id=uuid.uuid4(), event_id=uuid.uuid4(),
        event="new_releases",
        entity_type="artist", entity_id="1", entity_name="A", detail_json="{}",
        version="20260101", timestamp="2026-01-01T00:00:00Z", cancelled=False,
        url=url, webhook_active=True, secrets=(new_secret(),), email=None,
    )  # fmt: skip


async def test_cookies_from_receivers_are_never_kept() -> None:
    def cookie(_: object) -> Plan:
        return Plan(200, headers={"Set-Cookie": f"s={uuid.uuid4()}; Path=/"})

    sender = WebhookSender(WebhookOptions(allow_private=True))
    with receiver(cookie) as r:
        for _ in range(3):
            sent = await sender.send(_job(r.url))
            assert sent.result.status_code == 200
        await sender.aclose()
    assert len(r.requests) == 3
    assert all("cookie" not in {k.lower() for k in q.headers} for q in r.requests)
    assert len(sender._client.cookies.jar) == 0


async def test_a_row_waiting_for_a_global_slot_is_released_by_its_deadline() -> None:
    options = WebhookOptions(allow_private=True, concurrency=1, per_endpoint=1, max_wait=0.3,
                             total_timeout=3, read_timeout=3)  # fmt: skip
    sender = WebhookSender(options)
    with receiver(lambda _: Plan(hang=2)) as slow, receiver() as fast:
        hanging = asyncio.create_task(sender.send(_job(slow.url)))
        await asyncio.sleep(0.2)  # the hanging request holds the only global slot
        waited = await sender.send(_job(fast.url))
        assert waited.deferred and waited.result.retry_after == 1.0
        assert (await hanging).result.status_code == 200
        assert (await sender.send(_job(fast.url))).result.status_code == 200  # slots given back
        await sender.aclose()
    assert len(fast.requests) == 1


async def test_writes_are_gathered_until_the_read_and_a_big_body_goes_out_in_full() -> None:
    received: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(1 << 20):
            received.append(chunk)
            if chunk.endswith(b"end"):
                writer.write(b"ok")
                await writer.drain()

    async with raw_server(record) as port:
        stream = await asyncio_net.connect_tcp("127.0.0.1", port, timeout=5)
        await stream.write(b"head\r\n\r\n", timeout=5)
        await stream.write(b"body-end", timeout=5)
        await asyncio.sleep(0.2)
        assert received == []  # nothing sent before the answer is read
        assert await stream.read(100, timeout=5) == b"ok"
        assert received == [b"head\r\n\r\nbody-end"]  # one send
        big = b"x" * (3 << 20)  # beyond the gathering limit: written as it goes
        await stream.write(big + b"end", timeout=5)
        assert await stream.read(100, timeout=5) == b"ok"
        assert sum(map(len, received[1:])) == len(big) + 3
        await stream.aclose()
        assert stream.get_extra_info("is_readable")  # closed: never reused
    pools = EndpointPools(allow_private=True, per_endpoint=1, max_pools=8)
    with receiver() as r:
        async with client(pools) as http:
            assert (await http.post(r.url, content=big)).status_code == 200
    assert r.requests[0].body == big


async def test_requests_queue_for_the_endpoint_cap_and_closing_answers_are_not_reused() -> None:
    peers: list[int] = []
    answers = [
        OK,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        OK + b"HTTP/1.1 200 OK\r\n",  # bytes beyond the answer: the connection is spoilt
        OK,
        OK,
    ]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while answers:
                await _read_request(reader)
                peers.append(writer.get_extra_info("peername")[1])
                answer = answers.pop(0)
                writer.write(answer)
                await writer.drain()
                if b"close" in answer:
                    break
        writer.close()

    pools = EndpointPools(allow_private=True, per_endpoint=1, max_pools=8)
    async with raw_server(serve) as port, client(pools) as http:
        url = f"http://127.0.0.1:{port}/hook"
        got = await asyncio.gather(*(http.post(url, content=b"{}") for _ in range(3)))
        assert [r.status_code for r in got] == [200, 200, 200]  # one connection at a time
        assert (await http.post(url, content=b"{}")).status_code == 200
        assert (await http.post(url, content=b"{}")).status_code == 200
    # 1st reused by the 2nd, which closed; 3rd on a new one, spoilt; 4th and 5th share one.
    assert peers[0] == peers[1] != peers[2] != peers[3] == peers[4]


async def test_a_stream_waits_for_a_slow_reader_and_pauses_a_fast_writer() -> None:
    sent = b"y" * (4 << 20)

    async def slow_then_flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.3)  # not reading: the client's big write must wait
        await reader.readexactly(16 << 20)
        writer.write(sent)
        await writer.drain()
        writer.close()

    async with raw_server(slow_then_flood) as port:
        stream = await asyncio_net.connect_tcp("127.0.0.1", port, timeout=5)
        await stream.write(b"x" * (16 << 20), timeout=10)
        await asyncio.sleep(0.3)  # the answer piles up unread: reading pauses
        got = bytearray()
        while chunk := await stream.read(64 * 1024, timeout=10):
            assert len(chunk) <= 64 * 1024
            got += chunk
        await stream.aclose()
    assert bytes(got) == sent


async def test_the_senders_direct_post_reads_a_bounded_answer_and_reuses_only_whole_ones() -> None:
    peers: list[int] = []
    heads: list[bytes] = []
    answers = [
        b"HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nContent-Length: 2\r\n\r\nno",
        OK,  # reuses the first connection
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789",  # longer than read: closed
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        OK,
    ]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while answers:
                head = await reader.readuntil(b"\r\n\r\n")
                heads.append(head)
                await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r")[0]))
                peers.append(writer.get_extra_info("peername")[1])
                writer.write(answers.pop(0))
                await writer.drain()
        writer.close()

    pools = EndpointPools(allow_private=True, per_endpoint=1, max_pools=8)
    timeouts: dict[str, float | None] = {"pool": 5, "connect": 5, "read": 5, "write": 5}
    async with raw_server(serve) as port:
        url = httpx.URL(f"http://127.0.0.1:{port}/hook?a=1")
        headers = [(b"Host", url.netloc), (b"Content-Length", b"2"), (b"webhook-id", b"m1")]
        got = [await pools.post(url, headers, b"{}", timeouts, 4) for _ in range(5)]
        await pools.aclose()
    assert [(a.status_code, a.retry_after, a.body) for a in got] == [
        (429, "7", b"no"), (200, None, b"ok"), (200, None, b"0123"), (200, None, b"ok"),
        (200, None, b"ok"),
    ]  # fmt: skip
    assert heads[0].startswith(b"POST /hook?a=1 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{port}\r\n".encode() in heads[0] and b"webhook-id: m1\r\n" in heads[0]
    # One connection for the first three; the 3rd's answer was read short, so it was closed,
    # and the 4th's said close: the 4th and the 5th each on a new one.
    assert peers[0] == peers[1] == peers[2] != peers[3] != peers[4], peers
