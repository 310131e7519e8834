"""SSE: events from any replica (two `notifier api` processes), heartbeats, replay,
clean disconnects."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import psycopg
import pytest

from tests.api.conftest import SERVICE, Api, bearer, seed_feed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Events:
    """Reads `event:`/`data:` blocks (and heartbeat comments) off an SSE response."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.aiter_lines()
        self.comments = 0

    async def next(self, wait: float = 15.0) -> tuple[str, Any, str | None]:
        return await asyncio.wait_for(self._next(), wait)

    async def _next(self) -> tuple[str, Any, str | None]:
        name, data, event_id = None, None, None
        async for line in self.lines:
            if line.startswith(":"):
                self.comments += 1
            elif line.startswith("event: "):
                name = line[7:]
            elif line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
            elif line == "" and name is not None:
                return name, data, event_id
        raise EOFError("stream ended")

    async def until(self, name: str) -> tuple[Any, str | None]:
        while True:
            got, data, event_id = await self.next()
            if got == name:
                return data, event_id


@asynccontextmanager
async def sse(url: str, user: uuid.UUID, **headers: str) -> AsyncIterator[Events]:
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(30, read=30)) as client:
        h = bearer(user) | headers
        async with client.stream("GET", "/api/notifications/stream", headers=h) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            yield Events(r)


@pytest.fixture
def replicas(
    api_env: dict[str, str], pg_url: str
) -> Iterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    """Two `notifier api` processes on the same database."""
    procs, urls = [], []
    for name in ("a", "b"):
        port = _free_port()
        env = dict(api_env, NOTIFIER_PORT=str(port), NOTIFIER_REPLICA=f"api-{name}")
        cmd = [sys.executable, "-m", "notifier.cli", "api"]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        )
        urls.append(f"http://127.0.0.1:{port}")
    try:
        for url, proc in zip(urls, procs, strict=True):
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                try:
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "api replica did not start"
                time.sleep(0.1)
        yield list(zip(urls, procs, strict=True))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            assert proc.wait(20) == 0  # SIGTERM with a stream open still exits cleanly


async def test_notification_created_on_one_replica_streams_from_another(
    replicas: list[tuple[str, subprocess.Popen[bytes]]], user: uuid.UUID
) -> None:
    (a, _), (b, _) = replicas
    async with sse(b, user) as events:
        assert await events.until("notification.count") == ({"count": 0}, None)
        body = {"user_ids": [str(user)], "event": "price_drop", "entity_type": "release",
                "entity_id": "7", "entity_name": "Blue Train", "detail": {"p": 1},
                "idempotency_key": uuid.uuid4().hex}  # fmt: skip
        async with httpx.AsyncClient(base_url=a) as client:
            r = await client.post("/internal/events", json=body, headers=SERVICE)
            assert r.status_code == 202, r.text
            note, event_id = await events.until("notification")
            assert note["event"] == "price_drop" and note["entity_name"] == "Blue Train"
            assert note["detail"] == {"p": 1} and event_id == str(note["id"])
            assert (await events.until("notification.count"))[0] == {"count": 1}
            # Read on replica A: replica B's stream hears of it (cross-tab sync).
            r = await client.post(f"/api/notifications/{note['id']}/read", headers=bearer(user))
            assert r.status_code == 200
            assert (await events.until("notification.read"))[0] == {"ids": [note["id"]],
                                                                      "all": False}  # fmt: skip
            assert (await events.until("notification.count"))[0] == {"count": 0}
            # Another user's notification never shows up on this stream.
            other = dict(body, user_ids=[str(uuid.uuid4())], idempotency_key=uuid.uuid4().hex)
            await client.post("/internal/events", json=other, headers=SERVICE)
            mine = dict(body, entity_name="Mine", idempotency_key=uuid.uuid4().hex)
            await client.post("/internal/events", json=mine, headers=SERVICE)
            note, _ = await events.until("notification")
            assert note["entity_name"] == "Mine"
            await client.post("/api/notifications/read-all", headers=bearer(user))
            assert (await events.until("notification.read"))[0] == {"ids": None, "all": True}


def _connections(pg_url: str) -> int:
    db = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (db,),
        ).fetchone()
    return int(row[0]) if row else 0


async def test_heartbeat_replay_and_clean_disconnect(api: Api, user: uuid.UUID) -> None:
    hub = api.app.state.ctx.hub
    seed_feed(api.pg_url, user, 5)
    page = (await api.client.get("/api/notifications", headers=bearer(user))).json()
    ids = [n["id"] for n in page["items"]]
    # Before the stream opens: the heartbeats count from its first frame, and
    # what runs between that frame and the loop below takes time on a busy machine.
    started = time.monotonic()
    async with sse(api.url, user) as events:
        await events.until("notification.count")
        before = _connections(api.pg_url)
        assert hub.connected == 1
        # Nothing happens: heartbeat comments keep the stream alive (0.5 s in tests).
        async for line in events.lines:
            if line.startswith(":"):
                events.comments += 1
            if events.comments == 2:
                break
        assert time.monotonic() - started >= 0.9
        assert hub.connected == 1
    # Reconnect with Last-Event-ID: the two newer notifications are replayed first.
    async with sse(api.url, user, **{"Last-Event-ID": str(ids[2])}) as events:
        replayed = [(await events.next())[2], (await events.next())[2]]
        assert replayed == [str(ids[1]), str(ids[0])]
        assert (await events.next())[:2] == ("notification.count", {"count": 5})
    for _ in range(50):
        if hub.connected == 0:
            break
        await asyncio.sleep(0.1)
    assert hub.connected == 0 and hub.subscribers == {}
    assert _connections(api.pg_url) <= before
    metrics = (await api.client.get("/metrics")).text
    assert "notifier_sse_clients 0.0" in metrics


async def test_many_streams_are_limited_per_user(api: Api, user: uuid.UUID) -> None:
    from notifier.api.sse import MAX_STREAMS_PER_USER

    opened: list[Any] = []
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
    async with httpx.AsyncClient(base_url=api.url, timeout=30, limits=limits) as client:
        for _ in range(MAX_STREAMS_PER_USER):
            cm = client.stream("GET", "/api/notifications/stream", headers=bearer(user))
            r = await cm.__aenter__()
            events = Events(r)  # kept: a collected line iterator closes its stream
            opened.append((cm, events))
            await events.until("notification.count")
        r = await client.get("/api/notifications/stream", headers=bearer(user))
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert api.app.state.ctx.hub.streams_of(user) == MAX_STREAMS_PER_USER
        for cm, _ in opened:
            await cm.__aexit__(None, None, None)


def _listener_pids(pg_url: str) -> list[int]:
    db = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND query LIKE 'LISTEN%%'", (db,)
        ).fetchall()
    return [r[0] for r in rows]


async def test_a_lost_listen_connection_ends_the_streams_and_clients_catch_up(
    api: Api, user: uuid.UUID
) -> None:
    async def notify(key: str) -> None:
        body = {"user_ids": [str(user)], "event": "price_drop", "idempotency_key": key}
        r = await api.client.post("/internal/events", json=body, headers=SERVICE)
        assert r.status_code == 202

    async with sse(api.url, user) as events:
        await events.until("notification.count")
        await notify("before")
        _, last_id = await events.until("notification")
        old = _listener_pids(api.pg_url)
        assert len(old) == 1
        with psycopg.connect(api.pg_url) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (old[0],))
        with pytest.raises(EOFError):  # the stream ends: it would miss what comes meanwhile
            while True:
                await events.next()
    await notify("while-deaf")
    async with sse(api.url, user, **{"Last-Event-ID": str(last_id)}) as events:
        note, _ = await events.until("notification")
        assert note["event"] == "price_drop" and int(note["id"]) > int(str(last_id))
    for _ in range(100):
        new = _listener_pids(api.pg_url)
        if new and new != old and api.app.state.ctx.hub.ready.is_set():
            break
        await asyncio.sleep(0.1)
    assert new and new != old
    async with sse(api.url, user) as events:  # and live notifications flow again
        await events.until("notification.count")
        await notify("after")
        note, _ = await events.until("notification")
        assert note["event"] == "price_drop"


async def test_a_stream_ends_when_its_token_expires(api: Api, user: uuid.UUID) -> None:
    short = bearer(user, exp_in=3)
    async with sse(api.url, user, **short) as events:
        await events.until("notification.count")
        with pytest.raises(EOFError):  # heartbeats every 0.5 s would go on forever
            while True:
                await events.next(wait=20)
    assert api.app.state.ctx.hub.streams_of(user) == 0


async def test_concurrent_connects_cannot_exceed_the_per_user_stream_limit(
    api: Api, user: uuid.UUID
) -> None:
    from notifier.api.sse import MAX_STREAMS_PER_USER

    limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
    async with httpx.AsyncClient(base_url=api.url, timeout=30, limits=limits) as client:
        requests = [client.build_request("GET", "/api/notifications/stream",
                                         headers=bearer(user)) for _ in range(25)]  # fmt: skip
        answers = await asyncio.gather(*(client.send(q, stream=True) for q in requests))
        try:
            statuses = sorted(r.status_code for r in answers)
            assert statuses.count(200) == MAX_STREAMS_PER_USER, statuses
            assert statuses.count(429) == 25 - MAX_STREAMS_PER_USER
            assert api.app.state.ctx.hub.streams_of(user) == MAX_STREAMS_PER_USER
        finally:
            for r in answers:
                await r.aclose()
    for _ in range(100):  # every slot is given back
        if api.app.state.ctx.hub.streams_of(user) == 0:
            break
        await asyncio.sleep(0.05)
    assert api.app.state.ctx.hub.streams_of(user) == 0


async def test_sigterm_ends_open_streams_and_exits_zero(
    replicas: list[tuple[str, subprocess.Popen[bytes]]], user: uuid.UUID
) -> None:
    b, proc = replicas[1]
    async with sse(b, user) as events:
        await events.until("notification.count")
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        with pytest.raises((EOFError, httpx.RemoteProtocolError)):
            while True:
                await events.next()
        # The stream ended well before the 10 s grace period (timed from the signal).
        assert time.monotonic() - signalled < 8
    assert proc.wait(20) == 0


async def test_bursts_and_malformed_notifications(api: Api, user: uuid.UUID) -> None:
    async with sse(api.url, user) as events:
        await events.until("notification.count")
        with psycopg.connect(api.pg_url, autocommit=True) as conn:
            for bad in ("garbage", '{"event_id": "not-a-uuid"}', "[]", '{"x": 1}'):
                conn.execute("SELECT pg_notify('notifier_feed', %s)", (bad,))
                conn.execute("SELECT pg_notify('notifier_read', %s)", (bad,))
        # 30 events in quick succession arrive, in order, on the same stream.
        for i in range(30):
            body = {"user_ids": [str(user)], "event": "price_drop", "entity_id": str(i),
                    "idempotency_key": f"burst-{i}"}  # fmt: skip
            r = await api.client.post("/internal/events", json=body, headers=SERVICE)
            assert r.status_code == 202
        got = []
        while len(got) < 30:
            note, _ = await events.until("notification")
            got.append(note["entity_id"])
        assert got == [str(i) for i in range(30)]
        assert api.app.state.ctx.hub.connected == 1
