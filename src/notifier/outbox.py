"""Claiming and completing outbox rows (the SQL side of delivery).

Lease, not a held lock. A claim is one short statement: it picks due rows
with `FOR NO KEY UPDATE SKIP LOCKED`, sets their `lease_until`, stamps a fresh
`claim_token`, counts the attempt, and commits at once. No transaction or row
lock stays open while HTTP requests are in flight, so a batch needs no pinned
connection, a slow receiver cannot hold locks (or bloat the table by keeping
an old snapshot), and a replica killed with `-9` loses nothing: its rows
become claimable again when the lease runs out and another replica claims
them (the receiver may then see a duplicate with the same `webhook-id`).
Completion writes only where the `claim_token` still matches, so a sender
whose lease was taken over cannot overwrite the newer outcome. Counting the
attempt at claim time bounds a row that crashes its sender every time: it
runs out of schedule like any failing row.

Cost (bench/claim_rate.py, 004_outbox_claim): a claim writes only columns no
index reads, so it is a HOT update (no index entry); a completion is one
statement (attempt rows, outcomes, webhook state) with the batch in one JSON
parameter. A held lock would save the claim's HOT update but not the
completion, which is most of the cost, and would pin a connection and a
transaction for as long as the slowest receiver of the batch.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

import msgspec
from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import AsyncRowFactory, RowMaker

from notifier import fanout, secretbox

log = logging.getLogger("notifier.outbox")

# The lease claim of a queue's due rows, the outbox's here and the email
# digests' (digests.CLAIM_SQL): the statement's `claimed` CTE up to its
# RETURNING, the queue `q` (`{table}`, `{key}`: fixed names, never input).
# The inner SELECT walks the queue's due index (outbox_due_idx,
# email_digests_due_idx: next_attempt_at WHERE status = 'pending') from the
# oldest due row, skipping rows under a running lease and rows another claim
# holds locked. The UPDATE then goes straight to the
# locked row versions by ctid (a TID scan, no index descent): a row locked by
# this statement cannot change under it. Should the locked version be newer
# than the statement's snapshot (another transaction changed the row after
# the statement started), the TID scan does not see it and the row simply
# stays unclaimed until the next claim. `ctid = ANY(ARRAY(...))` also keeps
# that plan whatever the table size (a join to the subquery was planned as a
# hash join over a sequential scan of the whole outbox on small tables). The
# UPDATE writes no indexed column, so it is a HOT update when the page has
# room (004_outbox_claim). `LIMIT (SELECT ...)` gives every plan the same row
# estimate, so PostgreSQL keeps one generic plan instead of planning each
# claim again. events, webhook_configs and user_emails are read by primary
# key, one probe per claimed row (OFFSET 0 keeps the planner from turning the
# probes into hash joins over whole tables).
CLAIM_DUE = """
WITH claimed AS (
    UPDATE notifier.{table} q
    SET lease_until = now() + make_interval(secs => %(lease)s),
        claim_token = %(token)s, claimed_by = %(replica)s,
        attempts = q.attempts + 1, updated_at = now()
    WHERE q.{key} = ANY(ARRAY(
        SELECT {key} FROM notifier.{table}
        WHERE status = 'pending' AND next_attempt_at <= now()
          AND (lease_until IS NULL OR lease_until <= now())
        ORDER BY next_attempt_at
        LIMIT (SELECT %(limit)s::int)
        FOR NO KEY UPDATE SKIP LOCKED
    ))"""
CLAIM_SQL = (
    CLAIM_DUE.format(table="outbox", key="ctid")  # noqa: S608 - fixed names only
    + """
    RETURNING q.id, q.claim_token, q.user_id, q.event_id, q.channel, q.webhook_id, q.attempts,
              coalesce(q.message_id, q.event_id) AS message_id
)
SELECT c.id AS outbox_id, c.claim_token, c.user_id, c.channel, c.attempts, c.webhook_id,
       c.message_id, e.id AS event_id, e.event, e.entity_type, e.entity_id, e.entity_name,
       e.detail AS detail_json, e.version, e.created AS timestamp, e.cancelled,
       w.url, w.active AS webhook_active, ue.email, w.rate_limit,
       w.secret, w.secret_enc, w.previous_secret, w.previous_secret_enc
FROM claimed c
CROSS JOIN LATERAL (
    SELECT e.id, e.event, e.entity_type, e.entity_id, e.entity_name, e.detail::text AS detail,
           e.version, e.cancelled_at IS NOT NULL AS cancelled,
           to_char(e.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS created
    FROM notifier.events e WHERE e.id = c.event_id OFFSET 0
) e
LEFT JOIN LATERAL (
    SELECT w.url, w.active, w.secret, w.secret_enc, w.rate_limit,
           CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret END
               AS previous_secret,
           CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret_enc END
               AS previous_secret_enc
    FROM notifier.webhook_configs w WHERE w.id = c.webhook_id OFFSET 0
) w ON true
LEFT JOIN LATERAL (
    SELECT ue.email FROM notifier.user_emails ue
    WHERE ue.user_id = c.user_id AND c.channel = 'email' OFFSET 0
) ue ON true
"""
)

# A queue's completion (the outbox's here, the email digests' in
# digests.COMPLETE_SQL), in two parts: COMPLETED, the batch `r` and its
# attempts (`{attempts}` table, `{key}` column), and OUTCOMES, the queue's
# rows `q` (`{table}`) updated where the claim is still ours. Fixed names,
# never input.
# One statement, one round trip, for the whole batch. The batch travels as
# one JSON parameter (`CompletionRow` records): psycopg dumps arrays element by
# element in Python, msgspec encodes the whole batch in C, many times faster.
# - attempts: every attempt is recorded, even one whose lease was taken over
#   meanwhile (delivery_attempts: its primary key, delivery_attempts_outbox_idx),
#   except one whose row was erased meanwhile (`erasure`: nothing is left of it).
# - outcomes: by outbox_pkey (`o.id = ANY(ARRAY(...))` keeps the index plan on
#   small tables too). Only the current claim may write; a retry or pause
#   never overrides a row someone set to cancelled/paused meanwhile, but a
#   success is always recorded (the receiver did get it). `uncount` gives
#   back the attempt counted at claim time when the row was released unsent.
#   The lease ends: a retried row is due again at its next_attempt_at.
# - cleared/marked: webhook_configs by primary key; the guards make the
#   healthy case write nothing. A webhook with both a success and a failure
#   in the batch ends up failing since now (as "clear, then mark" would leave
#   it). The id lists are (SELECT ...) subqueries, so that no plan knows their
#   length and PostgreSQL keeps one generic plan.
COMPLETED = """
WITH r AS MATERIALIZED (
    SELECT * FROM json_to_recordset(%(rows)s::json) AS r(
        id bigint, user_id uuid, token uuid, status text, next_at timestamptz, last_error text,
        uncount int, at timestamptz, ms int, code int, error text, excerpt text)
), attempts AS (
    INSERT INTO notifier.{attempts}
        ({key}, user_id, attempted_at, duration_ms, status_code, error, response_excerpt)
    SELECT r.id, r.user_id, r.at, r.ms, r.code, r.error, r.excerpt FROM r
    WHERE r.at IS NOT NULL AND EXISTS (SELECT 1 FROM notifier.{table} q WHERE q.id = r.id)
)"""
OUTCOMES = """
    UPDATE notifier.{table} q
    SET status = r.status,
        next_attempt_at = coalesce(r.next_at, q.next_attempt_at),
        last_error = coalesce(r.last_error, q.last_error),
        delivered_at = CASE WHEN r.status = 'delivered' THEN now() ELSE q.delivered_at END,
        attempts = q.attempts - r.uncount,
        claim_token = NULL, lease_until = NULL, updated_at = now()
    FROM r
    WHERE q.id = ANY(ARRAY(SELECT id FROM r)) AND q.id = r.id AND q.claim_token = r.token
      AND (q.status = 'pending' OR r.status = 'delivered')"""
_OUTBOX = {"table": "outbox", "attempts": "delivery_attempts", "key": "outbox_id"}
COMPLETE_SQL = (
    COMPLETED.format(**_OUTBOX)  # noqa: S608 - fixed names only
    + """, outcomes AS ("""
    + OUTCOMES.format(**_OUTBOX)
    + """
), cleared AS (
    UPDATE notifier.webhook_configs SET failing_since = NULL
    WHERE id = ANY((SELECT string_to_array(%(cleared)s, ','))::uuid[])
      AND failing_since IS NOT NULL
), marked AS (
    UPDATE notifier.webhook_configs SET failing_since = now()
    WHERE id = ANY((SELECT string_to_array(%(marked)s, ','))::uuid[])
      AND (failing_since IS NULL OR id = ANY((SELECT string_to_array(%(both)s, ','))::uuid[]))
)
SELECT 1
"""
)

# Per-endpoint rate limits, held across delivery replicas: a token bucket on
# the endpoint's row (capacity max(rate, 1), refilled at `rate_limit` a
# second), taken for a claimed batch in one statement. Only batches holding
# rows of rate-limited endpoints run it. `locked` takes the rows in id order
# (FOR NO KEY UPDATE returns their newest version after waiting), so two
# replicas never count the same tokens; the UPDATE then writes what is left.
# Rows of the batch beyond the grant are released, due when tokens will be
# there (`pace`). Webhook_configs by primary key.
PACE_SQL = """
WITH want AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(counts)s::int[]) AS x(id, n)
), locked AS (
    SELECT w.id, w.rate_limit, w.rate_tokens, w.rate_at, clock_timestamp() AS now
    FROM notifier.webhook_configs w
    WHERE w.id = ANY(%(ids)s::uuid[]) AND w.rate_limit IS NOT NULL
    ORDER BY w.id
    FOR NO KEY UPDATE
), bucket AS (
    SELECT l.id, x.n, l.rate_limit, l.now,
           least(greatest(l.rate_limit, 1),
                 coalesce(l.rate_tokens, greatest(l.rate_limit, 1))
                 + l.rate_limit * extract(epoch FROM l.now - coalesce(l.rate_at, l.now)))
               AS tokens
    FROM locked l JOIN want x ON x.id = l.id
), taken AS (
    UPDATE notifier.webhook_configs w
    SET rate_tokens = b.tokens - least(b.n, floor(b.tokens)), rate_at = b.now
    FROM bucket b WHERE w.id = b.id
    RETURNING w.id, least(b.n, floor(b.tokens))::int AS granted,
              b.tokens - least(b.n, floor(b.tokens)) AS left_over, b.rate_limit
)
SELECT id, granted, left_over, rate_limit FROM taken
"""

# When the next pending row falls due, in seconds from now (None: no row is
# due later). One probe of outbox_due_idx (next_attempt_at) WHERE status =
# 'pending', from now on: the first future entry.
NEXT_DUE_SQL = """
SELECT extract(epoch FROM min(next_attempt_at) - clock_timestamp())::float8
FROM notifier.outbox WHERE status = 'pending' AND next_attempt_at > now()
"""

# By primary key. Only an endpoint that was active comes back: the user is
# told once per disabling, however many rows of the batch failed.
DISABLE_WEBHOOKS_SQL = """
UPDATE notifier.webhook_configs w
SET active = false, disabled_reason = r.reason, disabled_at = now(), updated_at = now()
FROM unnest(%s::uuid[], %s::text[]) AS r(id, reason)
WHERE w.id = r.id AND w.active
RETURNING w.id, w.user_id, w.url, r.reason
"""
# The `webhook.disabled` event of one disabling (contract §6), for its user
# only; fanned out in the same transaction (events_dedup_key: one per
# endpoint and disabling).
INSERT_DISABLED_EVENT = """
INSERT INTO notifier.events (dedup_key, source, event, entity_type, entity_id, entity_name,
                             detail, recipients, recipient_count)
VALUES ('webhook.disabled:' || %(endpoint)s::text || ':' || %(token)s::text, 'system',
        'webhook.disabled', 'webhook', %(endpoint)s::text, %(url)s,
        jsonb_build_object('endpoint_id', %(endpoint)s::text, 'url', %(url)s::text,
                           'reason', %(reason)s::text),
        ARRAY[%(user)s::uuid], 1)
ON CONFLICT (dedup_key) DO NOTHING
RETURNING id
"""
# Relies on outbox_webhook_status_idx (webhook_id, status). Paused rows are
# kept: re-enabling the webhook can set them back to pending. The claim token
# stays, so a send in flight that succeeds still records 'delivered'.
PAUSE_ROWS_SQL = """
UPDATE notifier.outbox SET status = 'paused', updated_at = now()
WHERE webhook_id = ANY(%s::uuid[]) AND status = 'pending'
"""


# msgspec Structs, built in C: the cheapest per-row objects for a batch's jobs
# and completions (dataclasses cost a large share of the claim's Python).
class Job(msgspec.Struct, frozen=True, gc=False):
    """One claimed outbox row with what sending it needs."""

    outbox_id: int
    claim_token: uuid.UUID
    user_id: uuid.UUID
    channel: str
    attempts: int  # including this one
    webhook_id: uuid.UUID | None
    # The message's id (webhook-id, body `id`): one per (event, endpoint),
    # the same on every retry and redelivery (sql/010_webhook_endpoints.sql).
    message_id: uuid.UUID
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
    email: str | None
    rate_limit: float | None = None  # the endpoint's messages per second (PACE_SQL)
    secrets: tuple[str, ...] = ()  # current first, then the previous one while it still signs

    def body(self) -> bytes:
        """The webhook body of contract §6; identical on every attempt."""
        return msgspec.json.encode(
            {
                "id": str(self.message_id),
                "event_id": str(self.event_id),
                "event": self.event,
                "entity_type": self.entity_type,
                "entity_id": self.entity_id,
                "entity_name": self.entity_name,
                "detail": msgspec.Raw(self.detail_json.encode()),
                "version": self.version,
                "timestamp": self.timestamp,
            }
        )


class Completion(msgspec.Struct, frozen=True, gc=False):
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


# CLAIM_SQL's columns: Job's fields, by name and in order, then the endpoint's
# secrets as stored, which the claim decrypts into Job.secrets.
_JOB_COLUMNS = tuple(name for name in Job.__struct_fields__ if name != "secrets")
_SECRET_COLUMNS = ("secret", "secret_enc", "previous_secret", "previous_secret_enc")


def _jobs(keys: secretbox.Keyring | None) -> AsyncRowFactory[Job]:
    """Row factory for CLAIM_SQL: checks its column labels once, then makes a Job a row.

    Positional, as checked (msgspec builds a Struct from keywords, or psycopg's
    class_row from a dict a row, several times slower).
    """
    fields = len(_JOB_COLUMNS)
    hook = _JOB_COLUMNS.index("webhook_id")

    def factory(cursor: AsyncCursor[Any]) -> RowMaker[Job]:
        labels = tuple(column.name for column in cursor.description or ())
        if labels != _JOB_COLUMNS + _SECRET_COLUMNS:
            raise RuntimeError(f"CLAIM_SQL's columns {labels} do not match Job")

        def job(values: Sequence[Any]) -> Job:
            secrets = _secrets(keys, values[hook], *values[fields:])
            return Job(*[*values[:fields], secrets])

        return job

    return factory


async def claim(
    conn: AsyncConnection[Any],
    *,
    limit: int,
    lease_seconds: float,
    replica: str,
    keys: secretbox.Keyring | None = None,
) -> list[Job]:
    """Claim up to `limit` due rows for `lease_seconds` (one committed transaction).

    Webhook secrets are decrypted with `keys`; a row whose secret cannot be
    read gets none (its attempt fails with `bad_secret` and is retried).
    """
    params = {"limit": limit, "lease": lease_seconds, "token": uuid.uuid4(), "replica": replica}
    async with _atomic(conn), conn.cursor(row_factory=_jobs(keys)) as cur:
        await cur.execute(CLAIM_SQL, params)
        return await cur.fetchall()


def _secrets(
    keys: secretbox.Keyring | None,
    hook: uuid.UUID | None,
    clear: str | None,
    sealed: bytes | None,
    previous_clear: str | None,
    previous_sealed: bytes | None,
) -> tuple[str, ...]:
    """The secrets that sign for endpoint `hook`: current first, then the previous one.

    Empty without an endpoint. An unreadable previous secret is left out (the
    current one still signs); an unreadable current one leaves none (the
    attempt fails `bad_secret`).
    """
    if hook is None:
        return ()
    found: list[str] = []
    for clear_value, sealed_value in ((clear, sealed), (previous_clear, previous_sealed)):
        try:
            value = secretbox.read(keys, hook, clear_value, sealed_value)
        except secretbox.UnreadableSecret as exc:
            log.error("webhook secret unreadable",
                      extra={"webhook_id": str(hook), "error": str(exc)})  # fmt: skip
            value = None
        if value is None:
            break
        found.append(value)
    return tuple(found)


async def seconds_to_next_due(conn: AsyncConnection[Any]) -> float | None:
    """Seconds until the next pending row falls due (None when none is due later)."""
    async with _atomic(conn):
        cur = await conn.execute(NEXT_DUE_SQL)
        row = await cur.fetchone()
    return None if row is None or row[0] is None else float(row[0])


async def pace(conn: AsyncConnection[Any], jobs: Sequence[Job]) -> dict[int, float]:
    """Take rate-limit tokens for the rate-limited `jobs` of a claim.

    Returns the jobs that must wait (outbox id: seconds until a token will be
    there); the others may be sent now. Jobs of endpoints with no limit are
    not looked at. One statement, its own transaction.
    """
    by_hook: dict[uuid.UUID, list[Job]] = {}
    for job in jobs:
        if job.rate_limit is not None and job.webhook_id is not None:
            by_hook.setdefault(job.webhook_id, []).append(job)
    if not by_hook:
        return {}
    hooks = sorted(by_hook, key=str)
    async with _atomic(conn):
        cur = await conn.execute(
            PACE_SQL, {"ids": hooks, "counts": [len(by_hook[h]) for h in hooks]}
        )
        grants = await cur.fetchall()
    waits: dict[int, float] = {}
    for hook, granted, left_over, rate in grants:
        # Due order first; the i-th row refused waits for the i-th token to come.
        refused = sorted(by_hook[hook], key=lambda j: j.outbox_id)[granted:]
        for i, job in enumerate(refused):
            waits[job.outbox_id] = (i + 1 - left_over) / rate
    return waits


class CompletionRow(msgspec.Struct, omit_defaults=True):
    """One completion as a COMPLETE_SQL reads it (a `json_to_recordset` record; None omitted).

    The same record for the outbox's and the digests' (`digests.COMPLETE_SQL`).
    """

    id: int
    user_id: uuid.UUID
    token: uuid.UUID
    status: str
    uncount: int
    ms: int
    next_at: datetime | None = None
    last_error: str | None = None
    at: datetime | None = None  # the attempt row: when it was sent; None if nothing was sent
    code: int | None = None
    error: str | None = None
    excerpt: str | None = None


_ROWS = msgspec.json.Encoder()


def _no_nul(text: str | None) -> str | None:
    """`text` fit for a text column (JSON may carry NUL, PostgreSQL text may not)."""
    return text.replace("\x00", "\ufffd") if text and "\x00" in text else text


async def complete(
    conn: AsyncConnection[Any], completions: Sequence[Completion], *, email: bool = False
) -> None:
    """Write attempts, outcomes and webhook state for `completions` in one transaction.

    An endpoint disabled here gets its `webhook.disabled` notification in the
    same transaction (email rows too when `email`: the channel is on).
    """
    if not completions:
        return
    delivered_hooks = {
        c.job.webhook_id for c in completions if c.status == "delivered" and c.job.webhook_id
    }
    failed_hooks = {
        c.job.webhook_id
        for c in completions
        if c.attempted_at is not None
        and c.status != "delivered"
        and c.job.webhook_id
        and c.job.channel == "webhook"
    }
    disable: dict[uuid.UUID, str] = {}
    for c in completions:
        if c.disable_reason and c.job.webhook_id:
            disable.setdefault(c.job.webhook_id, c.disable_reason)
    ordered = sorted(completions, key=lambda c: c.job.outbox_id)  # stable lock order
    rows = _ROWS.encode(
        [
            CompletionRow(
                c.job.outbox_id,
                c.job.user_id,
                c.job.claim_token,
                c.status,
                1 if c.released else 0,
                c.duration_ms,
                c.next_attempt_at,
                _no_nul(c.last_error),
                c.attempted_at,
                c.status_code,
                _no_nul(c.error),
                _no_nul(c.excerpt),
            )
            for c in ordered
        ]
    ).decode()
    params = {
        "rows": rows,
        "cleared": ",".join(sorted(str(h) for h in delivered_hooks - failed_hooks)),
        "marked": ",".join(sorted(str(h) for h in failed_hooks)),
        "both": ",".join(sorted(str(h) for h in delivered_hooks & failed_hooks)),
    }
    if not disable:
        async with _atomic(conn):
            await conn.execute(COMPLETE_SQL, params)
        return
    ids = sorted(disable, key=str)
    async with conn.transaction():
        await conn.execute(COMPLETE_SQL, params)
        cur = await conn.execute(DISABLE_WEBHOOKS_SQL, (ids, [disable[i] for i in ids]))
        disabled = await cur.fetchall()
        await conn.execute(PAUSE_ROWS_SQL, (ids,))
        for endpoint, user, url, reason in disabled:
            await _tell_disabled(conn, endpoint, user, url, reason, email=email)


async def _tell_disabled(
    conn: AsyncConnection[Any], endpoint: uuid.UUID, user: uuid.UUID, url: str, reason: str,
    *, email: bool,
) -> None:  # fmt: skip
    """Insert and fan out the `webhook.disabled` event of one disabled endpoint."""
    params = {"endpoint": endpoint, "user": user, "url": url, "reason": reason,
              "token": uuid.uuid4()}  # fmt: skip
    row = await (await conn.execute(INSERT_DISABLED_EVENT, params)).fetchone()
    if row is not None:
        await fanout.fan_out_to_users(conn, row[0], [user], email=email)


def _atomic(conn: AsyncConnection[Any]) -> AbstractAsyncContextManager[object]:
    """What makes one statement its own transaction on `conn`.

    In autocommit mode the statement already is one; wrapping it in
    BEGIN/COMMIT would cost two more round trips.
    """
    if conn.autocommit:
        return contextlib.nullcontext()
    return conn.transaction()
