"""Unit tests of the pure retry policy."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from notifier import backoff
from notifier.backoff import Result, decide

NOW = datetime(2026, 2, 1, 12, 0, 0, tzinfo=UTC)


def test_schedule_is_about_three_days() -> None:
    total = sum(backoff.DEFAULT_SCHEDULE)
    assert 2.5 * 86400 < total < 3.5 * 86400
    assert list(backoff.DEFAULT_SCHEDULE) == sorted(backoff.DEFAULT_SCHEDULE)


def test_jitter_stays_within_twenty_percent_and_varies() -> None:
    rng = random.Random(1)
    delays = {backoff.scheduled_delay(3, rng=rng) for _ in range(50)}
    assert all(d is not None and 96 <= d <= 144 for d in delays)
    assert len(delays) > 40


def test_exhausted_and_invalid_attempt_numbers() -> None:
    n = len(backoff.DEFAULT_SCHEDULE)
    assert backoff.scheduled_delay(n) is not None
    assert backoff.scheduled_delay(n + 1) is None
    assert backoff.scheduled_delay(0) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Sun, 01 Feb 2026 12:05:00 GMT", 300.0),
        ("Sun, 01 Feb 2026 11:00:00 GMT", 0.0),
        ("99999999", backoff.MAX_RETRY_AFTER),
        ("soon", None),
        ("-5", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after(value: str | None, expected: float | None) -> None:
    assert backoff.parse_retry_after(value, NOW) == expected


def test_parse_schedule() -> None:
    assert backoff.parse_schedule("1,2.5,3") == (1.0, 2.5, 3.0)
    for bad in ("", "a,b", "1,-1", "1,,2"):
        with pytest.raises(ValueError):
            backoff.parse_schedule(bad)


def test_2xx_is_delivered() -> None:
    assert decide(Result(status_code=204), 1, NOW).status == "delivered"


def test_failures_retry_on_schedule_with_jitter() -> None:
    d = decide(Result(status_code=500), 1, NOW, rng=random.Random(0))
    assert d.status == "pending" and d.last_error == "HTTP 500" and d.disable_reason is None
    assert d.next_attempt_at is not None
    assert NOW + timedelta(seconds=4) <= d.next_attempt_at <= NOW + timedelta(seconds=6)
    t = decide(Result(error="timeout"), 2, NOW)
    assert t.status == "pending" and t.last_error == "timeout"


def test_retry_after_is_honoured_but_never_shortens_the_schedule() -> None:
    d = decide(Result(status_code=429, retry_after=600), 1, NOW)
    assert d.next_attempt_at == NOW + timedelta(seconds=600)
    short = decide(Result(status_code=429, retry_after=0), 4, NOW)
    assert short.next_attempt_at is not None
    assert short.next_attempt_at >= NOW + timedelta(seconds=480)


def test_410_disables_at_once() -> None:
    d = decide(Result(status_code=410), 1, NOW)
    assert d.status == "paused" and d.disable_reason is not None and "410" in d.disable_reason


def test_failing_past_the_schedule_disables_with_a_readable_reason() -> None:
    n = len(backoff.DEFAULT_SCHEDULE) + 1
    d = decide(Result(error="connect_error"), n, NOW)
    assert d.status == "paused"
    assert d.disable_reason is not None
    assert f"after {n} failed attempts" in d.disable_reason
    assert "connect_error" in d.disable_reason
    email = decide(Result(error="smtp_error"), n, NOW, channel="email")
    assert email.status == "dead" and email.disable_reason is None
