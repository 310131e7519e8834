"""Cycles in PostgreSQL: completion signals, firing, diff units and their leases.

A version fires once every required service has signalled it. Signals are
recorded under a transaction-scoped advisory lock, so two routers receiving
the last two signals at once cannot both miss (or both see) the last one; the
conditional UPDATE 'collecting' -> 'running' then happens exactly once, and the
same transaction creates the cycle's diff units. Units are claimed with
FOR UPDATE SKIP LOCKED and a lease; a unit whose lease expired (its router
died) is claimed again by any router.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

# pg_advisory_xact_lock key for signal recording: "n-cycles" in ASCII.
SIGNAL_LOCK_KEY = 0x6E2D6379636C6573

# A version names a monthly dump ("20260301"); messages and latches alike.
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"

# The service name a complete graph latch is recorded under (source 'graph').
LATCH_SERVICE = "ExtractionCompletion"

# The diff of genre, style, search, label and artist units needs the cycle's
# new releases (and masters), written by the single 'releases' unit (seq 0) first.
RELEASES_UNIT = "releases"
NEEDS_RELEASES = ("genre", "style", "search", "label", "artist")

# A unit failing this many times is closed as failed (counted in the cycle's
# stats) rather than blocking the cycle for ever.
MAX_ATTEMPTS = 8

# Primary key of cycles.
INSERT_CYCLE = """
INSERT INTO notifier.cycles (version, required_services) VALUES (%(version)s, %(required)s)
ON CONFLICT (version) DO NOTHING
"""
# Primary key (version, source, service) absorbs duplicates and redeliveries.
INSERT_SIGNAL = """
INSERT INTO notifier.cycle_signals (version, source, service, completed_at, message)
VALUES (%(version)s, %(source)s, %(service)s, %(completed_at)s, %(message)s::jsonb)
ON CONFLICT (version, source, service) DO NOTHING
"""
# cycles primary key, cycle_signals primary key for each required service;
# the previous cycle is the last one fired (cycles is one row a month: a scan).
# A message fires its version once every required service has sent one; a
# latch signal is recorded only when complete, so it fires at once.
FIRE = """
UPDATE notifier.cycles c
SET status = 'running', fired_at = now(), started_at = now(), fired_by = %(source)s,
    previous_version = (SELECT p.version FROM notifier.cycles p
                        WHERE p.fired_at IS NOT NULL ORDER BY p.fired_at DESC LIMIT 1)
WHERE c.version = %(version)s AND c.status = 'collecting'
  AND (%(source)s = 'graph' OR NOT EXISTS (
      SELECT 1 FROM unnest(c.required_services) AS s (service)
      WHERE NOT EXISTS (SELECT 1 FROM notifier.cycle_signals g
                        WHERE g.version = c.version AND g.source = 'amqp'
                          AND g.service = s.service)))
RETURNING started_at, previous_version
"""
# The newest version fired so far, in byte order ("20260301" > "20260201");
# cycles is one row a month: a scan.
NEWEST_FIRED = """
SELECT max(version COLLATE "C") FROM notifier.cycles WHERE fired_at IS NOT NULL
"""
# The 'releases' unit first (lowest id), then chunks of distinct watched
# entities per type (watchlists_entity_idx gives them in (type, id) order).
INSERT_RELEASES_UNIT = """
INSERT INTO notifier.diff_units (version, entity_type, seq, entity_ids)
VALUES (%(version)s, 'releases', 0, '{}')
ON CONFLICT (version, entity_type, seq) DO NOTHING
"""
# diff_units_version_type_seq_key makes unit creation idempotent. fresh_ids
# (sql/008_unit_continuity.sql): the ids in no unit of the previous cycle (its
# units by diff_units_version_type_seq_key prefix, hashed once); NULL without
# a previous cycle. Whatever those units' status: the previous cycle may still
# be running (its units are all finished before any of this one is claimed),
# and an entity of a unit that failed for good is diffed against its older
# snapshot, its changes reported late rather than taken as a new baseline.
INSERT_UNITS = """
INSERT INTO notifier.diff_units (version, entity_type, seq, entity_ids, fresh_ids)
SELECT %(version)s, entity_type, (rn / %(size)s)::int + 1,
       array_agg(entity_id ORDER BY entity_id),
       CASE WHEN %(previous)s::text IS NOT NULL
            THEN coalesce(array_agg(entity_id ORDER BY entity_id) FILTER (WHERE fresh), '{}')
       END
FROM (
    SELECT d.entity_type, d.entity_id, p.id IS NULL AS fresh,
           row_number() OVER (PARTITION BY d.entity_type ORDER BY d.entity_id) - 1 AS rn
    FROM (SELECT DISTINCT entity_type, entity_id FROM notifier.watchlists
          WHERE created_at < %(started)s) AS d
    LEFT JOIN (SELECT u.entity_type, x.id FROM notifier.diff_units u, unnest(u.entity_ids) AS x (id)
               WHERE u.version = %(previous)s) AS p
           ON p.entity_type = d.entity_type AND p.id = d.entity_id
) AS x
GROUP BY entity_type, rn / %(size)s
ON CONFLICT (version, entity_type, seq) DO NOTHING
"""

# cycles_running_idx picks the oldest running cycle (cycles run one after the
# other: a diff compares with the previous cycle's snapshots); then
# diff_units_pending_idx (version, id) WHERE status = 'pending'.
CLAIM = """
WITH cycle AS (
    SELECT version FROM notifier.cycles WHERE status = 'running' ORDER BY fired_at LIMIT 1
), next AS (
    SELECT u.id FROM notifier.diff_units u JOIN cycle c ON c.version = u.version
    WHERE u.status = 'pending' AND (u.lease_until IS NULL OR u.lease_until < now())
      AND (u.entity_type <> ALL(%(needs)s) OR NOT EXISTS (
          SELECT 1 FROM notifier.diff_units r
          WHERE r.version = u.version AND r.status = 'pending' AND r.entity_type = 'releases'))
    ORDER BY u.id
    LIMIT 1
    FOR UPDATE OF u SKIP LOCKED
)
UPDATE notifier.diff_units u
SET claimed_by = %(me)s, lease_until = now() + %(lease)s * interval '1 second',
    attempts = u.attempts + 1
FROM next, notifier.cycles c  -- cycles primary key: the claimed unit's cycle
WHERE u.id = next.id AND c.version = u.version
RETURNING u.id, u.version, u.entity_type, u.entity_ids, u.attempts, c.started_at,
          c.previous_version
"""
# Primary key of diff_units.
RENEW = """
UPDATE notifier.diff_units SET lease_until = now() + %(lease)s * interval '1 second'
WHERE id = %(id)s AND claimed_by = %(me)s AND status = 'pending'
"""
# Primary key of diff_units: the finishing transaction holds the unit's row
# lock, so a router whose lease was taken over cannot also commit it.
LOCK_UNIT = "SELECT status, claimed_by FROM notifier.diff_units WHERE id = %(id)s FOR UPDATE"
# Primary key of diff_units.
MARK_DONE = """
UPDATE notifier.diff_units
SET status = 'done', finished_at = now(), lease_until = NULL, stats = %(stats)s::jsonb
WHERE id = %(id)s
"""
# Primary key of diff_units: give a failed unit back after a backoff.
RELEASE = """
UPDATE notifier.diff_units SET lease_until = now() + %(delay)s * interval '1 second',
    stats = stats || %(stats)s::jsonb
WHERE id = %(id)s AND claimed_by = %(me)s AND status = 'pending'
"""
# diff_units_pending_idx for the NOT EXISTS; the stats sum reads the cycle's
# units by version (diff_units_version_type_seq_key prefix). In the same
# statement, so in the same transaction (no unit of the next cycle runs before
# it commits): the snapshots of entities in none of the finished cycle's units
# are deleted. The next cycle diffs only entities of those units against
# their snapshots (an entity absent from them is a baseline: fresh_ids), so
# the others are never read again; deleting them keeps the table to the
# watched entities and COMPARE_ARTISTS' range scans free of them. A hash
# anti-join of the snapshots with the cycle's unit ids, once a cycle; when no
# cycle finishes, the one-time filter skips it.
FINISH_CYCLE = """
WITH done AS (
    UPDATE notifier.cycles c
    SET status = 'done', finished_at = now(),
        stats = c.stats || coalesce((
            SELECT jsonb_object_agg(key, total) FROM (
                SELECT s.key, sum(s.value::numeric) AS total
                FROM notifier.diff_units u, jsonb_each_text(u.stats) AS s
                WHERE u.version = c.version AND s.value ~ '^-?[0-9]+$'
                GROUP BY s.key) AS t), '{}'::jsonb)
             || jsonb_build_object('units', (SELECT count(*) FROM notifier.diff_units u
                                              WHERE u.version = c.version))
    WHERE c.status = 'running'
      AND NOT EXISTS (SELECT 1 FROM notifier.diff_units u
                      WHERE u.version = c.version AND u.status = 'pending')
    RETURNING c.version, c.fired_at,
              extract(epoch FROM c.finished_at - coalesce(c.fired_at, c.created_at)) AS seconds
), pruned AS (
    DELETE FROM notifier.entity_snapshots s
    WHERE EXISTS (SELECT 1 FROM done)
      AND NOT EXISTS (
          SELECT 1 FROM notifier.diff_units u CROSS JOIN LATERAL unnest(u.entity_ids) AS x (id)
          WHERE u.version = (SELECT version FROM done ORDER BY fired_at DESC LIMIT 1)
            AND u.entity_type = s.entity_type AND x.id = s.entity_id)
), digests AS (
    -- One email digest per user with digest items of the finished cycle, due
    -- now: every unit is done, so its fan-out is complete and the digest is
    -- never split. email_digest_items primary key (version prefix); the
    -- unique (user_id, version) makes a second attempt insert nothing.
    INSERT INTO notifier.email_digests (user_id, version, event_count)
    SELECT i.user_id, i.version, count(*) FROM notifier.email_digest_items i
    WHERE i.version IN (SELECT version FROM done)
    GROUP BY i.version, i.user_id
    ON CONFLICT (user_id, version) DO NOTHING
)
SELECT version, seconds FROM done
"""


@dataclass(frozen=True)
class Unit:
    """A claimed diff unit and what its cycle says."""

    id: int
    version: str
    entity_type: str
    entity_ids: list[str]
    attempts: int
    started_at: datetime
    previous_version: str | None


async def record_signal(
    conn: AsyncConnection[Any],
    *,
    version: str,
    service: str,
    completed_at: datetime | None,
    message: dict[str, Any],
    required: tuple[str, ...],
    unit_size: int,
) -> bool:
    """Record one completion signal; fire the cycle if it was the last one.

    Returns True when this call fired the cycle (and created its units). Runs
    in its own transaction; the caller acks the message after it returns.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SIGNAL_LOCK_KEY,))
        signal = {"version": version, "service": service, "source": "amqp",
                  "completed_at": completed_at, "message": json.dumps(message)}  # fmt: skip
        return await _record_and_fire(conn, signal, required, unit_size)


async def record_latch(
    conn: AsyncConnection[Any],
    *,
    version: str,
    completed_at: datetime | None,
    latch: dict[str, Any],
    required: tuple[str, ...],
    unit_size: int,
) -> bool:
    """Record a complete graph latch (contract §3a); fire its cycle unless already fired.

    A version sorting before (or equal to) the newest fired one is not even
    recorded. Returns True when this call fired the cycle. Routers polling at
    once serialize on the signal lock: one fires, the others find it running.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SIGNAL_LOCK_KEY,))
        newest = (await (await conn.execute(NEWEST_FIRED)).fetchone() or (None,))[0]
        if newest is not None and version.encode() <= newest.encode():
            return False
        signal = {"version": version, "service": LATCH_SERVICE, "source": "graph",
                  "completed_at": completed_at, "message": json.dumps(latch)}  # fmt: skip
        return await _record_and_fire(conn, signal, required, unit_size)


async def _record_and_fire(
    conn: AsyncConnection[Any], signal: dict[str, Any], required: tuple[str, ...], unit_size: int
) -> bool:
    """Inside the signal lock: insert the cycle and the signal, fire, create the units."""
    version = signal["version"]
    await conn.execute(INSERT_CYCLE, {"version": version, "required": list(required)})
    await conn.execute(INSERT_SIGNAL, signal)
    cur = await conn.execute(FIRE, {"version": version, "source": signal["source"]})
    row = await cur.fetchone()
    if row is None:
        return False
    started: datetime = row[0]
    await conn.execute(INSERT_RELEASES_UNIT, {"version": version})
    params = {"version": version, "started": started, "size": unit_size, "previous": row[1]}
    await conn.execute(INSERT_UNITS, params)
    return True


async def claim(conn: AsyncConnection[Any], me: str, lease_seconds: float) -> Unit | None:
    """Claim the next claimable unit of the oldest running cycle, or None.

    One statement: on an autocommit connection, one round trip.
    """
    params = {"me": me, "lease": lease_seconds, "needs": list(NEEDS_RELEASES)}
    if conn.autocommit:
        row = await (await conn.execute(CLAIM, params)).fetchone()
    else:
        async with conn.transaction():
            row = await (await conn.execute(CLAIM, params)).fetchone()
    if row is None:
        return None
    return Unit(row[0], row[1], row[2], list(row[3]), row[4], row[5], row[6])


async def renew(conn: AsyncConnection[Any], unit_id: int, me: str, lease_seconds: float) -> bool:
    """Extend a unit's lease; False if it is no longer ours."""
    cur = await conn.execute(RENEW, {"id": unit_id, "me": me, "lease": lease_seconds})
    return cur.rowcount == 1


def owned(row: Sequence[Any] | None, me: str) -> bool:
    """True if a LOCK_UNIT row says the unit is still pending and claimed by `me`."""
    return row is not None and row[0] == "pending" and row[1] == me


async def lock_owned(conn: AsyncConnection[Any], unit_id: int, me: str) -> bool:
    """Inside a transaction: lock the unit; True if it is still pending and ours."""
    cur = await conn.execute(LOCK_UNIT, {"id": unit_id})
    return owned(await cur.fetchone(), me)


async def mark_done(conn: AsyncConnection[Any], unit_id: int, stats: dict[str, Any]) -> None:
    """Inside the unit's transaction: mark it done with its stats."""
    await conn.execute(MARK_DONE, {"id": unit_id, "stats": json.dumps(stats)})


async def release(
    conn: AsyncConnection[Any], unit_id: int, me: str, delay: float, stats: dict[str, Any]
) -> None:
    """Give a unit back (after a failure) so it is claimed again after `delay` seconds."""
    await conn.execute(
        RELEASE, {"id": unit_id, "me": me, "delay": delay, "stats": json.dumps(stats)}
    )


@dataclass(frozen=True)
class Finished:
    """A cycle just marked done, and how long it took from firing."""

    version: str
    seconds: float


async def finish_cycles(conn: AsyncConnection[Any]) -> list[Finished]:
    """Mark done every running cycle without pending units; return them."""
    cur = await conn.execute(FINISH_CYCLE)
    return [Finished(row[0], float(row[1])) for row in await cur.fetchall()]


def claim_token(replica: str) -> str:
    """A claim identity unique to this process (replicas may share a host name)."""
    return f"{replica}:{uuid.uuid4().hex[:12]}"
