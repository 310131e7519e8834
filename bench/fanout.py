"""Fan-out feed rows/s against a bare COPY of the same rows into the same table shape."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from bench.core import Context, Figure, timer
from notifier import fanout

EVENTS = 100  # the rows are spread over this many events (each watched by rows/EVENTS users)


async def fanout_rate(ctx: Context) -> Figure:
    """Feed rows written per second by `fan_out_events`, vs COPY of (user_id, event_id)."""
    rows = ctx.sizes["fanout_rows"]
    per_event = max(1, rows // EVENTS)
    url = ctx.fresh_database()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO notifier.watchlists (user_id, entity_type, entity_id, created_at) "
            "SELECT gen_random_uuid(), 'artist', e::text, now() - interval '1 day' "
            "FROM generate_series(1, %s) AS e, generate_series(1, %s) AS u",
            (EVENTS, per_event),
        )
        cur = await conn.execute(
            "INSERT INTO notifier.events (dedup_key, source, version, event, entity_type, "
            "entity_id) SELECT 'b:' || e, 'router', 'v1', 'new_releases', 'artist', e::text "
            "FROM generate_series(1, %s) AS e RETURNING id",
            (EVENTS,),
        )
        event_ids = [r[0] for r in await cur.fetchall()]
        await conn.execute("VACUUM ANALYZE notifier.watchlists")
        with timer() as elapsed:
            async with conn.transaction():
                result = await fanout.fan_out_events(
                    conn, event_ids, watches_before=datetime.now(UTC) + timedelta(days=1)
                )
        ours = result.feed_rows / elapsed()

        # The peer: the same (user_id, event_id) pairs COPYed into a table with the
        # same unique key and index as notification_events, in one transaction.
        cur = await conn.execute(
            "SELECT user_id, event_id FROM notifier.notification_events ORDER BY id"
        )
        pairs: list[tuple[Any, ...]] = await cur.fetchall()
        await conn.execute(
            "CREATE TABLE notifier.copy_peer (LIKE notifier.notification_events "
            "INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING INDEXES INCLUDING CONSTRAINTS)"
        )
        with timer() as peer_elapsed:
            copy_sql = "COPY notifier.copy_peer (user_id, event_id) FROM STDIN"
            async with conn.transaction(), conn.cursor() as c, c.copy(copy_sql) as cp:
                for pair in pairs:
                    await cp.write_row(pair)
        peer = len(pairs) / peer_elapsed()
    ratio = ours / peer
    return Figure(
        name="fan-out feed rows/s",
        ours=ours,
        unit="rows/s",
        peer=peer,
        peer_name="bare COPY",
        target=">= 100,000/s and >= 0.5x",
        passed=ours >= 100_000 and ratio >= 0.5,
        notes={"rows": result.feed_rows, "events": EVENTS, "seconds": elapsed()},
    )
