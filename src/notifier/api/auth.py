"""Authentication: user JWTs on `/api/*`, the service token on `/internal/*`.

User tokens are HS256 JWTs signed with `JWT_SECRET_KEY` (the algorithm is
pinned, so `alg: none` and RS256/HS256 confusion are refused), with `exp`
required and enforced and `sub` a UUID. Tokens carrying a `type` claim other
than `access` (the platform's `admin` and `2fa_challenge` tokens) are refused.
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass

import jwt
from starlette.requests import Request

from notifier.api.context import ctx
from notifier.api.errors import ApiError
from notifier.api.ratelimit import retry_after_header

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="notifier"'}


@dataclass(frozen=True)
class User:
    """The caller of an `/api/*` route."""

    id: uuid.UUID
    email: str | None


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


def decode_user(token: str, secret: str) -> User:
    """Validate a user token; raise a 401 `ApiError` saying why it is refused."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            options={"require": ["exp", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise _unauthorized("token expired") from None
    except jwt.InvalidTokenError:
        raise _unauthorized("invalid token") from None
    if "type" in claims and claims["type"] != "access":  # e.g. admin, 2fa_challenge, null
        raise _unauthorized("this kind of token is not accepted here")
    try:
        user_id = uuid.UUID(str(claims["sub"]))
    except ValueError:
        raise _unauthorized("invalid token subject") from None
    email = claims.get("email")
    return User(user_id, email if isinstance(email, str) else None)


async def user(request: Request) -> User:
    """The authenticated user of this request, after the per-user rate limit."""
    token = bearer(request)
    if token is None:
        raise _unauthorized("missing bearer token")
    c = ctx(request)
    who = decode_user(token, c.settings.jwt_secret_key)
    wait = c.limiter.take(who.id)
    if wait is not None:
        raise ApiError(
            429,
            "too many requests; slow down",
            headers={"Retry-After": retry_after_header(wait)},
        )
    if who.email is not None:
        await c.emails.note(c.pool, who.id, who.email)
    return who


def service(request: Request) -> None:
    """Allow only callers holding `NOTIFIER_SERVICE_TOKEN`; 404 when it is unset."""
    expected = ctx(request).settings.service_token
    if not expected:
        raise ApiError(404, f"no route {request.url.path}")
    token = bearer(request)
    if token is None or not hmac.compare_digest(token.encode(), expected.encode()):
        raise _unauthorized("invalid service token")
