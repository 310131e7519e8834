"""Email digests in PostgreSQL: claiming, reading and completing them.

A cycle's email is one digest a user (contract §6). Fan-out records the
cycle's email-bound events as `email_digest_items`; the statement that marks
the cycle done creates one `email_digests` row per user (unique per user and
version: a second router, or a second attempt at finishing, adds none). The
delivery role claims digests as it claims outbox rows (see outbox.py): due
rows with `FOR NO KEY UPDATE SKIP LOCKED`, a lease and a claim token, the
attempt counted at claim time; completion writes only where the token still
matches, and appends every attempt to `email_digest_attempts`. The
`message_id` is the mail's Message-ID on every attempt.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from psycopg import AsyncConnection
from psycopg.rows import class_row

from notifier.outbox import CLAIM_DUE, COMPLETED, OUTCOMES, CompletionRow

# outbox.CLAIM_DUE on email_digests (by id: a digest row is small and
# rarely claimed); user_emails by primary key.
CLAIM_SQL = (
    CLAIM_DUE.format(table="email_digests", key="id")
    + """
    RETURNING q.id, q.claim_token, q.user_id, q.version, q.message_id, q.attempts, q.event_count
)
SELECT c.id AS digest_id, c.claim_token, c.user_id, c.version, c.message_id, c.attempts,
       c.event_count, ue.email
FROM claimed c
LEFT JOIN notifier.user_emails ue ON ue.user_id = c.user_id
ORDER BY c.id
"""
)

# The claimed digests' events: email_digest_items primary key (version,
# user_id) prefix, then events by primary key. Cancelled events are left out.
ITEMS_SQL = """
SELECT d.id, e.id, e.event, e.entity_type, e.entity_id, e.entity_name, e.detail::text
FROM unnest(%(ids)s::bigint[], %(users)s::uuid[], %(versions)s::text[])
    AS d (id, user_id, version)
JOIN notifier.email_digest_items i ON i.version = d.version AND i.user_id = d.user_id
JOIN notifier.events e ON e.id = i.event_id
WHERE e.cancelled_at IS NULL
ORDER BY d.id, e.entity_type, e.entity_id, e.event, e.created_at, e.id
"""

# One statement for a batch of outcomes (outbox.COMPLETED and OUTCOMES, as
# outbox.COMPLETE_SQL): attempts appended (email_digest_attempts), outcomes
# by primary key where the claim is still ours. A success is always
# recorded; a retry never overrides a final state someone else wrote meanwhile.
_DIGESTS = {"table": "email_digests", "attempts": "email_digest_attempts", "key": "digest_id"}
COMPLETE_SQL = COMPLETED.format(**_DIGESTS) + OUTCOMES.format(**_DIGESTS) + "\n"


@dataclass(frozen=True)
class DigestJob:
    """One claimed digest: whose, which cycle, its Message-ID and where it goes."""

    digest_id: int
    claim_token: uuid.UUID
    user_id: uuid.UUID
    version: str
    message_id: uuid.UUID
    attempts: int  # including this one
    event_count: int
    email: str | None


@dataclass(frozen=True)
class DigestEvent:
    """One event listed in a digest."""

    event_id: uuid.UUID
    event: str
    entity_type: str | None
    entity_id: str | None
    entity_name: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class DigestOutcome:
    """What became of one claimed digest, to be written back."""

    job: DigestJob
    status: str  # 'delivered' | 'pending' | 'dead'
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    attempted_at: datetime | None = None  # None: nothing was sent
    duration_ms: int = 0
    status_code: int | None = None
    error: str | None = None
    excerpt: str | None = None
    released: bool = False  # nothing sent: give back the attempt counted at claim


async def claim(
    conn: AsyncConnection[Any], *, limit: int, lease_seconds: float, replica: str
) -> list[DigestJob]:
    """Claim up to `limit` due digests for `lease_seconds` (one committed statement)."""
    params = {"limit": limit, "lease": lease_seconds, "token": uuid.uuid4(), "replica": replica}
    async with conn.transaction(), conn.cursor(row_factory=class_row(DigestJob)) as cur:
        await cur.execute(CLAIM_SQL, params)
        return await cur.fetchall()


async def items(
    conn: AsyncConnection[Any], jobs: Sequence[DigestJob]
) -> dict[int, list[DigestEvent]]:
    """The events of each claimed digest (digest id: events grouped by entity)."""
    if not jobs:
        return {}
    params = {
        "ids": [j.digest_id for j in jobs],
        "users": [j.user_id for j in jobs],
        "versions": [j.version for j in jobs],
    }
    out: dict[int, list[DigestEvent]] = {j.digest_id: [] for j in jobs}
    cur = await conn.execute(ITEMS_SQL, params)
    for digest, event_id, event, etype, eid, name, detail in await cur.fetchall():
        parsed = json.loads(detail)
        fields = parsed if isinstance(parsed, dict) else {}
        out[digest].append(DigestEvent(event_id, event, etype, eid, name, fields))
    return out


def _text(value: str | None) -> str | None:
    """Text fit for a text column: no NUL, bounded length."""
    return None if value is None else value.replace("\x00", "\ufffd")[:1000]


async def complete(conn: AsyncConnection[Any], outcomes: Sequence[DigestOutcome]) -> None:
    """Write the attempts and outcomes of `outcomes` in one statement."""
    if not outcomes:
        return
    rows = [
        CompletionRow(o.job.digest_id, o.job.user_id, o.job.claim_token, o.status,
             1 if o.released else 0, o.duration_ms, o.next_attempt_at, _text(o.last_error),
             o.attempted_at, o.status_code, _text(o.error), _text(o.excerpt))
        for o in sorted(outcomes, key=lambda o: o.job.digest_id)  # stable lock order
    ]  # fmt: skip
    async with conn.transaction():
        await conn.execute(COMPLETE_SQL, {"rows": msgspec.json.encode(rows).decode()})
