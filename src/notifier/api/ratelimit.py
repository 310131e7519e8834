"""Per-user rate limit: a token bucket per user, per API replica.

Each user may make `burst` requests at once; tokens come back at
`per_minute / 60` per second. A refused request learns, in `Retry-After`, how
many whole seconds until the next token.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from notifier.api.errors import ApiError

# Past this many tracked users, buckets that have refilled completely are dropped.
_PRUNE_AT = 10_000


@dataclass
class RateLimiter:
    """Token buckets keyed by user; `per_minute <= 0` turns the limit off."""

    per_minute: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[object, tuple[float, float]] = field(default_factory=dict)

    def take(self, key: object) -> float | None:
        """Spend one token; None when allowed, else the seconds to wait."""
        if self.per_minute <= 0:
            return None
        rate = self.per_minute / 60.0
        capacity = float(max(self.burst, 1))
        now = self.clock()
        tokens, last = self._buckets.get(key, (capacity, now))
        tokens = min(capacity, tokens + (now - last) * rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / rate
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > _PRUNE_AT:
            self._prune(now, rate, capacity)
        return None

    def _prune(self, now: float, rate: float, capacity: float) -> None:
        full = [k for k, (t, last) in self._buckets.items() if t + (now - last) * rate >= capacity]
        for k in full:
            del self._buckets[k]


def retry_after_header(wait: float) -> str:
    """`Retry-After` in whole seconds, at least 1."""
    return str(max(1, math.ceil(wait)))


# What the send quota covers, for its 429 message.
SENDS = "test pings, redeliveries and recoveries"


def spend(limiter: RateLimiter, key: object, what: str = SENDS) -> None:
    """Take one token of `limiter` for `key`, or raise a 429 with `Retry-After`."""
    wait = limiter.take(key)
    if wait is not None:
        raise ApiError(429, f"too many {what}; try again later",
                       headers={"Retry-After": retry_after_header(wait)})  # fmt: skip
