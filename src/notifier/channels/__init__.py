"""Delivery channels: each turns a claimed outbox row into one send attempt.

A channel never raises for a failed send: it returns a `Sent` describing the
attempt, which the retry policy (`notifier.backoff.decide`) turns into the
row's next state. Channels: `webhook` (signed HTTP POST) and `email` (SMTP,
off unless `NOTIFIER_SMTP_HOST` is set).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from notifier.backoff import Result
from notifier.outbox import Job

EXCERPT_CHARS = 512


@dataclass(frozen=True, slots=True)
class Sent:
    """One attempt: its outcome, when it started, how long it took, what came back."""

    result: Result
    attempted_at: datetime
    duration_ms: int
    excerpt: str | None = None
    deferred: bool = False  # nothing was sent (endpoint saturated): release the row


class Channel(Protocol):
    """What the delivery loop needs from a channel."""

    async def send(self, job: Job) -> Sent:
        """Attempt to deliver `job` once; never raises for a failed delivery."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def excerpt(data: bytes) -> str | None:
    """The first `EXCERPT_CHARS` characters of a response, for the attempt row."""
    if not data:
        return None
    # PostgreSQL text cannot hold NUL: a receiver's binary answer must not
    # make the outcome unwritable.
    return data.decode("utf-8", errors="replace")[:EXCERPT_CHARS].replace("\x00", "\ufffd")
