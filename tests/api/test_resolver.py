"""Webhook host lookups run on a bounded resolver with a hard deadline: a black-holed
name neither exhausts threads nor stalls PostgreSQL connects or the API.

A name server that never answers cannot be set up per test (resolv.conf is
global), so the lookup function is replaced at the lowest level by one that
really blocks its thread until the test releases it, as getaddrinfo does for
a black-holed name; the pool, the deadline and the callers are the real ones.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpcore
import httpx
import psycopg
import pytest

from notifier.channels.webhook import GuardedBackend
from notifier.resolver import Resolver, ResolveTimeout
from tests.api.conftest import bearer, serve


class BlackHole:
    """A lookup that blocks its thread until released; counts the threads inside it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.inside = 0
        self.most = 0
        self.entered = 0

    def __call__(self, host: str, port: int) -> list[tuple[Any, ...]]:
        with self.lock:
            self.inside += 1
            self.entered += 1
            self.most = max(self.most, self.inside)
        try:
            self.release.wait(60)
            raise OSError(-2, "Name or service not known")
        finally:
            with self.lock:
                self.inside -= 1


async def test_black_holed_names_time_out_on_at_most_the_resolvers_threads(pg_url: str) -> None:
    hole = BlackHole()
    resolver = Resolver(threads=2, timeout=0.5, lookup=hole)
    try:
        results = await asyncio.gather(
            *(resolver.resolve(f"h{i}.blackhole.example", 443) for i in range(20)),
            return_exceptions=True,
        )
        assert all(isinstance(r, ResolveTimeout) for r in results), results
        assert hole.most == 2 and hole.entered == 2  # the queued ones never started
        # The default executor is untouched: the loop still resolves, psycopg still connects.
        loop = asyncio.get_running_loop()
        assert await loop.getaddrinfo("localhost", 5432)
        async with await psycopg.AsyncConnection.connect(pg_url, connect_timeout=10) as conn:
            assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
    finally:
        hole.release.set()
        resolver.close()


async def test_delivery_connects_give_up_on_a_black_holed_name() -> None:
    hole = BlackHole()
    backend = GuardedBackend(allow_private=False,
                             resolver=Resolver(threads=1, timeout=30, lookup=hole))  # fmt: skip
    try:
        with pytest.raises(httpcore.ConnectTimeout):
            await backend.connect_tcp("hook.blackhole.example", 443, timeout=0.5)
        assert hole.entered == 1
    finally:
        hole.release.set()
        backend.resolver.close()


@pytest.fixture
async def strict_api(api_env: dict[str, str]) -> AsyncIterator[tuple[str, Any]]:
    """The API with the SSRF guard on (private addresses refused, so hosts are resolved)."""
    server, url, app = serve(dict(api_env, NOTIFIER_WEBHOOK_ALLOW_PRIVATE="false"))
    try:
        yield url, app
    finally:
        server.stop()


async def test_registering_black_holed_hosts_answers_422_and_the_api_keeps_serving(
    strict_api: tuple[str, Any],
) -> None:
    url, app = strict_api
    hole = BlackHole()
    app.state.ctx.resolver = Resolver(threads=2, timeout=0.5, lookup=hole)
    user = uuid.uuid4()
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            hosts = [f"https://h{i}.blackhole.example/hook" for i in range(8)]
            posts = [client.post("/api/webhooks", headers=bearer(user), json={"url": u})
                     for u in hosts]  # fmt: skip
            listing = client.get("/api/watchlist", headers=bearer(user))
            answers = await asyncio.gather(*posts, listing)
        for r in answers[:-1]:
            assert r.status_code == 422
            assert r.json()["error"]["message"].endswith("the host did not resolve in time")
        assert answers[-1].status_code == 200
        assert hole.most <= 2
    finally:
        hole.release.set()
        app.state.ctx.resolver.close()
