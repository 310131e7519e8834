"""The platform's token revocations, read from its Redis when `REDIS_HOST` is set.

Discogsography's API (its `api/auth.py`, `token_revocation_reason`) writes:

- `revoked:jti:<jti>`: the token with that `jti` was logged out or revoked;
- `password_changed:<user_id>`: unix seconds of the user's last password
  change; every token issued at or before it (`iat <= value`, inclusive, a
  missing `iat` counting as 0) is void.

Both keys are read in one round trip on every `/api/*` request and at SSE
connect, under `TIMEOUT_SECONDS`. Fail-closed: when Redis does not answer the
request gets a 503, never a pass: a token its user logged out or changed the
password over must not work again because Redis is down (the platform's own
API refuses requests then too). Without `REDIS_HOST` nothing is contacted.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("notifier.api.revocation")

TIMEOUT_SECONDS = 1.0
# What the platform's API answers for both reasons.
REASON_REVOKED = "revoked"
REASON_CREDENTIALS_CHANGED = "password_changed"


class RevocationUnavailable(RuntimeError):
    """Redis did not answer in time (the request is refused, fail-closed)."""


class Revocations:
    """A client of the platform's Redis (database 0, as the platform uses it)."""

    def __init__(self, host: str, port: int, password: str | None) -> None:
        self.client: aioredis.Redis = aioredis.Redis(
            host=host, port=port, password=password, db=0, decode_responses=True,
            socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS,
        )  # fmt: skip

    async def reason(self, user_id: str, jti: Any, iat: Any) -> str | None:
        """Why the token is void (`revoked`, `password_changed`), or None when it stands."""
        keys = [f"password_changed:{user_id}"]
        if isinstance(jti, str) and jti:
            keys.append(f"revoked:jti:{jti}")
        try:
            values = await asyncio.wait_for(self.client.mget(keys), TIMEOUT_SECONDS)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("revocation check failed", extra={"error": type(exc).__name__})
            raise RevocationUnavailable from None
        changed = values[0]
        if len(values) > 1 and values[1]:
            return REASON_REVOKED
        if changed:
            issued = iat if isinstance(iat, int | float) and not isinstance(iat, bool) else 0
            try:
                if issued <= int(changed):
                    return REASON_CREDENTIALS_CHANGED
            except ValueError:  # not the platform's format: treat the marker as "now"
                return REASON_CREDENTIALS_CHANGED
        return None

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()
