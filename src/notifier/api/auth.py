"""Authentication: user JWTs on `/api/*`, the service token on `/internal/*`.

User tokens are HS256 JWTs signed with `JWT_SECRET_KEY` (the algorithm is
pinned, so `alg: none` and RS256/HS256 confusion are refused), with `exp`
required and enforced and `sub` a UUID. Tokens carrying a `type` claim other
than `access` (the platform's `admin` and `2fa_challenge` tokens) are refused.
With `NOTIFIER_JWT_ISSUER`/`NOTIFIER_JWT_AUDIENCE` set, `iss`/`aud` must match.
With `REDIS_HOST` set, tokens the platform revoked are refused (`revocation.py`).
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from starlette.requests import Request

from notifier.api.context import ctx
from notifier.api.errors import ApiError
from notifier.api.ratelimit import retry_after_header
from notifier.api.revocation import Revocations, RevocationUnavailable

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="notifier"'}


@dataclass(frozen=True)
class User:
    """The caller of an `/api/*` route."""

    id: uuid.UUID
    email: str | None
    # What the platform's revocation keys are checked against (revocation.py).
    jti: Any = None
    iat: Any = None
    # When the token expires (seconds since the epoch): an SSE stream ends then.
    exp: float | None = None


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, headers=_CHALLENGE)


def bearer(request: Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if any."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def decode_user(
    token: str, secret: str, *, issuer: str | None = None, audience: str | None = None
) -> User:
    """Validate a user token; raise a 401 `ApiError` saying why it is refused.

    `issuer`/`audience`, when given, must be the token's `iss`/`aud` (both then required).
    """
    required = ["exp", "sub"] + (["iss"] if issuer else []) + (["aud"] if audience else [])
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            options={"require": required},
            issuer=issuer,
            audience=audience,
        )
    except jwt.ExpiredSignatureError:
        raise _unauthorized("token expired") from None
    except jwt.InvalidIssuerError:
        raise _unauthorized("token issuer not accepted") from None
    except jwt.InvalidAudienceError:
        raise _unauthorized("token audience not accepted") from None
    except jwt.InvalidTokenError:
        raise _unauthorized("invalid token") from None
    if "type" in claims and claims["type"] != "access":  # e.g. admin, 2fa_challenge, null
        raise _unauthorized("this kind of token is not accepted here")
    try:
        user_id = uuid.UUID(str(claims["sub"]))
    except ValueError:
        raise _unauthorized("invalid token subject") from None
    email = claims.get("email")
    return User(user_id, email if isinstance(email, str) else None, claims.get("jti"),
                claims.get("iat"), float(claims["exp"]))  # fmt: skip


async def user(request: Request) -> User:
    """The authenticated user of this request, after the per-user rate limit."""
    token = bearer(request)
    if token is None:
        raise _unauthorized("missing bearer token")
    c = ctx(request)
    s = c.settings
    who = decode_user(token, s.jwt_secret_key, issuer=s.jwt_issuer, audience=s.jwt_audience)
    wait = c.limiter.take(who.id)
    if wait is not None:
        raise ApiError(
            429,
            "too many requests; slow down",
            headers={"Retry-After": retry_after_header(wait)},
        )
    await check_revoked(request, who)
    if who.email is not None:
        await c.emails.note(c.pool, who.id, who.email)
    return who


async def check_revoked(request: Request, who: User) -> None:
    """401 when the platform revoked this token (only with `REDIS_HOST`); 503 when unsure."""
    revocations: Revocations | None = getattr(request.app.state, "revocations", None)
    if revocations is None:
        return
    try:
        reason = await revocations.reason(str(who.id), who.jti, who.iat)
    except RevocationUnavailable:
        raise ApiError(
            503, "cannot check whether the token was revoked; try again",
            code="revocation_unavailable", headers={"Retry-After": "5"},
        ) from None  # fmt: skip
    if reason is not None:
        raise _unauthorized("token has been revoked")


async def still_valid(request: Request, who: User) -> bool:
    """False once the platform revoked `who`'s token, or when that cannot be checked.

    For long-lived answers (an SSE stream): checked again at every heartbeat.
    """
    try:
        await check_revoked(request, who)
    except ApiError:
        return False
    return True


def service(request: Request) -> str:
    """The caller: "" for `NOTIFIER_SERVICE_TOKEN`, else its name in `NOTIFIER_SERVICE_TOKENS`.

    401 for any other token; 404 while no service token is configured.
    """
    settings = ctx(request).settings
    known = list(settings.service_tokens)
    if settings.service_token:
        known.append(("", settings.service_token))
    if not known:
        raise ApiError(404, f"no route {request.url.path}")
    token = (bearer(request) or "").encode()
    caller = None
    for name, expected in known:  # every one compared, in constant time each
        if hmac.compare_digest(token, expected.encode()) and token:
            caller = name
    if caller is None:
        raise _unauthorized("invalid service token")
    return caller
