"""/health (503 when PostgreSQL or the graph is down) and /metrics."""

from __future__ import annotations

import socket
import uuid

import httpx
import psycopg

from tests.api.conftest import Api, bearer, seed_feed, serve


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])  # nothing listens there once closed


async def test_healthy(api: Api) -> None:
    r = await api.client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "healthy", "checks": {"postgres": "ok", "graph": "ok"}}


async def test_database_down(api_env: dict[str, str], pg_url: str) -> None:
    env = dict(api_env, POSTGRES_PORT=_closed_port())
    server, url, _ = serve(env)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            r = await client.get("/health")
            assert r.status_code == 503
            body = r.json()
            assert body["status"] == "unhealthy" and body["checks"]["graph"] == "ok"
            assert body["checks"]["postgres"].startswith("down")
            r = await client.get("/api/notifications/unread-count", headers=bearer(uuid.uuid4()))
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "database_unavailable"
    finally:
        server.stop()


async def test_graph_down(api_env: dict[str, str], pg_url: str) -> None:
    env = dict(api_env, NEO4J_PORT=_closed_port())
    server, url, _ = serve(env)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            r = await client.get("/health")
            assert r.status_code == 503
            assert r.json()["checks"]["postgres"] == "ok"
            assert r.json()["checks"]["graph"].startswith("down")
            body = {"entity_type": "artist", "entity_id": "1"}
            r = await client.post("/api/watchlist", json=body, headers=bearer(uuid.uuid4()))
            assert r.status_code == 503 and r.json()["error"]["code"] == "graph_unavailable"
    finally:
        server.stop()


async def test_metrics(api: Api, user: uuid.UUID) -> None:
    seed_feed(api.pg_url, user, 2)
    h = bearer(user)
    items = (await api.client.get("/api/notifications", headers=h)).json()["items"]
    for n in items:
        await api.client.get(f"/api/notifications/{n['id']}", headers=h)
    await api.client.get("/no/such/route")
    with psycopg.connect(api.pg_url) as conn:
        event = conn.execute(
            "INSERT INTO notifier.events (dedup_key, source, event) VALUES ('m', 'ping', 'ping')"
            " RETURNING id"
        ).fetchone()
        assert event is not None
        conn.execute(
            "INSERT INTO notifier.outbox (user_id, event_id, next_attempt_at)"
            " VALUES (%s, %s, now()), (%s, %s, now() + interval '1 hour')",
            (user, event[0], uuid.uuid4(), event[0]),
        )
    r = await api.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert (
        'notifier_http_requests_total{method="GET",route="/api/notifications/{id:int}",'
        'status="200"} 2.0' in text
    )
    assert 'route="<unmatched>",status="404"' in text
    assert (
        'notifier_http_request_duration_seconds_count{method="GET",'
        'route="/api/notifications"} 1.0' in text
    )
    assert "notifier_outbox_pending 2.0" in text and "notifier_outbox_due 1.0" in text


async def test_invented_methods_share_one_metric_series(api: Api) -> None:
    for method in ("BREW", "PROPFIND", "X" * 50):
        r = await api.client.request(method, "/api/notifications")
        assert r.status_code in (401, 405)
    text = (await api.client.get("/metrics")).text
    assert 'method="OTHER"' in text
    assert "BREW" not in text and "PROPFIND" not in text and "X" * 50 not in text


async def test_a_flood_of_health_and_metrics_calls_probes_the_databases_once(api: Api) -> None:
    import asyncio

    from notifier.api.health import HEALTH_CACHE_SECONDS

    async def flood(path: str) -> list[int]:
        answers = await asyncio.gather(*(api.client.get(path) for _ in range(50)))
        return [r.status_code for r in answers]

    assert (await api.client.get("/health")).status_code == 200
    cache = api.app.state.health_cache
    metrics = api.app.state.ctx.metrics
    before = cache.probes
    assert await flood("/health") == [200] * 50
    assert await flood("/metrics") == [200] * 50
    assert cache.probes - before <= 1  # the cache may expire once during the flood, no more
    # Stale after the cache's life: the next calls probe again, once.
    await asyncio.sleep(HEALTH_CACHE_SECONDS + 0.2)
    before = cache.probes
    assert await flood("/health") == [200] * 50
    assert cache.probes - before == 1
    refreshed = metrics.refreshed_at
    await flood("/metrics")
    assert metrics.refreshed_at > refreshed
