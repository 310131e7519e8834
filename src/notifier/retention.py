"""Retention: old feed rows, events, outbox rows and attempts go, in bounded batches.

One pass walks each table by primary key from its oldest row, `batch` rows at
a time, each batch its own short transaction, and stops at the first batch
whose rows are all younger than the cutoff (ids grow with time). No statement
deletes more than one batch, so no lock is held long and vacuum keeps up.

- Feed rows (`notification_events`) older than `feed_days`, read or not. The
  unread counter stays right: the batch's users' counter rows are locked first
  (as every read does, `api.feed.LOCK_COUNTER`, which also changes the feed's
  ETag), and unread rows at or below `counted_upto` are subtracted.
- Outbox rows finished (delivered, dead, cancelled, recovered, held) and not
  touched for `outbox_days`, with their attempts. A row a redelivery points at
  waits for the redelivery to go (the next pass takes it).
- Email digests sent or dead and not touched for `outbox_days`, with their
  attempts and items.
- Attempts (webhook and digest) older than `attempts_days`, whatever their row.
- Events older than `events_days` once no feed row can point at them (fanned
  out, or cancelled, before the oldest feed row left) and no outbox row does.
- The router's per-cycle work rows (cycle_releases, cycle_release_edges,
  cycle_masters, cycle_master_edges, cycle_search_matches) of done cycles
  older than the newest `cycles` done ones: only the cycle's own units read
  them, while it runs.

`0` days (or cycles) keeps a table forever. One replica runs a pass at a time (a session
advisory lock); the delivery role runs one every `interval` seconds, and
`notifier retention` runs one now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec
import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from notifier import config, db

log = logging.getLogger(__name__)

# pg_try_advisory_lock key of a pass: "n-retain" in ASCII.
RETENTION_LOCK_KEY = 0x6E2D72657461696E
TRY_LOCK = "SELECT pg_try_advisory_lock(%s)"
UNLOCK = "SELECT pg_advisory_unlock(%s)"

# The next `batch` feed rows after `after` (primary key), with those older
# than the cutoff picked out. `young` is true when none of them is old: the
# walk is over.
FEED_WINDOW = """
WITH w AS (
    SELECT id, user_id, created_at FROM notifier.notification_events
    WHERE id > %(after)s ORDER BY id LIMIT %(batch)s
)
SELECT max(id) AS last_id,
       coalesce(array_agg(id ORDER BY id) FILTER (WHERE created_at < %(cutoff)s), '{}') AS old_ids,
       coalesce(array_agg(DISTINCT user_id) FILTER (WHERE created_at < %(cutoff)s), '{}')
           AS old_users
FROM w
"""
# The counter rows of the batch's users, locked in user order (reads lock one
# row each; the order keeps two passes from deadlocking). Written like
# api.feed.LOCK_COUNTER: created when missing, xmin changed (the ETag moves).
LOCK_COUNTERS = """
INSERT INTO notifier.unread_counters AS c (user_id, counted_upto)
SELECT u, 0 FROM unnest(%(users)s::uuid[]) AS u ORDER BY u
ON CONFLICT (user_id) DO UPDATE SET unread = c.unread
"""
# Delete the batch's rows; subtract the unread ones the counters had folded.
DELETE_FEED = """
WITH gone AS (
    DELETE FROM notifier.notification_events WHERE id = ANY(%(ids)s::bigint[])
    RETURNING id, user_id, read_at IS NULL AS unread
), folded AS (
    SELECT g.user_id, count(*) AS n
    FROM gone g JOIN notifier.unread_counters c ON c.user_id = g.user_id
    WHERE g.unread AND g.id <= c.counted_upto
    GROUP BY g.user_id
), fixed AS (
    UPDATE notifier.unread_counters c SET unread = greatest(c.unread - f.n, 0)
    FROM folded f WHERE c.user_id = f.user_id
)
SELECT count(*) FROM gone
"""

# Outbox and email digests: the next `batch` rows by primary key, the ids of
# the old finished ones among them (`{done}`: which are finished, fixed text)
# and whether all were created after the cutoff.
_WINDOW = """
WITH w AS (
    SELECT id, status, created_at, updated_at FROM notifier.{table}
    WHERE id > %(after)s ORDER BY id LIMIT %(batch)s
)
SELECT max(w.id) AS last_id,
       coalesce(array_agg(w.id ORDER BY w.id) FILTER (
           WHERE w.updated_at < %(cutoff)s
             AND {done}
       ), '{{}}') AS old_ids,
       bool_and(w.created_at >= %(cutoff)s) AS young
FROM w
"""
# Outbox rows finished and that no redelivery points at (outbox_redelivery_of_idx).
OUTBOX_WINDOW = _WINDOW.format(
    table="outbox",
    done="""w.status IN ('delivered', 'dead', 'cancelled', 'recovered', 'held')
             AND NOT EXISTS (SELECT 1 FROM notifier.outbox r WHERE r.redelivery_of = w.id)""",
)
DELETE_OUTBOX_ATTEMPTS = """
DELETE FROM notifier.delivery_attempts WHERE outbox_id = ANY(%(ids)s::bigint[])
"""
DELETE_OUTBOX = "DELETE FROM notifier.outbox WHERE id = ANY(%(ids)s::bigint[])"

# Attempts (webhook and digest): the next `batch` by primary key, the old ones deleted.
_DELETE_ATTEMPTS = """
WITH w AS (
    SELECT id, attempted_at FROM notifier.{table}
    WHERE id > %(after)s ORDER BY id LIMIT %(batch)s
), gone AS (
    DELETE FROM notifier.{table} a USING w
    WHERE a.id = w.id AND w.attempted_at < %(cutoff)s
    RETURNING 1
)
SELECT (SELECT max(id) FROM w) AS last_id, (SELECT count(*) FROM gone) AS removed,
       (SELECT bool_and(attempted_at >= %(cutoff)s) FROM w) AS young
"""
DELETE_ATTEMPTS = _DELETE_ATTEMPTS.format(table="delivery_attempts")
DELETE_DIGEST_ATTEMPTS = _DELETE_ATTEMPTS.format(table="email_digest_attempts")

# Email digests sent or dead, not touched for outbox_days, with their attempts
# and items (email_digest_attempts_digest_idx; the items' primary key
# (version, user_id, …)). A pending digest and its items stay.
DIGEST_WINDOW = _WINDOW.format(table="email_digests", done="w.status IN ('delivered', 'dead')")
DELETE_DIGESTS = """
WITH d AS (
    DELETE FROM notifier.email_digests WHERE id = ANY(%(ids)s::bigint[])
    RETURNING id, user_id, version
), attempts AS (
    DELETE FROM notifier.email_digest_attempts a USING d WHERE a.digest_id = d.id
), items AS (
    DELETE FROM notifier.email_digest_items i USING d
    WHERE i.version = d.version AND i.user_id = d.user_id
)
SELECT count(*) FROM d
"""

# The creation time of the oldest feed row left: an event fanned out before
# it has no feed row any more (fan-out writes an event's feed rows in the
# transaction that sets fanned_out_at, so they share now()).
OLDEST_FEED_ROW = """
SELECT created_at FROM notifier.notification_events ORDER BY id LIMIT 1
"""
# Events by age (events_created_idx), keyset on (created_at, id) from
# `after`; those done with (fanned out or cancelled before both cutoffs) and
# pointed at by no outbox row (outbox_event_idx) go.
DELETE_EVENTS = """
WITH w AS (
    SELECT id, created_at, coalesce(fanned_out_at, cancelled_at) AS done_at
    FROM notifier.events
    WHERE created_at < %(cutoff)s AND (created_at, id) > (%(after_at)s, %(after_id)s::uuid)
    ORDER BY created_at, id LIMIT %(batch)s
), gone AS (
    DELETE FROM notifier.events e USING w
    WHERE e.id = w.id AND w.done_at < %(cutoff)s AND w.done_at < %(feed_floor)s
      AND NOT EXISTS (SELECT 1 FROM notifier.outbox o WHERE o.event_id = w.id)
    RETURNING 1
), last AS (
    SELECT created_at, id FROM w ORDER BY created_at DESC, id DESC LIMIT 1
)
SELECT (SELECT created_at FROM last), (SELECT id FROM last), (SELECT count(*) FROM gone)
"""
NIL_UUID = "00000000-0000-0000-0000-000000000000"

# Done cycles but the newest `keep` (by firing time), oldest first, that still
# have work rows: their units only read them while the cycle runs, and a
# cycle that is not done (its units may still read them) is never picked.
OLD_CYCLES = """
SELECT c.version FROM (
    SELECT version, coalesce(fired_at, created_at) AS at FROM notifier.cycles
    WHERE status = 'done'
    ORDER BY at DESC, version DESC OFFSET %(keep)s
) c
WHERE EXISTS (SELECT 1 FROM notifier.cycle_releases t WHERE t.version = c.version)
   OR EXISTS (SELECT 1 FROM notifier.cycle_release_edges t WHERE t.version = c.version)
   OR EXISTS (SELECT 1 FROM notifier.cycle_masters t WHERE t.version = c.version)
   OR EXISTS (SELECT 1 FROM notifier.cycle_master_edges t WHERE t.version = c.version)
   OR EXISTS (SELECT 1 FROM notifier.cycle_search_matches t WHERE t.version = c.version)
ORDER BY c.at, c.version
"""
# The next `batch` work rows of one cycle from key `k*` on, in the order of
# the table's primary key (version first), deleted by ctid: each batch is an
# index range scan that starts where the previous one ended rather than over
# the dead entries before it (`>=`: the last key deleted is gone). Returns
# the rows deleted and the last key.
_DELETE_CYCLE_ROWS = """
WITH w AS (
    SELECT ctid AS row_id, {key}, row_number() OVER (ORDER BY version, {key}) AS n
    FROM notifier.{table}
    WHERE version = %(version)s AND (version, {key}) >= (%(version)s, {after})
    ORDER BY version, {key} LIMIT %(batch)s
), gone AS (
    DELETE FROM notifier.{table} WHERE ctid = ANY(ARRAY(SELECT row_id FROM w))
    RETURNING 1
), last AS (
    SELECT {key} FROM w ORDER BY n DESC LIMIT 1
)
SELECT (SELECT count(*) FROM gone), {last}
"""

DELETE_CYCLE_RELEASE_EDGES = _DELETE_CYCLE_ROWS.format(
    table="cycle_release_edges",
    key="kind, entity_id, release_id, ord",
    after="%(k0)s::text, %(k1)s::text, %(k2)s::bigint, %(k3)s::integer",
    last="(SELECT kind FROM last), (SELECT entity_id FROM last),"
         " (SELECT release_id FROM last), (SELECT ord FROM last)",
)  # fmt: skip
DELETE_CYCLE_SEARCH_MATCHES = _DELETE_CYCLE_ROWS.format(
    table="cycle_search_matches", key="search_id", after="%(k0)s::text",
    last="(SELECT search_id FROM last)",
)  # fmt: skip
DELETE_CYCLE_MASTERS = _DELETE_CYCLE_ROWS.format(
    table="cycle_masters", key="master_id", after="%(k0)s::bigint",
    last="(SELECT master_id FROM last)",
)  # fmt: skip
DELETE_CYCLE_MASTER_EDGES = _DELETE_CYCLE_ROWS.format(
    table="cycle_master_edges",
    key="artist_id, master_id, ord",
    after="%(k0)s::text, %(k1)s::bigint, %(k2)s::integer",
    last="(SELECT artist_id FROM last), (SELECT master_id FROM last), (SELECT ord FROM last)",
)  # fmt: skip
DELETE_CYCLE_RELEASES = _DELETE_CYCLE_ROWS.format(
    table="cycle_releases", key="release_id", after="%(k0)s::bigint",
    last="(SELECT release_id FROM last)",
)  # fmt: skip
# Each work table's delete and the key its first batch starts from (below
# every key: '' is the least text, then the least bigint and integer).
MIN_BIGINT, MIN_INTEGER = -(2**63), -(2**31)
CYCLE_TABLES: tuple[tuple[str, tuple[Any, ...]], ...] = (
    (DELETE_CYCLE_RELEASE_EDGES, ("", "", MIN_BIGINT, MIN_INTEGER)),
    (DELETE_CYCLE_SEARCH_MATCHES, ("",)),
    (DELETE_CYCLE_MASTERS, (MIN_BIGINT,)),
    (DELETE_CYCLE_MASTER_EDGES, ("", MIN_BIGINT, MIN_INTEGER)),
    (DELETE_CYCLE_RELEASES, (MIN_BIGINT,)),
)


@dataclass(frozen=True)
class Policy:
    """How long each kind of row is kept, in days (0: forever), and the batch size."""

    feed_days: float = 365
    events_days: float = 365
    outbox_days: float = 30
    attempts_days: float = 30
    batch: int = 5000
    cycles: int = 2  # the newest done cycles whose work rows are kept (0: all)

    @classmethod
    def from_settings(cls, s: config.Settings) -> Policy:
        """The policy `s` configures (the NOTIFIER_RETENTION_* variables)."""
        return cls(s.retention_feed_days, s.retention_events_days, s.retention_outbox_days,
                   s.retention_attempts_days, s.retention_batch, s.retention_cycles)  # fmt: skip


class Removed(msgspec.Struct):
    """Rows one pass removed, per table (`None` fields: the pass did not run)."""

    feed: int = 0
    events: int = 0
    outbox: int = 0
    digests: int = 0
    attempts: int = 0
    cycles: int = 0  # cycles whose work rows all went
    cycle_rows: int = 0
    batches: int = 0
    longest_batch_ms: float = 0.0


def cutoff(now: datetime, days: float) -> datetime | None:
    """The creation time before which rows go, or None when kept forever."""
    return now - timedelta(days=days) if days > 0 else None


@contextlib.asynccontextmanager
async def _batch(conn: AsyncConnection[Any], out: Removed) -> AsyncIterator[None]:
    """One batch: its own transaction, counted, the longest kept."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with conn.transaction():
        yield
    out.batches += 1
    out.longest_batch_ms = max(out.longest_batch_ms, (loop.time() - started) * 1000)


async def _one(conn: AsyncConnection[Any], query: str, params: dict[str, Any]) -> Any:
    """The one row `query` answers (every query here aggregates)."""
    row = await (await conn.execute(query, params)).fetchone()
    assert row is not None
    return row


async def _feed(conn: AsyncConnection[Any], until: datetime, batch: int, out: Removed) -> None:
    after = 0
    while True:
        async with _batch(conn, out):
            params = {"after": after, "batch": batch, "cutoff": until}
            last_id, ids, users = await _one(conn, FEED_WINDOW, params)
            if ids:
                await conn.execute(LOCK_COUNTERS, {"users": users})
                out.feed += int((await _one(conn, DELETE_FEED, {"ids": ids}))[0])
        if not ids:  # an empty window, or nothing old in it: the rest is younger
            return
        after = last_id


async def _finished(
    conn: AsyncConnection[Any], window: str, params: dict[str, Any], out: Removed,
    remove: Callable[[AsyncConnection[Any], list[int]], Awaitable[int]],
) -> int:  # fmt: skip
    """Walk a table by `window` (last id, old ids, young); `remove` each batch's old ids."""
    after, removed = 0, 0
    while True:
        async with _batch(conn, out):
            last_id, ids, young = await _one(conn, window, params | {"after": after})
            if ids:
                removed += await remove(conn, ids)
        if last_id is None or young:
            return removed
        after = last_id


async def _remove_outbox(conn: AsyncConnection[Any], ids: list[int]) -> int:
    await conn.execute(DELETE_OUTBOX_ATTEMPTS, {"ids": ids})
    return (await conn.execute(DELETE_OUTBOX, {"ids": ids})).rowcount


async def _remove_digests(conn: AsyncConnection[Any], ids: list[int]) -> int:
    return int((await _one(conn, DELETE_DIGESTS, {"ids": ids}))[0])


async def _attempts(conn: AsyncConnection[Any], until: datetime, batch: int, out: Removed) -> None:
    for query in (DELETE_ATTEMPTS, DELETE_DIGEST_ATTEMPTS):
        after = 0
        while True:
            async with _batch(conn, out):
                params = {"after": after, "batch": batch, "cutoff": until}
                last_id, removed, young = await _one(conn, query, params)
                out.attempts += int(removed)
            if last_id is None or young:
                break
            after = last_id


async def _events(conn: AsyncConnection[Any], until: datetime, batch: int, out: Removed) -> None:
    row = await (await conn.execute(OLDEST_FEED_ROW)).fetchone()
    await conn.commit()
    feed_floor = row[0] if row else until
    after_at, after_id = datetime.min.replace(tzinfo=until.tzinfo), NIL_UUID
    while True:
        async with _batch(conn, out):
            params = {"cutoff": until, "feed_floor": feed_floor, "after_at": after_at,
                      "after_id": after_id, "batch": batch}  # fmt: skip
            last_at, last_id, removed = await _one(conn, DELETE_EVENTS, params)
            out.events += int(removed)
        if last_at is None:
            return
        after_at, after_id = last_at, last_id


async def _cycles(conn: AsyncConnection[Any], keep: int, batch: int, out: Removed) -> None:
    versions = [r[0] for r in await (await conn.execute(OLD_CYCLES, {"keep": keep})).fetchall()]
    await conn.commit()
    for version in versions:
        for query, start in CYCLE_TABLES:
            after: tuple[Any, ...] = start
            while True:
                async with _batch(conn, out):
                    params = {"version": version, "batch": batch}
                    params |= {f"k{i}": v for i, v in enumerate(after)}
                    removed, *last = await _one(conn, query, params)
                    out.cycle_rows += int(removed)
                if removed < batch:
                    break
                after = tuple(last)
        out.cycles += 1


async def run_pass(pool: AsyncConnectionPool[Any], policy: Policy, now: datetime) -> Removed | None:
    """One retention pass over every table; None when another replica is running one."""
    removed = Removed()
    async with pool.connection() as conn:
        got = await (await conn.execute(TRY_LOCK, (RETENTION_LOCK_KEY,))).fetchone()
        await conn.commit()
        if not (got and got[0]):
            return None
        try:
            # Feed first: the events step then sees how far it went.
            if (until := cutoff(now, policy.feed_days)) is not None:
                await _feed(conn, until, policy.batch, removed)
            if (until := cutoff(now, policy.outbox_days)) is not None:
                params = {"batch": policy.batch, "cutoff": until}
                removed.outbox += await _finished(
                    conn, OUTBOX_WINDOW, params, removed, _remove_outbox
                )
                removed.digests += await _finished(
                    conn, DIGEST_WINDOW, params, removed, _remove_digests
                )
            if (until := cutoff(now, policy.attempts_days)) is not None:
                await _attempts(conn, until, policy.batch, removed)
            if (until := cutoff(now, policy.events_days)) is not None:
                await _events(conn, until, policy.batch, removed)
            if policy.cycles > 0:
                await _cycles(conn, policy.cycles, policy.batch, removed)
        finally:
            await conn.execute(UNLOCK, (RETENTION_LOCK_KEY,))
            await conn.commit()
    log.info("retention pass", extra={"removed": msgspec.to_builtins(removed)})
    return removed


async def run_every(
    pool: AsyncConnectionPool[Any], policy: Policy, interval: float, stop: asyncio.Event
) -> None:
    """Run a pass every `interval` seconds until `stop` is set; errors are logged, never raised.

    The first pass runs a minute after start (sooner with a shorter interval),
    so replicas restarted more often than `interval` still run passes.
    """
    wait = min(interval, 60.0)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await stop.wait()
        wait = interval
        if stop.is_set():
            return
        try:
            await run_pass(pool, policy, datetime.now().astimezone())
        except Exception:  # a failed pass is retried at the next interval
            log.exception("retention pass failed")


def main(settings: config.Settings) -> int:
    """Entry point of `notifier retention`: one pass now; prints the rows removed as JSON."""

    async def once() -> Removed | None:
        async with db.pool(db.conninfo_for(settings, "delivery"), min_size=1, max_size=1) as pool:
            return await run_pass(pool, Policy.from_settings(settings), datetime.now().astimezone())

    try:
        removed = asyncio.run(once())
    except (psycopg.Error, OSError) as exc:
        print(f"notifier: retention failed: {exc}", file=sys.stderr)
        return 1
    if removed is None:
        print("another replica is running a retention pass", file=sys.stderr)
        return 0
    print(msgspec.json.encode(removed).decode())
    return 0
