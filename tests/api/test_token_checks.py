"""Token checks beyond the signature: `iss`/`aud` when configured, the platform's revocations.

Revocations live in a real Redis server (started by the fixtures), written
the way Discogsography's API writes them: `revoked:jti:<jti>` on logout and
`password_changed:<user_id>` = unix seconds on a password change.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis

from notifier.devkit import services
from tests.api.conftest import serve, token

ROUTE = "/api/notifications/unread-count"
STREAM = "/api/notifications/stream"


async def _status(url: str, user: uuid.UUID, path: str = ROUTE, **claims: Any) -> httpx.Response:
    h = {"Authorization": f"Bearer {token(user, **claims)}"}
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        if path == STREAM:
            async with client.stream("GET", path, headers=h) as r:
                if r.status_code != 200:  # an open stream is left unread
                    await r.aread()
                return r
        return await client.get(path, headers=h)


@pytest.fixture
async def issuer_api(api_env: dict[str, str]) -> AsyncIterator[str]:
    """An API that wants `iss` = discogsography and `aud` = notifier."""
    server, url, _ = serve(api_env | {"NOTIFIER_JWT_ISSUER": "discogsography",
                                      "NOTIFIER_JWT_AUDIENCE": "notifier"})  # fmt: skip
    yield url
    server.stop()


@pytest.mark.parametrize(
    ("claims", "status", "says"),
    [
        ({"iss": "discogsography", "aud": "notifier"}, 200, None),
        ({"iss": "discogsography", "aud": ["other", "notifier"]}, 200, None),
        ({"iss": "someone-else", "aud": "notifier"}, 401, "issuer"),
        ({"aud": "notifier"}, 401, "invalid token"),
        ({"iss": "discogsography", "aud": "other"}, 401, "audience"),
        ({"iss": "discogsography"}, 401, "invalid token"),
    ],
)
async def test_issuer_and_audience_when_configured(
    issuer_api: str, claims: dict[str, Any], status: int, says: str | None
) -> None:
    r = await _status(issuer_api, uuid.uuid4(), **claims)
    assert r.status_code == status, r.text
    if says:
        assert says in r.json()["error"]["message"] and r.json()["error"]["code"]


async def test_without_issuer_settings_iss_is_not_checked(api_env: dict[str, str]) -> None:
    server, url, _ = serve(api_env)
    try:
        assert (await _status(url, uuid.uuid4(), iss="anyone")).status_code == 200
    finally:
        server.stop()


def _client(svc: services.RedisService) -> redis.Redis:
    return redis.Redis(host=svc.host, port=svc.port, password=svc.password, db=0)


def _redis_env(svc: services.RedisService) -> dict[str, str]:
    return {"REDIS_HOST": svc.host, "REDIS_PORT": str(svc.port),
            "REDIS_PASSWORD": svc.password or ""}  # fmt: skip


@pytest.fixture
async def revoking_api(
    api_env: dict[str, str], redis_server: services.RedisService
) -> AsyncIterator[str]:
    """An API that honours the platform's revocations in `redis_server`."""
    server, url, _ = serve(api_env | _redis_env(redis_server))
    yield url
    server.stop()


async def test_a_revoked_jti_is_refused(
    revoking_api: str, redis_server: services.RedisService
) -> None:
    user, jti, other = uuid.uuid4(), uuid.uuid4().hex, uuid.uuid4().hex
    now = int(time.time())
    assert (await _status(revoking_api, user, jti=jti, iat=now)).status_code == 200
    _client(redis_server).set(f"revoked:jti:{jti}", "1", ex=600)  # the platform's logout
    r = await _status(revoking_api, user, jti=jti, iat=now)
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
    assert (await _status(revoking_api, user, path=STREAM, jti=jti, iat=now)).status_code == 401
    assert (await _status(revoking_api, user, jti=other, iat=now)).status_code == 200


async def test_tokens_issued_before_a_password_change_are_refused(
    revoking_api: str, redis_server: services.RedisService
) -> None:
    user, someone = uuid.uuid4(), uuid.uuid4()
    changed = int(time.time()) - 100
    _client(redis_server).set(f"password_changed:{user}", str(changed), ex=600)
    for iat in (changed - 50, changed):  # before, and the same second (inclusive)
        r = await _status(revoking_api, user, jti=uuid.uuid4().hex, iat=iat)
        assert r.status_code == 401, iat
    assert (await _status(revoking_api, user, jti="x")).status_code == 401  # no iat: 0
    assert (await _status(revoking_api, user, path=STREAM, iat=changed - 1)).status_code == 401
    ok = await _status(revoking_api, user, jti=uuid.uuid4().hex, iat=changed + 1)
    assert ok.status_code == 200, ok.text  # issued after the change
    assert (await _status(revoking_api, someone, iat=changed - 50)).status_code == 200


async def test_redis_down_refuses_rather_than_guessing(api_env: dict[str, str]) -> None:
    server, url, _ = serve(api_env | {"REDIS_HOST": "127.0.0.1",
                                      "REDIS_PORT": str(services.free_port())})  # fmt: skip
    try:
        r = await _status(url, uuid.uuid4(), iat=int(time.time()))
        assert r.status_code == 503 and r.json()["error"]["code"] == "revocation_unavailable"
        assert r.headers["retry-after"]
    finally:
        server.stop()


async def test_without_redis_host_redis_is_never_contacted(
    api_env: dict[str, str], redis_server: services.RedisService
) -> None:
    user, jti = uuid.uuid4(), uuid.uuid4().hex
    r = _client(redis_server)
    r.set(f"revoked:jti:{jti}", "1", ex=600)

    def connections() -> int:
        return int(r.info("stats")["total_connections_received"])

    before = connections()
    server, url, _ = serve({k: v for k, v in api_env.items() if not k.startswith("REDIS_")})
    try:
        for _ in range(3):
            assert (await _status(url, user, jti=jti, iat=int(time.time()))).status_code == 200
    finally:
        server.stop()
    assert connections() == before  # the fixture's own client reconnects to nothing new


async def test_an_open_stream_ends_when_its_token_is_revoked(
    revoking_api: str, redis_server: services.RedisService
) -> None:
    user, jti = uuid.uuid4(), uuid.uuid4().hex
    h = {"Authorization": f"Bearer {token(user, jti=jti, iat=int(time.time()))}"}
    async with (
        httpx.AsyncClient(base_url=revoking_api, timeout=30) as client,
        client.stream("GET", STREAM, headers=h) as r,
    ):
        assert r.status_code == 200
        lines = r.aiter_lines()
        while await anext(lines) != "event: notification.count":
            pass  # the stream is set up; heartbeats follow every 0.5 s
        _client(redis_server).set(f"revoked:jti:{jti}", "1", ex=600)  # logged out elsewhere
        with pytest.raises(StopAsyncIteration):
            while True:  # the next heartbeat finds the revocation and ends the stream
                await asyncio.wait_for(anext(lines), 20)
