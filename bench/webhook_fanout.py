"""Fan-out with webhook outbox rows: the endpoint lookup of every watcher vs flagged ones only.

    uv run python -m bench.webhook_fanout [--events 100] [--watchers 1000] [--rounds 5]

One database: `--events` events of artists, each watched by `--watchers`
users, one user in five with one webhook endpoint (as in bench.discogs).
Two variants of the same `fan_out_events` on the same rows, rounds
alternated (the order reversed every other round), each on an empty feed
and outbox:
- `every_watcher`: the schema before sql/021: every watch flagged
  (has_webhook true, so the hooks CTE probes webhook_configs for each
  recipient, as it did for all) and the outbox's webhook_id foreign key back;
- `flagged`: the schema as it is: only the watches of users with an
  endpoint flagged, no foreign key.
Prints each round and the medians: microseconds of fan-out per webhook
outbox row and per feed row (the statement's wall time divided by each).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from bench.core import Context, timer
from notifier import fanout
from notifier.devkit import services

SEED = """
INSERT INTO notifier.watchlists (user_id, entity_type, entity_id, created_at)
SELECT md5('wf-user-' || (e * %(watchers)s + u))::uuid, 'artist', e::text, now() - interval '1 day'
FROM generate_series(1, %(events)s) AS e, generate_series(0, %(watchers)s - 1) AS u
"""
ENDPOINTS = """
INSERT INTO notifier.webhook_configs (user_id, url, secret)
SELECT md5('wf-user-' || n)::uuid, 'https://example.org/hook',
       'whsec_' || encode(decode(md5(random()::text) || md5(random()::text), 'hex'), 'base64')
FROM generate_series(%(watchers)s, (%(events)s + 1) * %(watchers)s - 1, 5) AS n
"""
EVENTS = """
INSERT INTO notifier.events (dedup_key, source, version, event, entity_type, entity_id)
SELECT 'wf:' || e, 'router', 'v1', 'new_releases', 'artist', e::text
FROM generate_series(1, %(events)s) AS e RETURNING id
"""
RESET = """
TRUNCATE notifier.notification_events, notifier.outbox CASCADE;
UPDATE notifier.events SET fanned_out_at = NULL
"""
# The schema before sql/021, and back.
EVERY_WATCHER = """
UPDATE notifier.watchlists SET has_webhook = true;
ALTER TABLE notifier.outbox DROP CONSTRAINT IF EXISTS outbox_webhook_id_fkey;
ALTER TABLE notifier.outbox ADD CONSTRAINT outbox_webhook_id_fkey
    FOREIGN KEY (webhook_id) REFERENCES notifier.webhook_configs (id) ON DELETE SET NULL;
VACUUM ANALYZE notifier.watchlists
"""
FLAGGED = """
UPDATE notifier.watchlists w SET has_webhook = EXISTS (
    SELECT 1 FROM notifier.webhook_configs c WHERE c.user_id = w.user_id);
ALTER TABLE notifier.outbox DROP CONSTRAINT IF EXISTS outbox_webhook_id_fkey;
VACUUM ANALYZE notifier.watchlists
"""


async def _round(conn: psycopg.AsyncConnection[Any], ids: list[Any]) -> tuple[float, int, int]:
    for statement in RESET.split(";"):
        await conn.execute(statement)
    await conn.execute("VACUUM notifier.notification_events, notifier.outbox")
    before = datetime.now(UTC) + timedelta(days=1)
    with timer() as elapsed:
        async with conn.transaction():
            result = await fanout.fan_out_events(conn, ids, watches_before=before)
    return elapsed(), result.feed_rows, result.outbox_rows


async def run(url: str, events: int, watchers: int, rounds: int) -> None:
    """Seed, then alternate the variants; print rounds and medians."""
    params = {"events": events, "watchers": watchers}
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(SEED, params)
        await conn.execute(ENDPOINTS, params)
        ids = [r[0] for r in await (await conn.execute(EVENTS, params)).fetchall()]
        variants = {"every_watcher": EVERY_WATCHER, "flagged": FLAGGED}
        got: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        names = list(variants)
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                for statement in variants[name].split(";"):
                    await conn.execute(statement)
                seconds, feed, hooks = await _round(conn, ids)
                per_hook, per_feed = seconds / hooks * 1e6, seconds / feed * 1e6
                got[name].append((per_hook, per_feed))
                print(f"round {r} {name}: {seconds * 1000:.0f} ms, {feed:,} feed rows, "
                      f"{hooks:,} webhook rows: {per_hook:.1f} us a webhook row, "
                      f"{per_feed:.1f} us a feed row, load {os.getloadavg()[0]:.1f}",
                      flush=True)  # fmt: skip
        base = statistics.median(h for h, _ in got[names[0]])
        for name, rows in got.items():
            hook_us = statistics.median(h for h, _ in rows)
            feed_us = statistics.median(f for _, f in rows)
            print(f"{name}: median {hook_us:.1f} us a webhook row, {feed_us:.1f} us a feed row "
                  f"({base / hook_us:.2f}x less than {names[0]})")  # fmt: skip


def main() -> int:
    """Parse the arguments, start PostgreSQL, run."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=100)
    p.add_argument("--watchers", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    with contextlib.ExitStack() as stack:
        ctx = Context("custom", {}, stack.enter_context(services.postgres()), stack)
        asyncio.run(run(ctx.fresh_database(), args.events, args.watchers, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
