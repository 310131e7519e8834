"""Every kind of bad user token answers 401, with the error envelope, on sampled /api routes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from tests.api.conftest import JWT_KEY, SERVICE, Api, bearer, token

# A representative set of /api routes: reads, writes, a path parameter, each module.
ROUTES: list[tuple[str, str]] = [
    ("GET", "/api/watchlist"),
    ("POST", "/api/watchlist"),
    ("DELETE", f"/api/watchlist/{uuid.uuid4()}"),
    ("GET", "/api/notifications"),
    ("GET", "/api/notifications/1"),
    ("GET", "/api/notifications/unread-count"),
    ("POST", "/api/notifications/1/read"),
    ("POST", "/api/notifications/read-all"),
    ("GET", "/api/preferences"),
    ("PUT", "/api/preferences"),
    ("GET", "/api/webhook"),
    ("POST", "/api/webhook"),
    ("POST", "/api/webhook/rotate-secret"),
    ("GET", "/api/webhook/deliveries"),
    ("POST", "/api/webhook/deliveries/1/redeliver"),
    ("POST", "/api/webhook/test"),
    ("DELETE", "/api/webhook"),
    ("GET", "/api/notifications/stream"),
    ("POST", "/api/feed-token"),
    ("POST", "/api/watchlist/import"),
]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _hand_made(header: dict[str, Any], claims: dict[str, Any], signature: bytes) -> str:
    """A JWT put together by hand, so any header and signature can be tried."""
    return ".".join(
        [_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()), _b64(signature)]
    )


def _claims(sub: str) -> dict[str, Any]:
    return {"sub": sub, "exp": int((datetime.now(UTC) + timedelta(minutes=10)).timestamp())}


def _rs256_confusions(sub: str) -> list[str]:
    """RS256-headed tokens: a bogus signature, and one HMAC-signed with the real key."""
    claims = _claims(sub)
    bogus = _hand_made({"alg": "RS256", "typ": "JWT"}, claims, b"\x01" * 256)
    signing_input = ".".join(
        [
            _b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode()),
            _b64(json.dumps(claims).encode()),
        ]
    )
    mac = hmac.new(JWT_KEY.encode(), signing_input.encode(), hashlib.sha256).digest()
    return [bogus, f"{signing_input}.{_b64(mac)}"]


def _cases(sub: str) -> dict[str, dict[str, str]]:
    """Name -> request headers, each of which must be refused with 401."""
    claims = _claims(sub)
    none_alg = _hand_made({"alg": "none", "typ": "JWT"}, claims, b"")
    bogus_rs, hmac_rs = _rs256_confusions(sub)
    future_nbf = int((datetime.now(UTC) + timedelta(hours=1)).timestamp())
    no_sub = jwt.encode({"exp": claims["exp"]}, JWT_KEY, algorithm="HS256")

    def auth(t: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {t}"}

    return {
        "missing header": {},
        "not a jwt": auth("not-a-jwt"),
        "three garbage parts": auth("aaa.bbb.ccc"),
        "wrong scheme": {"Authorization": f"Token {token(sub)}"},
        "basic scheme": {"Authorization": "Basic dXNlcjpwdw=="},
        # httpx refuses a header value ending in a space, so "empty" is the bare scheme.
        "empty bearer": {"Authorization": "Bearer"},
        "bearer of quotes": {"Authorization": 'Bearer ""'},
        "service token as user": SERVICE,
        "wrong key": auth(token(sub, key="another-key-another-key-another-key-!!")),
        "alg none": auth(none_alg),
        "alg none with signature": auth(none_alg + "c2ln"),
        "rs256 bogus signature": auth(bogus_rs),
        "rs256 header hmac signature": auth(hmac_rs),
        "hs384": auth(jwt.encode(claims, JWT_KEY, algorithm="HS384")),
        "expired": bearer(sub, exp_in=-30),
        "future nbf": bearer(sub, nbf=future_nbf),
        "type admin": bearer(sub, type="admin"),
        "type 2fa_challenge": bearer(sub, type="2fa_challenge"),
        "type null": bearer(sub, type=None),
        "non-uuid sub": bearer("not-a-uuid"),
        "integer sub": bearer("12345"),
        "missing sub": auth(no_sub),
        "missing exp": auth(jwt.encode({"sub": sub}, JWT_KEY, algorithm="HS256")),
    }


async def test_every_bad_token_is_refused_on_every_route(api: Api) -> None:
    sub = str(uuid.uuid4())
    cases = _cases(sub)
    tried = 0
    for name, headers in cases.items():
        for method, path in ROUTES:
            body = {} if method in ("POST", "PUT") else None
            r = await api.client.request(method, path, headers=headers, json=body)
            tried += 1
            assert r.status_code == 401, (name, method, path, r.status_code, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer"), (name, path)
            envelope = r.json()
            assert set(envelope) == {"error"}, (name, path, envelope)
            assert envelope["error"]["code"] == "unauthorized", (name, path, envelope)
            assert isinstance(envelope["error"]["message"], str), (name, path)
            assert envelope["error"]["message"], (name, path)
    # The same routes accept a good token: the refusals above are about the token.
    accepted = 0
    for method, path in ROUTES:
        if method == "GET" and not path.endswith("/stream"):
            r = await api.client.get(path, headers=bearer(sub))
            assert r.status_code in (200, 404), (path, r.status_code, r.text)
            accepted += 1
    print(
        f"jwt matrix: {len(cases)} bad tokens x {len(ROUTES)} routes = {tried} requests, "
        f"{tried} refused with 401; {accepted} good-token GETs accepted"
    )
