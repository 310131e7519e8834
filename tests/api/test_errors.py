"""One error envelope everywhere: 400, 404, 405, 413, 422, 429."""

from __future__ import annotations

import uuid

import httpx

from notifier.api.ratelimit import RateLimiter, retry_after_header
from tests.api.conftest import SERVICE, Api, bearer, serve


def _envelope(r: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


async def test_unknown_route_and_wrong_method(api: Api) -> None:
    _envelope(await api.client.get("/nope"), 404, "not_found")
    _envelope(await api.client.get("/api/nope", headers=bearer(uuid.uuid4())), 404, "not_found")
    _envelope(await api.client.delete("/api/notifications/unread-count"), 405, "method_not_allowed")
    _envelope(await api.client.put("/api/webhook"), 405, "method_not_allowed")


async def test_body_cap_bad_json_and_validation(api: Api) -> None:
    h = bearer(uuid.uuid4())
    big = {"url": "https://example.com/" + "a" * 70_000}
    _envelope(await api.client.post("/api/webhook", json=big, headers=h), 413, "payload_too_large")

    async def chunks():  # no Content-Length: the cap still holds while streaming
        for _ in range(100):
            yield b"x" * 1024

    r = await api.client.post("/api/webhook", content=chunks(), headers=h)
    _envelope(r, 413, "payload_too_large")
    _envelope(
        await api.client.post("/api/webhook", content=b"{not json", headers=h), 400, "invalid_json"
    )
    _envelope(await api.client.post("/api/webhook", headers=h), 400, "invalid_json")
    err = _envelope(
        await api.client.post("/api/webhook", json={"url": 5}, headers=h), 422, "validation_error"
    )
    assert err["details"] == [
        {"location": "body", "field": "url", "message": "Expected `str`, got `int`"}
    ]
    err = _envelope(
        await api.client.post(
            "/api/watchlist", json={"entity_type": "planet", "entity_id": "1"}, headers=h
        ),
        422,
        "validation_error",
    )
    assert err["details"][0]["field"] == "entity_type"  # type: ignore[index]
    err = _envelope(
        await api.client.put("/api/preferences", json={"new_releases": {"feed": 1}}, headers=h),
        422,
        "validation_error",
    )
    assert err["details"][0]["field"].endswith(".feed")  # type: ignore[index]
    _envelope(
        await api.client.post(
            "/api/watchlist", json={"entity_type": "artist", "entity_id": "a\u0000b"}, headers=h
        ),
        422,
        "validation_error",
    )


def test_rate_limiter_bucket() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=3, clock=lambda: now[0])
    assert [limiter.take("u") for _ in range(3)] == [None, None, None]
    wait = limiter.take("u")
    assert wait is not None and 0.9 < wait <= 1.0
    assert limiter.take("other") is None  # per user
    now[0] += 1.0
    assert limiter.take("u") is None
    assert retry_after_header(0.2) == "1" and retry_after_header(2.1) == "3"
    assert RateLimiter(per_minute=0, burst=1).take("u") is None


async def test_rate_limit_answers_429_with_retry_after(
    api_env: dict[str, str], pg_url: str
) -> None:
    env = dict(api_env, NOTIFIER_API_RATE_LIMIT="6", NOTIFIER_API_RATE_BURST="3")
    server, url, _ = serve(env)
    a, b = bearer(uuid.uuid4()), bearer(uuid.uuid4())
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            codes = [
                (await client.get("/api/notifications/unread-count", headers=a)).status_code
                for _ in range(4)
            ]
            assert codes == [200, 200, 200, 429]
            r = await client.get("/api/notifications/unread-count", headers=a)
            _envelope(r, 429, "rate_limited")
            assert 1 <= int(r.headers["retry-after"]) <= 10
            # Another user is not affected.
            r = await client.get("/api/notifications/unread-count", headers=b)
            assert r.status_code == 200
    finally:
        server.stop()


async def test_deeply_nested_json_is_a_4xx_in_every_body(api: Api) -> None:
    h = bearer(uuid.uuid4())
    deep = b"[" * 30_000 + b"]" * 30_000
    watch = b'{"entity_type": "search", "entity_id": "x", "options": {"q": ' + deep + b"}}"
    r = await api.client.post("/api/watchlist", content=watch, headers=h)
    assert _envelope(r, 400, "invalid_json")["message"] == "the body is nested too deeply"
    event = (
        b'{"user_ids": ["' + str(uuid.uuid4()).encode() + b'"], "event": "ping", '
        b'"entity_type": "artist", "entity_id": "1", "entity_name": "A", '
        b'"idempotency_key": "deep", "detail": {"x": ' + deep + b"}}"
    )
    r = await api.client.post("/internal/events", content=event, headers=SERVICE)
    _envelope(r, 400, "invalid_json")
    prefs = b'{"new_releases": ' + b"{" * 20_000 + b"}" * 20_000 + b"}"
    _envelope(
        await api.client.put("/api/preferences", content=prefs, headers=h), 400, "invalid_json"
    )
