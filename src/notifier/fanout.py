"""Fan-out: from immutable events to feed rows and outbox rows, in set-based SQL.

One statement per call, whatever the number of users: no Python loop per
user. It runs inside the caller's transaction (the router's unit, the API's
/internal/events request), so events and their fan-out commit together.

Rules:
- Router events go to the watchers of the event's (entity_type, entity_id)
  whose watch was created before the cycle started (`watches_before`); an
  event with an `audience` (release filters, `diff.filter_new_releases`) only
  to those whose watch options equal one of its entries. Each feed row keeps
  the watch that caused it (`watch_id`; NULL for explicit recipients).
- A `release_count_threshold` event carries `detail.threshold`. A watch with
  `options.threshold` receives the events whose threshold equals its own; a
  watch without one receives those at a documented milestone
  (`THRESHOLD_MILESTONES`). The router emits one event per crossed threshold
  value (dedup key includes it), so each watcher gets the ones it asked for.
- Preferences (`notifier.preferences`, defaults feed and webhook on, email
  off) pick the channels: feed rows; webhook outbox rows, one (one message
  id) per endpoint of the user whose `event_types` takes the event: pending
  for an active endpoint, held (kept, never claimed, for a recovery) for a
  disabled one; email rows only when the caller says the email channel is on
  (a router unit's events: digest items instead, one mail a user per cycle).
- Exactly once per event: the first statement sets `events.fanned_out_at` on
  the events not yet fanned out (and not cancelled), and only those are fanned
  out. Their row locks make a concurrent fan-out of the same event wait, then
  find it done. So the inserts need no ON CONFLICT (speculative insertion cost
  about a quarter of the feed insert); the unique keys stay as a guard.
- No unread counter is touched: counters are folded lazily by the read path
  (sql/005_fanout.sql, `notifier.api.feed`). Fan-out holds the advisory lock
  `FEED_LOCK_KEY` shared until commit, so a fold (which needs it exclusively)
  never counts past a feed row that could still commit.
- Each event with feed rows is announced with `pg_notify('notifier_feed',
  '{"event_id": "…"}')`, delivered to listeners at commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from psycopg import AsyncConnection

from notifier import queries
from notifier.diff import EventDraft

FEED_CHANNEL = "notifier_feed"

# Release-count milestones for genre/style watches that set no threshold.
THRESHOLD_MILESTONES: tuple[int, ...] = (
    100, 500, 1_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000, 5_000_000,
)  # fmt: skip


@dataclass(frozen=True)
class FanoutResult:
    """How many rows one fan-out wrote."""

    feed_rows: int = 0
    outbox_rows: int = 0

    def __add__(self, other: FanoutResult) -> FanoutResult:
        return FanoutResult(self.feed_rows + other.feed_rows, self.outbox_rows + other.outbox_rows)


# pg_advisory_xact_lock key held shared by every fan-out transaction and taken
# exclusively (try only) by an unread-counter fold: "n-feed" in ASCII.
FEED_LOCK_KEY = 0x6E2D66656564
LOCK_SHARED = "SELECT pg_advisory_xact_lock_shared(%s)"

# The statements, whole, in queries/ (parameters and CTEs in their headers).
FAN_OUT_EVENTS = queries.load("fan_out_events")
FAN_OUT_TO_USERS = queries.load("fan_out_to_users")

# The claim of the events to fan out, before any row is written. Uses events_pkey.
MARK_FANNED_OUT = """
UPDATE notifier.events SET fanned_out_at = now()
WHERE id = ANY(%(ids)s) AND fanned_out_at IS NULL AND cancelled_at IS NULL
RETURNING id
"""

ANNOUNCE = """
SELECT pg_notify(%(channel)s, jsonb_build_object('event_id', id)::text)
FROM unnest(%(ids)s::uuid[]) AS id
"""

# The scheduler's claim: due, not yet fanned out, not cancelled (events_unfanned_idx).
CLAIM_DUE = """
SELECT id, recipients FROM notifier.events
WHERE fanned_out_at IS NULL AND cancelled_at IS NULL AND deliver_at <= now()
ORDER BY deliver_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""

_MILESTONES_JSON = msgspec.json.encode(list(THRESHOLD_MILESTONES)).decode()


async def _claim(conn: AsyncConnection[Any], ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """Take FEED_LOCK shared, then mark the events fanned out; return those marked."""
    await conn.execute(LOCK_SHARED, (FEED_LOCK_KEY,))
    marked = await conn.execute(MARK_FANNED_OUT, {"ids": ids})
    return [row[0] for row in await marked.fetchall()]


async def _announce(conn: AsyncConnection[Any], ids: list[uuid.UUID]) -> None:
    await conn.execute(ANNOUNCE, {"channel": FEED_CHANNEL, "ids": ids})


def _result(row: object) -> FanoutResult:
    if not isinstance(row, tuple):
        return FanoutResult()
    return FanoutResult(int(row[0]), int(row[1]))


async def fan_out_events(
    conn: AsyncConnection[Any],
    event_ids: list[uuid.UUID],
    *,
    watches_before: datetime,
    email: bool = False,
) -> FanoutResult:
    """Write feed and outbox rows for the watchers of `event_ids`.

    Only watches created before `watches_before` (the cycle's start) count.
    Events already fanned out or cancelled are left alone. Run it inside the
    transaction that inserted the events.
    """
    if not event_ids:
        return FanoutResult()
    claimed = await _claim(conn, event_ids)
    if not claimed:
        return FanoutResult()
    params = {
        "ids": claimed,
        "before": watches_before,
        "milestones": _MILESTONES_JSON,
        "email": email,
    }
    cur = await conn.execute(FAN_OUT_EVENTS, params)
    result = _result(await cur.fetchone())
    if result.feed_rows:
        await _announce(conn, claimed)
    return result


def draft_params(
    events: Sequence[EventDraft], *, version: str, watches_before: datetime, email: bool = False
) -> dict[str, object]:
    """The fan-out parameters of unitstore.FINISH_UNIT for a unit's `events` of cycle `version`.

    `events` is the JSON array its `drafts` reads (queries/finish_unit.sql
    names them all); only watches created before `watches_before` (the
    cycle's start) count.
    """
    rows: list[dict[str, object]] = [
        {"k": e.key(version), "e": e.event, "t": e.entity_type, "i": e.entity_id,
         "n": e.entity_name, "d": e.detail}
        for e in events
    ]  # fmt: skip
    for row, e in zip(rows, events, strict=True):
        if e.audience is not None:  # absent, not JSON null: SQL NULL, every watcher
            row["a"] = e.audience
    return {
        "events": msgspec.json.encode(rows).decode(),
        "version": version,
        "before": watches_before,
        "milestones": _MILESTONES_JSON,
        "email": False,  # no mail per event: the cycle's digest (`digested`)
        "digest": email,
        "channel": FEED_CHANNEL,
    }


async def fan_out_to_users(
    conn: AsyncConnection[Any],
    event_id: uuid.UUID,
    user_ids: list[uuid.UUID],
    *,
    email: bool = False,
) -> FanoutResult:
    """Write feed and outbox rows of one event for the given users (deduplicated)."""
    if not await _claim(conn, [event_id]):
        return FanoutResult()
    cur = await conn.execute(FAN_OUT_TO_USERS, {"id": event_id, "users": user_ids, "email": email})
    result = _result(await cur.fetchone())
    if result.feed_rows:
        await _announce(conn, [event_id])
    return result


async def fan_out_due(conn: AsyncConnection[Any], limit: int = 100, *, email: bool = False) -> int:
    """Fan out scheduled events whose `deliver_at` has come; return how many.

    Claims them with FOR UPDATE SKIP LOCKED, so several replicas can run it at
    once. Run it in a transaction (`async with conn.transaction():`).
    """
    cur = await conn.execute(CLAIM_DUE, {"limit": limit})
    rows = await cur.fetchall()
    for row in rows:
        event_id, recipients = row[0], row[1]
        if recipients is None:  # not addressed to anyone: nothing to write
            await _claim(conn, [event_id])
            continue
        await fan_out_to_users(conn, event_id, list(recipients), email=email)
    return len(rows)
