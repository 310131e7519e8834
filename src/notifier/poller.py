"""Claiming and completing outbox rows (the SQL side of delivery).

Lease, not a held lock. A claim is one short transaction: it picks due rows
with `FOR UPDATE SKIP LOCKED`, pushes their `next_attempt_at` forward by the
lease, stamps a fresh `claim_token`, counts the attempt, and commits at once.
No transaction or row lock stays open while HTTP requests are in flight, so a
batch needs no pinned connection, a slow receiver cannot hold locks (or bloat
the table by keeping an old snapshot), and a replica killed with `-9` loses
nothing: its rows simply become due again when the lease runs out and another
replica claims them (the receiver may then see a duplicate with the same
`webhook-id`). Completion writes only where the `claim_token` still matches,
so a sender whose lease was taken over cannot overwrite the newer outcome.
Counting the attempt at claim time bounds a row that crashes its sender every
time: it runs out of schedule like any failing row.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from psycopg import AsyncConnection

# Relies on outbox_due_idx (next_attempt_at) WHERE status = 'pending'; events,
# webhook_configs and user_emails are joined by primary key.
CLAIM_SQL = """
WITH due AS (
    SELECT id FROM notifier.outbox
    WHERE status = 'pending' AND next_attempt_at <= now()
    ORDER BY next_attempt_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE notifier.outbox o
    SET next_attempt_at = now() + make_interval(secs => %(lease)s),
        claim_token = %(token)s, claimed_by = %(replica)s,
        attempts = o.attempts + 1, updated_at = now()
    FROM due WHERE o.id = due.id
    RETURNING o.id, o.user_id, o.event_id, o.channel, o.webhook_id, o.attempts
)
SELECT c.id, c.user_id, c.channel, c.attempts, c.webhook_id,
       e.id, e.event, e.entity_type, e.entity_id, e.entity_name, e.detail::text, e.version,
       to_char(e.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
       e.cancelled_at IS NOT NULL,
       w.url, w.active, w.secret,
       CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret END,
       ue.email
FROM claimed c
JOIN notifier.events e ON e.id = c.event_id
LEFT JOIN notifier.webhook_configs w ON w.id = c.webhook_id
LEFT JOIN notifier.user_emails ue ON ue.user_id = c.user_id AND c.channel = 'email'
"""

# Every attempt is recorded, even one whose lease was taken over meanwhile.
INSERT_ATTEMPTS_SQL = """
INSERT INTO notifier.delivery_attempts
    (outbox_id, user_id, attempted_at, duration_ms, status_code, error, response_excerpt)
SELECT * FROM unnest(%s::bigint[], %s::uuid[], %s::timestamptz[], %s::int[], %s::int[],
                     %s::text[], %s::text[])
"""

# By primary key. Only the current claim may write; a retry or pause never
# overrides a row someone set to cancelled/paused meanwhile, but a success
# is always recorded (the receiver did get it). `uncount` gives back the
# attempt counted at claim time when the row was released unsent.
COMPLETE_SQL = """
UPDATE notifier.outbox o
SET status = r.status,
    next_attempt_at = coalesce(r.next_at, o.next_attempt_at),
    last_error = coalesce(r.error, o.last_error),
    delivered_at = CASE WHEN r.status = 'delivered' THEN now() ELSE o.delivered_at END,
    attempts = o.attempts - r.uncount,
    claim_token = NULL, updated_at = now()
FROM unnest(%s::bigint[], %s::uuid[], %s::text[], %s::timestamptz[], %s::text[], %s::int[])
    AS r(id, token, status, next_at, error, uncount)
WHERE o.id = r.id AND o.claim_token = r.token
  AND (o.status = 'pending' OR r.status = 'delivered')
"""

# By primary key; the IS NOT NULL guard makes the healthy case write nothing.
CLEAR_FAILING_SQL = """
UPDATE notifier.webhook_configs SET failing_since = NULL
WHERE id = ANY(%s::uuid[]) AND failing_since IS NOT NULL
"""
MARK_FAILING_SQL = """
UPDATE notifier.webhook_configs SET failing_since = now()
WHERE id = ANY(%s::uuid[]) AND failing_since IS NULL
"""

# By primary key.
DISABLE_WEBHOOKS_SQL = """
UPDATE notifier.webhook_configs w
SET active = false, disabled_reason = r.reason, disabled_at = now(), updated_at = now()
FROM unnest(%s::uuid[], %s::text[]) AS r(id, reason)
WHERE w.id = r.id AND w.active
"""
# Relies on outbox_webhook_status_idx (webhook_id, status). Paused rows are
# kept: re-enabling the webhook can set them back to pending. The claim token
# stays, so a send in flight that succeeds still records 'delivered'.
PAUSE_ROWS_SQL = """
UPDATE notifier.outbox SET status = 'paused', updated_at = now()
WHERE webhook_id = ANY(%s::uuid[]) AND status = 'pending'
"""


@dataclass(frozen=True, slots=True)
class Job:
    """One claimed outbox row with what sending it needs."""

    outbox_id: int
    claim_token: uuid.UUID
    user_id: uuid.UUID
    channel: str
    attempts: int  # including this one
    webhook_id: uuid.UUID | None
    event_id: uuid.UUID
    event: str
    entity_type: str | None
    entity_id: str | None
    entity_name: str | None
    detail_json: str
    version: str | None
    timestamp: str
    cancelled: bool
    url: str | None
    webhook_active: bool | None
    secrets: tuple[str, ...]  # current first, then the previous one while it still signs
    email: str | None

    def body(self) -> bytes:
        """The webhook body of contract §6; identical on every attempt."""
        return msgspec.json.encode(
            {
                "id": str(self.event_id),
                "event": self.event,
                "entity_type": self.entity_type,
                "entity_id": self.entity_id,
                "entity_name": self.entity_name,
                "detail": msgspec.Raw(self.detail_json.encode()),
                "version": self.version,
                "timestamp": self.timestamp,
            }
        )


@dataclass(frozen=True, slots=True)
class Completion:
    """The outcome of one claimed row, to be written back."""

    job: Job
    status: str  # 'delivered' | 'pending' | 'paused' | 'dead' | 'cancelled'
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    disable_reason: str | None = None
    # The attempt row; None when nothing was sent (cancelled, released, …).
    attempted_at: datetime | None = None
    duration_ms: int = 0
    status_code: int | None = None
    error: str | None = None
    excerpt: str | None = None
    released: bool = False  # sent nothing: give back the attempt counted at claim


async def claim(
    conn: AsyncConnection[Any],
    *,
    limit: int,
    lease_seconds: float,
    replica: str,
) -> list[Job]:
    """Claim up to `limit` due rows for `lease_seconds` (one committed transaction)."""
    token = uuid.uuid4()
    async with conn.transaction():
        cur = await conn.execute(
            CLAIM_SQL,
            {"limit": limit, "lease": lease_seconds, "token": token, "replica": replica},
        )
        rows = await cur.fetchall()
    jobs = []
    for r in rows:
        secrets = tuple(s for s in (r[16], r[17]) if isinstance(s, str))
        jobs.append(
            Job(
                outbox_id=r[0],
                claim_token=token,
                user_id=r[1],
                channel=r[2],
                attempts=r[3],
                webhook_id=r[4],
                event_id=r[5],
                event=r[6],
                entity_type=r[7],
                entity_id=r[8],
                entity_name=r[9],
                detail_json=r[10],
                version=r[11],
                timestamp=r[12],
                cancelled=bool(r[13]),
                url=r[14],
                webhook_active=r[15],
                secrets=secrets,
                email=r[18],
            )
        )
    return jobs


async def complete(conn: AsyncConnection[Any], completions: Sequence[Completion]) -> None:
    """Write attempts, outcomes and webhook state for `completions` in one transaction."""
    if not completions:
        return
    tried = [c for c in completions if c.attempted_at is not None]
    delivered_hooks = sorted(
        {c.job.webhook_id for c in completions if c.status == "delivered" and c.job.webhook_id},
        key=str,
    )
    failed_hooks = sorted(
        {
            c.job.webhook_id
            for c in tried
            if c.status != "delivered" and c.job.webhook_id and c.job.channel == "webhook"
        },
        key=str,
    )
    disable: dict[uuid.UUID, str] = {}
    for c in completions:
        if c.disable_reason and c.job.webhook_id:
            disable.setdefault(c.job.webhook_id, c.disable_reason)
    ordered = sorted(completions, key=lambda c: c.job.outbox_id)  # stable lock order
    async with conn.transaction():
        if tried:
            await conn.execute(
                INSERT_ATTEMPTS_SQL,
                (
                    [c.job.outbox_id for c in tried],
                    [c.job.user_id for c in tried],
                    [c.attempted_at for c in tried],
                    [c.duration_ms for c in tried],
                    [c.status_code for c in tried],
                    [c.error for c in tried],
                    [c.excerpt for c in tried],
                ),
            )
        await conn.execute(
            COMPLETE_SQL,
            (
                [c.job.outbox_id for c in ordered],
                [c.job.claim_token for c in ordered],
                [c.status for c in ordered],
                [c.next_attempt_at for c in ordered],
                [c.last_error for c in ordered],
                [1 if c.released else 0 for c in ordered],
            ),
        )
        if delivered_hooks:
            await conn.execute(CLEAR_FAILING_SQL, (delivered_hooks,))
        if failed_hooks:
            await conn.execute(MARK_FAILING_SQL, (failed_hooks,))
        if disable:
            ids = sorted(disable, key=str)
            await conn.execute(DISABLE_WEBHOOKS_SQL, (ids, [disable[i] for i in ids]))
            await conn.execute(PAUSE_ROWS_SQL, (ids,))
