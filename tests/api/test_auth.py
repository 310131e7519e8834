"""Auth: user JWTs on /api/*, the service token on /internal/*."""

from __future__ import annotations

import base64
import json
import uuid

import httpx
import jwt

from notifier.api.auth import decode_user
from notifier.api.errors import ApiError
from tests.api.conftest import JWT_KEY, SERVICE, Api, bearer, serve, token


def _none_alg(sub: str) -> str:
    def b64(d: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64({'sub': sub, 'exp': 9999999999})}."


def _refused(t: str) -> str:
    try:
        decode_user(t, JWT_KEY)
    except ApiError as exc:
        assert exc.status == 401
        return exc.message
    raise AssertionError("token accepted")


def test_decode_user_rules() -> None:
    sub = str(uuid.uuid4())
    assert decode_user(token(sub), JWT_KEY).id == uuid.UUID(sub)
    assert decode_user(token(sub, type="access", email="a@b.c"), JWT_KEY).email == "a@b.c"
    assert _refused(token(sub, key="another-key-another-key-another-key!!")) == "invalid token"
    assert _refused(_none_alg(sub)) == "invalid token"
    assert _refused(token(sub, exp_in=-60)) == "token expired"
    assert "not accepted" in _refused(token(sub, type="admin"))
    assert "not accepted" in _refused(token(sub, type="2fa_challenge"))
    assert "not accepted" in _refused(token(sub, type=None))
    assert _refused(token("not-a-uuid")) == "invalid token subject"
    no_exp = jwt.encode({"sub": sub}, JWT_KEY, algorithm="HS256")
    assert _refused(no_exp) == "invalid token"
    assert _refused("garbage") == "invalid token"
    hs512 = jwt.encode({"sub": sub, "exp": 9999999999}, JWT_KEY, algorithm="HS512")
    assert _refused(hs512) == "invalid token"


async def test_routes_refuse_bad_tokens(api: Api) -> None:
    sub = str(uuid.uuid4())
    cases: list[dict[str, str]] = [
        {},
        {"Authorization": "Basic dXNlcjpwdw=="},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {_none_alg(sub)}"},
        bearer(sub, exp_in=-5),
        bearer(sub, type="admin"),
        {"Authorization": f"Bearer {token(sub, key='wrong-key-wrong-key-wrong-key-wrong')}"},
    ]
    for headers in cases:
        r = await api.client.get("/api/notifications", headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"].startswith("Bearer")
    ok = await api.client.get("/api/notifications", headers=bearer(sub))
    assert ok.status_code == 200


async def test_internal_needs_the_service_token(api: Api) -> None:
    body = {"user_ids": [str(uuid.uuid4())], "event": "x", "idempotency_key": "k"}
    r = await api.client.post("/internal/events", json=body)
    assert r.status_code == 401
    r = await api.client.post(
        "/internal/events", json=body, headers={"Authorization": "Bearer wrong"}
    )
    assert r.status_code == 401
    # A user's JWT is not the service token.
    r = await api.client.post("/internal/events", json=body, headers=bearer(uuid.uuid4()))
    assert r.status_code == 401
    r = await api.client.post("/internal/events", json=body, headers=SERVICE)
    assert r.status_code == 202


async def test_internal_routes_off_without_token(api_env: dict[str, str], pg_url: str) -> None:
    env = {k: v for k, v in api_env.items() if k != "NOTIFIER_SERVICE_TOKEN"}
    server, url, _ = serve(env)
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            r = await client.post("/internal/events", json={}, headers=SERVICE)
            assert r.status_code == 404
            assert r.json()["error"]["code"] == "not_found"
            r = await client.delete(f"/internal/events/{uuid.uuid4()}", headers=SERVICE)
            assert r.status_code == 404
    finally:
        server.stop()


async def test_email_claim_is_recorded_only_while_email_is_on(api: Api) -> None:
    import psycopg

    sub = uuid.uuid4()

    def stored() -> list[object]:
        with psycopg.connect(api.pg_url) as conn:
            rows = conn.execute(
                "SELECT email FROM notifier.user_emails WHERE user_id = %s", (sub,)
            ).fetchall()
        return [row[0] for row in rows]

    async def put(prefs: dict[str, object], email: str) -> None:
        r = await api.client.put("/api/preferences", json=prefs, headers=bearer(sub, email=email))
        assert r.status_code == 200

    await api.client.get("/api/notifications", headers=bearer(sub))
    # Email is off by default: the claim is not kept.
    r = await api.client.get("/api/notifications", headers=bearer(sub, email="a@example.com"))
    assert r.status_code == 200 and stored() == []
    await put({"new_releases": {"email": True}}, "a@example.com")
    assert stored() == ["a@example.com"]
    await api.client.get("/api/notifications", headers=bearer(sub, email="b@example.com"))
    await api.client.get("/api/notifications", headers=bearer(sub, email="not-an-address"))
    await api.client.get("/api/notifications", headers=bearer(sub, email="x@y.z\r\nBcc: e@v.il"))
    assert stored() == ["b@example.com"]
    # Turning the last email preference off forgets the address, and it stays forgotten.
    await put({"new_releases": {"email": False}, "new_members": {"feed": False}}, "b@example.com")
    assert stored() == []
    await api.client.get("/api/notifications", headers=bearer(sub, email="c@example.com"))
    assert stored() == []
    await put({"new_members": {"email": True}}, "c@example.com")
    assert stored() == ["c@example.com"]
