"""Fair limits: caps that hold under concurrency, the send quota, idempotency keys
per calling service, and PostgreSQL sessions that cannot wait forever."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest

from notifier import config, db
from notifier.api.watchlist import IMPORT_LOCK, MAX_SEARCH_WATCHES_PER_USER, MAX_WATCHES_PER_USER
from tests.api.conftest import SERVICE, Api, bearer, serve

SEED = """
INSERT INTO notifier.watchlists (user_id, entity_type, entity_id, entity_name)
SELECT %(user)s, %(type)s, 'seed-' || g, 'Seed ' || g FROM generate_series(1, %(n)s) g
"""


def _seed(pg_url: str, user: uuid.UUID, entity_type: str, n: int) -> None:
    with psycopg.connect(pg_url) as conn:
        conn.execute(SEED, {"user": user, "type": entity_type, "n": n})


async def _post_searches(api: Api, user: uuid.UUID, n: int) -> list[int]:
    posts = [api.client.post("/api/watchlist", headers=bearer(user),
                             json={"entity_type": "search", "options": {"q": f"query {i}"}})
             for i in range(n)]  # fmt: skip
    return sorted(r.status_code for r in await asyncio.gather(*posts))


async def test_the_watch_cap_holds_under_concurrent_requests(api: Api, user: uuid.UUID) -> None:
    _seed(api.pg_url, user, "genre", MAX_WATCHES_PER_USER - 1)
    statuses = await _post_searches(api, user, 20)
    assert statuses == [201] + [409] * 19
    with psycopg.connect(api.pg_url) as conn:
        n = conn.execute("SELECT count(*) FROM notifier.watchlists WHERE user_id = %s", (user,))
        assert n.fetchone() == (MAX_WATCHES_PER_USER,)


async def test_saved_searches_have_their_own_smaller_cap(api: Api, user: uuid.UUID) -> None:
    assert MAX_SEARCH_WATCHES_PER_USER < MAX_WATCHES_PER_USER
    _seed(api.pg_url, user, "search", MAX_SEARCH_WATCHES_PER_USER - 1)
    statuses = await _post_searches(api, user, 20)
    assert statuses == [201] + [409] * 19
    one_more = {"entity_type": "search", "options": {"q": "one more"}}
    r = await api.client.post("/api/watchlist", headers=bearer(user), json=one_more)
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "watchlist_full"
    assert "saved searches" in r.json()["error"]["message"]


@pytest.fixture
async def quota_api(api_env: dict[str, str], pg_url: str) -> AsyncIterator[Api]:
    """The API with a send quota of 3 at once, 1 an hour; 1 s lock timeout."""
    env = dict(api_env, NOTIFIER_API_SEND_QUOTA="1", NOTIFIER_API_SEND_BURST="3",
               NOTIFIER_PG_LOCK_TIMEOUT="1")  # fmt: skip
    server, url, app = serve(env)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield Api(url, app, config.load(env, role="api"), pg_url, client)
    finally:
        server.stop()


async def _endpoint(api: Api, user: uuid.UUID) -> str:
    r = await api.client.post("/api/webhooks", headers=bearer(user),
                              json={"url": "http://127.0.0.1:9/hook"})  # fmt: skip
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def test_test_pings_redeliveries_and_recoveries_share_a_per_user_quota(
    quota_api: Api, user: uuid.UUID
) -> None:
    api = quota_api
    hook = await _endpoint(api, user)
    h = bearer(user)
    assert (await api.client.post("/api/webhook/test", headers=h)).status_code == 202
    assert (await api.client.post(f"/api/webhooks/{hook}/test", headers=h)).status_code == 202
    since = {"since": "2020-01-01T00:00:00Z"}
    r = await api.client.post(f"/api/webhooks/{hook}/recover", headers=h, json=since)
    assert r.status_code == 202
    refused: list[Any] = [
        await api.client.post("/api/webhook/test", headers=h),
        await api.client.post(f"/api/webhooks/{hook}/test", headers=h),
        await api.client.post(f"/api/webhooks/{hook}/recover", headers=h, json=since),
        await api.client.post("/api/webhook/deliveries/1/redeliver", headers=h),
    ]
    for r in refused:
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "rate_limited"
        assert int(r.headers["retry-after"]) >= 1
    other = uuid.uuid4()  # the quota is per user
    await _endpoint(api, other)
    assert (await api.client.post("/api/webhook/test", headers=bearer(other))).status_code == 202


async def test_api_sessions_give_up_waiting_for_a_lock(quota_api: Api, user: uuid.UUID) -> None:
    api = quota_api
    body = {"entity_type": "search", "options": {"q": "locked"}}
    with psycopg.connect(api.pg_url) as holder:  # a transaction holding the user's watch lock
        holder.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (IMPORT_LOCK, str(user)))
        r = await api.client.post("/api/watchlist", headers=bearer(user), json=body)
        assert r.status_code == 503  # after the 1 s lock_timeout, not never
        assert r.json()["error"]["code"] == "database_unavailable"
    r = await api.client.post("/api/watchlist", headers=bearer(user), json=body)
    assert r.status_code == 201


def test_every_role_sets_statement_and_lock_timeouts(notifier_env: dict[str, str]) -> None:
    env = dict(notifier_env, NOTIFIER_PG_STATEMENT_TIMEOUT="0.5", NOTIFIER_PG_LOCK_TIMEOUT="2",
               NOTIFIER_ROUTER_STATEMENT_TIMEOUT="120")  # fmt: skip
    settings = config.load(env, role="all")
    expected = {"api": ("500ms", "2s"), "delivery": ("500ms", "2s"), "router": ("2min", "2s"),
                "migrate": ("0", "0")}  # fmt: skip
    for role, (statement, lock) in expected.items():
        with psycopg.connect(db.conninfo_for(settings, role)) as conn:
            got = (conn.execute("SHOW statement_timeout").fetchone(),
                   conn.execute("SHOW lock_timeout").fetchone())  # fmt: skip
            assert got == ((statement,), (lock,)), role
    with (psycopg.connect(db.conninfo_for(settings, "api")) as conn,
          pytest.raises(psycopg.errors.QueryCanceled)):  # fmt: skip
        conn.execute("SELECT pg_sleep(5)")


@pytest.fixture
def services_env(api_env: dict[str, str]) -> dict[str, str]:
    """Two named service tokens beside the unnamed one."""
    return dict(api_env, NOTIFIER_SERVICE_TOKENS="billing=billing-token-0123456789,"
                                                 "social=social-token-0123456789")  # fmt: skip


async def test_idempotency_keys_are_scoped_per_calling_service(
    services_env: dict[str, str], pg_url: str, user: uuid.UUID
) -> None:
    server, url, _ = serve(services_env)
    body = {"user_ids": [str(user)], "event": "price_drop", "idempotency_key": "order-42"}
    billing = {"Authorization": "Bearer billing-token-0123456789"}
    social = {"Authorization": "Bearer social-token-0123456789"}
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:

            async def post(headers: dict[str, str]) -> str:
                r = await client.post("/internal/events", json=body, headers=headers)
                assert r.status_code == 202, r.text
                return str(r.json()["id"])

            ids = {name: await post(h) for name, h in
                   (("billing", billing), ("social", social), ("unnamed", SERVICE))}  # fmt: skip
            assert len(set(ids.values())) == 3  # one service's key never swallows another's
            assert await post(billing) == ids["billing"]  # a repeat by the same caller
            assert await post(SERVICE) == ids["unnamed"]
            r = await client.delete(f"/internal/events/{ids['billing']}", headers=billing)
            assert r.status_code == 204
            bad = {"Authorization": "Bearer billing-token-012345678"}
            r = await client.post("/internal/events", json=body, headers=bad)
            assert r.status_code == 401
    finally:
        server.stop()
    with psycopg.connect(pg_url) as conn:
        keys = conn.execute("SELECT dedup_key FROM notifier.events WHERE source = 'internal' "
                            "ORDER BY dedup_key").fetchall()  # fmt: skip
    # The unnamed token's keys keep the form they had before named tokens existed.
    assert [k for (k,) in keys] == ["internal:order-42", "internal@billing:order-42",
                                    "internal@social:order-42"]  # fmt: skip
