"""1,000 fuzzed broker messages at a real `notifier router`: all dead-lettered, router alive."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import httpx
from neo4j import AsyncDriver

from notifier.devkit import services
from notifier.devkit.graphbuilder import GraphBuilder
from notifier.router import BadMessage, decode_message, queue_names
from tests.router.conftest import (
    Publish,
    cycle_done,
    events,
    feed,
    publish,
    signal_all,
    start_router,
    watch,
    write,
)

__all__ = ["publish"]  # the fixture, imported for this module's tests

COUNT = 1000
FIELDS = ("type", "service", "version", "completed_at")


def _valid() -> dict[str, Any]:
    return {
        "type": "import_completed",
        "service": "graphinator",
        "version": "20260301",
        "completed_at": "2026-03-01T00:00:00Z",
    }


def _dump(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def _truncated(rng: random.Random) -> bytes:
    raw = _dump(_valid())
    return raw[: rng.randrange(0, len(raw) - 1)]


def _wrong_type(rng: random.Random) -> bytes:
    doc = _valid()
    field = rng.choice(FIELDS)
    wrong: list[Any] = [rng.randint(-(10**12), 10**12), rng.random(), [1, "a"], {"x": 1}, True]
    if field != "completed_at":  # a null completed_at is allowed by the contract
        wrong.append(None)
    doc[field] = rng.choice(wrong)
    return _dump(doc)


def _missing(rng: random.Random) -> bytes:
    doc = _valid()
    for field in rng.sample(("type", "service", "version"), rng.randint(1, 3)):
        del doc[field]
    return _dump(doc)


def _unknown_type(rng: random.Random) -> bytes:
    doc = _valid()
    doc["type"] = rng.choice(["import_started", "", "IMPORT_COMPLETED", "x" * rng.randint(1, 50)])
    return _dump(doc)


def _huge(rng: random.Random) -> bytes:
    doc = _valid()
    doc[rng.choice(["service", "version", "padding"])] = "x" * (1_000_000 + rng.randint(0, 999))
    return _dump(doc)


def _binary(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randint(0, 512))


def _not_utf8(rng: random.Random) -> bytes:
    raw = _dump(_valid())
    cut = raw.index(b"graphinator") + rng.randint(0, 10)
    return raw[:cut] + rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80\x80"]) + raw[cut:]


def _nested(rng: random.Random) -> bytes:
    depth = rng.randint(50, 30_000)  # up to just under the 64 KiB message cap
    inner = "[" * depth + "]" * depth
    if rng.random() < 0.5:
        return inner.encode()
    doc = _valid()
    return _dump(doc).replace(b'"graphinator"', ('{"a": ' + inner + "}").encode())


def _bad_values(rng: random.Random) -> bytes:
    doc = _valid()
    field, value = rng.choice(
        [
            ("version", ""),
            ("version", "../etc/passwd"),
            ("version", "v 1"),
            ("version", "-v1"),
            ("version", "v" * 129),
            ("service", ""),
            ("service", "graph\ninator"),
            ("completed_at", "yesterday"),
            ("completed_at", "2026-13-45T99:00:00Z"),
        ]
    )
    doc[field] = value
    return _dump(doc)


def _not_an_object(rng: random.Random) -> bytes:
    return rng.choice([b"null", b"[]", b"42", b'"import_completed"', b"true", b"", b" ", b"[{}]"])


GENERATORS: list[Callable[[random.Random], bytes]] = [
    _truncated,
    _wrong_type,
    _missing,
    _unknown_type,
    _binary,
    _not_utf8,
    _nested,
    _bad_values,
    _not_an_object,
]


def fuzz(seed: int, n: int) -> list[bytes]:
    """n malformed completion messages, reproducible from `seed` (~2% of them ~1 MB)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        gen = _huge if i % 50 == 7 else rng.choice(GENERATORS)
        out.append(gen(rng))
    return out


async def _drain(url: str, dlq: str, want: int, limit: float = 90) -> list[bytes]:
    conn = await aio_pika.connect(url)
    got: list[bytes] = []
    try:
        channel = await conn.channel()
        queue = await channel.declare_queue(dlq, passive=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while len(got) < want and loop.time() < deadline:
            m = await queue.get(no_ack=True, fail=False)
            if m is None:
                await asyncio.sleep(0.05)
                continue
            got.append(m.body)
        # Anything beyond `want` would be a bug too: wait a moment and look again.
        await asyncio.sleep(0.5)
        while (m := await queue.get(no_ack=True, fail=False)) is not None:
            got.append(m.body)
    finally:
        await conn.close()
    return got


async def _health(port: int) -> int:
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            try:
                r = await client.get(f"http://127.0.0.1:{port}/health", timeout=2)
                if r.status_code == 200:
                    return r.status_code
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("router /health never answered 200")


def test_fuzz_is_malformed_and_reproducible() -> None:
    bodies = fuzz(8, COUNT)
    assert bodies == fuzz(8, COUNT)
    for body in bodies:
        try:
            decode_message(body)
        except BadMessage:
            continue
        raise AssertionError(f"generator made a valid message: {body[:200]!r}")


async def test_malformed_flood_is_dead_lettered_and_router_still_cycles(
    router_env: dict[str, str],
    publish: Publish,
    pg_url: str,
    rabbit_server: services.RabbitService,
    exchange_name: str,
    graph_driver: AsyncDriver,
    graph_db: str,
    tmp_path: Path,
) -> None:
    user = uuid.uuid4()
    watch(pg_url, user, "artist", "1")
    await write(graph_driver, graph_db, lambda g: g.artist("1", "A").release("100", artists=["1"]))
    port = int(router_env["NOTIFIER_PORT"])
    log = tmp_path / "router.log"
    proc = start_router(router_env, log)
    try:
        await _health(port)
        await signal_all(publish, "v1")
        await cycle_done(pg_url, "v1")  # the baseline

        bodies = fuzz(8, COUNT)
        for body in bodies:
            await publish(body)
        _, _, dlq = queue_names(exchange_name)
        dead = await _drain(rabbit_server.url, dlq, COUNT)
        assert proc.poll() is None, "router died under the flood"
        assert len(dead) == COUNT, (len(dead), COUNT)
        assert sorted(dead) == sorted(bodies)
        status = await _health(port)

        def second(g: GraphBuilder) -> None:
            g.release("101", artists=["1"])

        await write(graph_driver, graph_db, second)
        await signal_all(publish, "v2")
        await cycle_done(pg_url, "v2")
        assert [e[:3] for e in events(pg_url, "v2")] == [("new_releases", "artist", "1")]
        assert feed(pg_url, user) == [("new_releases", "1", "v2")]
        assert proc.poll() is None
    finally:
        proc.terminate()
        rc = proc.wait(30)
    assert rc == 0, log.read_text(errors="replace")[-3000:]
    huge = sum(1 for b in bodies if len(b) > 1_000_000)
    print(
        f"malformed flood: sent {COUNT} ({huge} of ~1 MB, "
        f"{sum(len(b) for b in bodies) // 1024} KiB in all), dead-lettered {len(dead)}, "
        f"lost {COUNT - len(dead)}; router alive, /health {status}, cycle v2 fired and done"
    )
