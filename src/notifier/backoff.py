"""Retry policy: the backoff schedule, `Retry-After`, and what an attempt leads to.

Pure functions, no I/O. The documented schedule (delays after attempt 1, 2, …):

    5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 2 h, 4 h, 8 h, 12 h, 12 h, 12 h, 12 h, 12 h

15 attempts over about 3 days 3 hours (75.7 h before jitter). Each delay is
jittered by ±20 % so that a receiver coming back is not hit by a thundering
herd. A `Retry-After` answer (seconds or an HTTP date) is honoured: the next
attempt is never earlier than it asks, capped at `MAX_RETRY_AFTER`. A failure
after the last scheduled attempt exhausts the row: its webhook is disabled with
a readable reason and its pending rows are paused (not lost).
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

DEFAULT_SCHEDULE: tuple[float, ...] = (
    5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 43200, 43200, 43200, 43200, 43200,
)  # fmt: skip
JITTER = 0.2
MAX_RETRY_AFTER = 86400.0


def parse_schedule(text: str) -> tuple[float, ...]:
    """A schedule from `"5,30,120"` (seconds); raises ValueError with a readable message."""
    try:
        delays = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"expected comma-separated seconds, got {text!r}") from None
    if not delays or any(not 0 <= d <= MAX_RETRY_AFTER * 7 for d in delays):
        raise ValueError(f"expected comma-separated seconds between 0 and 604800, got {text!r}")
    return delays


def scheduled_delay(
    attempts: int, schedule: Sequence[float] = DEFAULT_SCHEDULE, rng: random.Random | None = None
) -> float | None:
    """Seconds to wait after the `attempts`-th failed attempt, jittered; None when exhausted."""
    if attempts < 1 or attempts > len(schedule):
        return None
    base = schedule[attempts - 1]
    return base * (1 + (rng or random).uniform(-JITTER, JITTER))


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a `Retry-After` header asks to wait (delta-seconds or HTTP date), or None.

    Malformed values are ignored (None); dates in the past mean 0; the result is
    capped at `MAX_RETRY_AFTER`.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max((when - now).total_seconds(), 0.0), MAX_RETRY_AFTER)


@dataclass(frozen=True, slots=True)
class Result:
    """What one send attempt came to (any channel)."""

    status_code: int | None = None
    error: str | None = None  # error class when no HTTP answer: "timeout", "connect_error", …
    retry_after: float | None = None
    ok: bool | None = None  # None: success means a 2xx status code

    @property
    def succeeded(self) -> bool:
        """Whether the attempt delivered the message."""
        if self.ok is not None:
            return self.ok
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with the outbox row after an attempt."""

    status: str  # 'delivered' | 'pending' (retry) | 'paused' | 'dead'
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    disable_reason: str | None = None  # set: disable the webhook, pause its rows


def describe(result: Result) -> str:
    """A short human-readable form of a failed attempt ("HTTP 500", "timeout")."""
    if result.status_code is not None:
        return f"HTTP {result.status_code}"
    return result.error or "unknown error"


def decide(
    result: Result,
    attempts: int,
    now: datetime,
    *,
    channel: str = "webhook",
    schedule: Sequence[float] = DEFAULT_SCHEDULE,
    rng: random.Random | None = None,
) -> Decision:
    """The row's fate after its `attempts`-th attempt ended with `result`."""
    code = result.status_code
    if result.succeeded:
        return Decision("delivered")
    error = describe(result)
    if channel == "webhook" and code == 410:
        return Decision(
            "paused",
            last_error=error,
            disable_reason="the endpoint answered 410 Gone; the webhook was disabled",
        )
    delay = scheduled_delay(attempts, schedule, rng)
    if delay is None:
        if channel != "webhook":
            return Decision("dead", last_error=error)
        reason = (
            f"disabled after {attempts} failed attempts over the retry schedule "
            f"(about {sum(schedule) / 3600:.0f} h); last error: {error}"
        )
        return Decision("paused", last_error=error, disable_reason=reason)
    if result.retry_after is not None:
        delay = max(delay, result.retry_after)
    return Decision("pending", next_attempt_at=now + timedelta(seconds=delay), last_error=error)
