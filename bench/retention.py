"""Retention on a large feed and outbox, and what a reader sees meanwhile.

    uv run python -m bench.retention [--rows 10000000] [--outbox 1000000] [--users 10000]

Seeds `--rows` feed rows (over `--users` users, 100 users an event, half of
them older than the default 365-day retention, a third of those unread, the
counters folded) and `--outbox` finished outbox rows with one attempt each
(half older than 30 days). Then one `retention.run_pass` with the default
policy, while a reader takes first pages of random users' feeds back to back.
Prints rows removed, seconds, rows/s, batches and the longest batch; the
reader's p50/p99 before the pass and during it (same run, side by side); and
checks that every unread count is still right.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime

import psycopg

from notifier import db, retention
from notifier.api import feed
from notifier.devkit import services

# Events first (one per 100 feed rows), then feed rows by chunk: row g of the
# chunk goes to user g % users, created `age` days ago (older rows first, so
# ids grow with time as fan-out makes them).
SEED_EVENTS = """
INSERT INTO notifier.events (dedup_key, source, event, entity_type, entity_id, detail,
                             created_at, fanned_out_at)
SELECT 'bench:' || g, 'router', 'new_releases', 'artist', g::text, '{"new_release_count": 1}',
       now() - make_interval(days => 730) * (1 - g::float / %(n)s),
       now() - make_interval(days => 730) * (1 - g::float / %(n)s)
FROM generate_series(0, %(n)s - 1) AS g
"""
# Events lo..hi-1 (by their number, oldest first), `per` rows each.
_EVENTS = """
(SELECT id, created_at, entity_id::int AS n FROM notifier.events
 WHERE entity_id::int >= %(lo)s AND entity_id::int < %(hi)s) e
CROSS JOIN generate_series(0, %(per)s - 1) AS k
"""
SEED_FEED = f"""
INSERT INTO notifier.notification_events (user_id, event_id, created_at, read_at)
SELECT (%(users)s::uuid[])[1 + (e.n * %(per)s + k) %% cardinality(%(users)s::uuid[])], e.id,
       e.created_at, CASE WHEN k %% 3 = 0 THEN NULL ELSE e.created_at END
FROM {_EVENTS}
ORDER BY e.n, k
"""  # noqa: S608 - constants only
FOLD_ALL = """
INSERT INTO notifier.unread_counters (user_id, unread, counted_upto)
SELECT user_id, count(*) FILTER (WHERE read_at IS NULL), notifier.feed_top()
FROM notifier.notification_events GROUP BY user_id
"""
SEED_OUTBOX = f"""
WITH o AS (
    INSERT INTO notifier.outbox (user_id, event_id, status, created_at, updated_at, delivered_at)
    SELECT (%(users)s::uuid[])[1 + k], e.id, 'delivered', e.created_at, e.created_at,
           e.created_at
    FROM {_EVENTS}
    ORDER BY e.n, k
    RETURNING id, user_id, created_at
)
INSERT INTO notifier.delivery_attempts (outbox_id, user_id, attempted_at, duration_ms, status_code)
SELECT id, user_id, created_at, 12, 200 FROM o
"""  # noqa: S608 - constants only
LIVE_COUNTS = """
SELECT user_id, count(*) FROM notifier.notification_events WHERE read_at IS NULL GROUP BY 1
"""
CHUNK = 1_000_000


def _seed(url: str, rows: int, outbox: int, users: list[uuid.UUID]) -> None:
    """Events (100 feed rows each), feed rows and outbox rows, by chunks of events."""
    events = max(1, rows // 100)
    per_chunk = max(1, CHUNK // 100)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SEED_EVENTS, {"n": events})
        for lo in range(0, events, per_chunk):
            hi = min(events, lo + per_chunk)
            conn.execute(SEED_FEED, {"lo": lo, "hi": hi, "per": 100, "users": users})
            print(f"  feed rows: {hi * 100:,}", file=sys.stderr)
        conn.execute(FOLD_ALL)
        per_event = max(1, outbox // events)
        conn.execute(SEED_OUTBOX, {"lo": 0, "hi": events, "per": per_event, "users": users})
        conn.execute("VACUUM ANALYZE")


async def _reader(url: str, users: list[uuid.UUID], stop: asyncio.Event) -> list[float]:
    """First-page latencies (ms) of random users' feeds until `stop`."""
    took: list[float] = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            user = random.choice(users)
            started = time.perf_counter()
            await conn.execute(feed.FEED_PAGE, {"user": user, "before": 2**62, "limit": 20})
            await feed.unread_count(conn, user)
            took.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0)
    return took


def _p(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else float("nan")


async def _measure(
    url: str, users: list[uuid.UUID]
) -> tuple[retention.Removed, float, list[float], list[float]]:
    stop = asyncio.Event()
    before_task = asyncio.create_task(_reader(url, users, stop))
    await asyncio.sleep(5)
    stop.set()
    before = await before_task
    stop = asyncio.Event()
    during_task = asyncio.create_task(_reader(url, users, stop))
    async with db.pool(url, min_size=1, max_size=2) as pool:
        started = time.perf_counter()
        removed = await retention.run_pass(pool, retention.Policy(), datetime.now(UTC))
        seconds = time.perf_counter() - started
    stop.set()
    during = await during_task
    assert removed is not None
    return removed, seconds, before, during


async def _wrong_counts(url: str, users: list[uuid.UUID]) -> int:
    """How many users' unread counts (counter + live part) differ from a full count."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        rows = await (await conn.execute(LIVE_COUNTS)).fetchall()
        live = {row[0]: int(row[1]) for row in rows}
        kept = await feed.unread_counts(conn, users)
    return sum(1 for u in users if kept.get(u, 0) != live.get(u, 0))


def main(argv: list[str] | None = None) -> int:
    """Seed, run one pass beside a reader, print the figures."""
    p = argparse.ArgumentParser(prog="python -m bench.retention", description=__doc__)
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--outbox", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=10_000)
    args = p.parse_args(argv)
    users = [uuid.uuid4() for _ in range(args.users)]
    with services.postgres() as pg:
        name = f"bench_retention_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(pg.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            url = pg.url(name)
            db.migrate(url)
            started = time.perf_counter()
            _seed(url, args.rows, args.outbox, users)
            print(f"seeded in {time.perf_counter() - started:.0f}s", file=sys.stderr)
            removed, seconds, before, during = asyncio.run(_measure(url, users))
            wrong = asyncio.run(_wrong_counts(url, users))
        finally:
            with psycopg.connect(pg.url(), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    total = removed.feed + removed.outbox + removed.attempts + removed.events
    print("| figure | value |\n|---|---|")
    print(f"| feed rows removed | {removed.feed:,} of {args.rows:,} |")
    print(f"| outbox rows / attempts / events removed | {removed.outbox:,} / "
          f"{removed.attempts:,} / {removed.events:,} |")  # fmt: skip
    print(f"| pass | {seconds:.1f} s, {total / seconds:,.0f} rows/s, {removed.batches:,} batches |")
    print(f"| longest batch | {removed.longest_batch_ms:.0f} ms |")
    print(f"| reader p50 / p99 before | {_p(before, 50):.2f} / {_p(before, 99):.2f} ms "
          f"({len(before):,} reads) |")  # fmt: skip
    print(f"| reader p50 / p99 during | {_p(during, 50):.2f} / {_p(during, 99):.2f} ms "
          f"({len(during):,} reads) |")  # fmt: skip
    print(f"| unread counts wrong afterwards | {wrong} of {len(users):,} users |")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
