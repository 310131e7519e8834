"""API fixtures: the real app under uvicorn on a loopback port, and a client."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from starlette.applications import Starlette

from notifier import config
from notifier.api.app import create_app

JWT_KEY = "test-jwt-secret-key-that-is-long-enough-for-hs256"
SERVICE_TOKEN = "service-token-for-tests-0123456789"


def token(sub: str | uuid.UUID, *, key: str = JWT_KEY, exp_in: float = 600, **claims: Any) -> str:
    """An HS256 user token."""
    payload: dict[str, Any] = {
        "sub": str(sub),
        "exp": datetime.now(UTC) + timedelta(seconds=exp_in),
    }
    payload.update(claims)
    return jwt.encode(payload, key, algorithm="HS256")


def bearer(sub: str | uuid.UUID, **claims: Any) -> dict[str, str]:
    """The Authorization header of a user token."""
    return {"Authorization": f"Bearer {token(sub, **claims)}"}


SERVICE = {"Authorization": f"Bearer {SERVICE_TOKEN}"}


class ThreadServer:
    """uvicorn serving an app on 127.0.0.1:<free port> in a thread of its own."""

    def __init__(self, app: Starlette) -> None:
        cfg = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_config=None,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)


@dataclass
class Api:
    """A running API and what tests need around it."""

    url: str
    app: Starlette
    settings: config.Settings
    pg_url: str
    client: httpx.AsyncClient


@pytest.fixture
def api_env(notifier_env: dict[str, str]) -> dict[str, str]:
    """The environment of the API under test (rate limit and send quota off unless a test
    sets them)."""
    env = dict(notifier_env)
    env.update(NOTIFIER_SERVICE_TOKEN=SERVICE_TOKEN, NOTIFIER_API_RATE_LIMIT="0",
               NOTIFIER_API_SEND_QUOTA="0")  # fmt: skip
    return env


def serve(env: dict[str, str], **kwargs: Any) -> tuple[ThreadServer, str, Starlette]:
    """Start an app for `env`; the caller stops the server."""
    settings = config.load(env, role="api")
    app = create_app(settings, heartbeat_seconds=kwargs.pop("heartbeat_seconds", 0.5))
    server = ThreadServer(app)
    return server, server.start(), app


@pytest.fixture
async def api(api_env: dict[str, str], pg_url: str) -> AsyncIterator[Api]:
    """The API app running on loopback against this test's database and graph."""
    server, url, app = serve(api_env)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield Api(url, app, config.load(api_env, role="api"), pg_url, client)
    finally:
        server.stop()


@pytest.fixture
def user() -> Iterator[uuid.UUID]:
    """A fresh user id."""
    yield uuid.uuid4()


SEED_EVENTS = """
INSERT INTO notifier.events (dedup_key, source, version, event, entity_type, entity_id,
                             entity_name, detail, fanned_out_at)
SELECT 'seed:' || %(tag)s || ':' || g, 'router', '20260201', %(event)s, 'artist', g::text,
       'Artist ' || g,
       jsonb_build_object('new_release_count', g, 'release_ids', jsonb_build_array(g::text)),
       now()
FROM generate_series(1, %(n)s) AS g
"""
SEED_FEED = """
INSERT INTO notifier.notification_events (user_id, event_id)
SELECT %(user)s, id FROM notifier.events WHERE dedup_key LIKE 'seed:' || %(tag)s || ':%%'
ORDER BY entity_id::int
"""


def seed_feed(pg_url: str, user: uuid.UUID, n: int, event: str = "new_releases") -> None:
    """Give `user` n unread notifications (entity ids 1..n, oldest first)."""
    import psycopg

    params = {"tag": uuid.uuid4().hex, "event": event, "n": n, "user": user}
    with psycopg.connect(pg_url) as conn:
        conn.execute(SEED_EVENTS, params)
        conn.execute(SEED_FEED, params)  # counted live until folded (sql/005_fanout.sql)
