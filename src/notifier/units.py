"""Processing one claimed diff unit: graph read, diff, then one transaction.

The graph is read before the transaction. The transaction then locks the unit
row (a router whose lease was taken over commits nothing), reads and locks the
unit's snapshots, inserts the events (unique dedup keys), upserts the
snapshots, fans the new events out and marks the unit done: all or nothing,
so a crash anywhere leaves the unit to be redone from scratch with the same
result.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Literal

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from notifier import cycles, diff, fanout
from notifier.graph import Graph, ReleaseInfo

log = logging.getLogger(__name__)

# entity_snapshots primary key (entity_type, entity_id); FOR UPDATE so that a
# concurrent (lease-expired) run of the same unit waits, then sees our rows.
LOAD_SNAPSHOTS = """
SELECT entity_id, entity_name, version, release_ids, alias_ids, member_ids, release_count
FROM notifier.entity_snapshots
WHERE entity_type = %(type)s AND entity_id = ANY(%(ids)s)
FOR UPDATE
"""
# entity_snapshots primary key: insert or replace the entity's state.
UPSERT_SNAPSHOT = """
INSERT INTO notifier.entity_snapshots
    (entity_type, entity_id, entity_name, version, release_ids, alias_ids, member_ids,
     release_count, updated_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now())
ON CONFLICT (entity_type, entity_id) DO UPDATE SET
    entity_name = excluded.entity_name, version = excluded.version,
    release_ids = excluded.release_ids, alias_ids = excluded.alias_ids,
    member_ids = excluded.member_ids, release_count = excluded.release_count,
    updated_at = now()
"""
# events_dedup_key makes a re-run insert nothing.
INSERT_EVENTS = """
INSERT INTO notifier.events
    (dedup_key, source, version, event, entity_type, entity_id, entity_name, detail)
SELECT k, 'router', %(version)s, e, t, i, n, d::jsonb
FROM unnest(%(keys)s::text[], %(events)s::text[], %(types)s::text[], %(ids)s::text[],
            %(names)s::text[], %(details)s::text[]) AS x (k, e, t, i, n, d)
ON CONFLICT (dedup_key) DO NOTHING
RETURNING id
"""
# Genre/style watchers' thresholds (watchlists_entity_idx). A usable threshold
# is a positive integer JSON number; other values match no event (fan-out
# compares the JSON values) and are counted.
THRESHOLDS = """
SELECT entity_id,
       array_agg(DISTINCT (options ->> 'threshold')::bigint) FILTER (
           WHERE jsonb_typeof(options -> 'threshold') = 'number'
             AND options ->> 'threshold' ~ '^[1-9][0-9]{0,17}$'),
       bool_or(NOT options ? 'threshold'),
       count(*) FILTER (
           WHERE options ? 'threshold' AND NOT (jsonb_typeof(options -> 'threshold') = 'number'
             AND options ->> 'threshold' ~ '^[1-9][0-9]{0,17}$'))
FROM notifier.watchlists
WHERE entity_type = %(type)s AND entity_id = ANY(%(ids)s) AND created_at < %(before)s
GROUP BY entity_id
"""
# The cycle's new releases of some genres or styles (cycle_releases primary
# key prefix: version). The column is fixed by the caller, never from input.
NEW_IN_GENRES = """
SELECT t.tag, r.release_id, r.title, r.rank
FROM notifier.cycle_releases r, unnest(r.genres) AS t (tag)
WHERE r.version = %(version)s AND t.tag = ANY(%(ids)s)
"""
NEW_IN_STYLES = NEW_IN_GENRES.replace("r.genres", "r.styles")
# One row per saved search among the unit's ids (watchlists_entity_idx); all
# watches of one search share its options (the id is a hash of them).
SEARCHES = """
SELECT DISTINCT ON (entity_id) entity_id, entity_name, options
FROM notifier.watchlists
WHERE entity_type = 'search' AND entity_id = ANY(%(ids)s) AND created_at < %(before)s
ORDER BY entity_id, created_at
"""
# Percolation of one saved search against the cycle's new releases
# (cycle_releases primary key prefix: version). See diff.SearchQuery.
PERCOLATE = """
SELECT release_id, title, count(*) OVER ()
FROM notifier.cycle_releases
WHERE version = %(version)s
  AND NOT EXISTS (SELECT 1 FROM unnest(%(terms)s::text[]) AS q (term)
                  WHERE strpos(search_text, q.term) = 0)
  AND (%(genre)s::text IS NULL OR EXISTS (SELECT 1 FROM unnest(genres) AS x (v)
                                          WHERE lower(x.v) = %(genre)s))
  AND (%(style)s::text IS NULL OR EXISTS (SELECT 1 FROM unnest(styles) AS x (v)
                                          WHERE lower(x.v) = %(style)s))
  AND (%(format)s::text IS NULL OR EXISTS (SELECT 1 FROM unnest(formats) AS x (v)
                                           WHERE lower(x.v) = %(format)s))
  AND (%(label)s::text IS NULL OR %(label)s = ANY(label_ids)
       OR EXISTS (SELECT 1 FROM unnest(label_names) AS x (v) WHERE lower(x.v) = %(label)s))
  AND (%(artist)s::text IS NULL OR %(artist)s = ANY(artist_ids)
       OR EXISTS (SELECT 1 FROM unnest(artist_names) AS x (v) WHERE lower(x.v) = %(artist)s))
  AND (%(year_from)s::int IS NULL OR year >= %(year_from)s::int)
  AND (%(year_to)s::int IS NULL OR year <= %(year_to)s::int)
ORDER BY release_id
LIMIT %(cap)s
"""
# seen_releases_version_idx: was there any scan before this cycle's?
EARLIER_SCAN = """
SELECT EXISTS (SELECT 1 FROM notifier.seen_releases WHERE first_version <> %(version)s)
"""
# seen_releases primary key absorbs ids already seen (and a re-run's rows).
INSERT_SEEN = """
INSERT INTO notifier.seen_releases (release_id, first_version)
SELECT unnest(%(ids)s::bigint[]), %(version)s
ON CONFLICT (release_id) DO NOTHING
"""
# seen_releases_version_idx (first_version, release_id): keyset over the new ones.
NEW_RELEASE_IDS = """
SELECT release_id FROM notifier.seen_releases
WHERE first_version = %(version)s AND release_id > %(after)s
ORDER BY release_id
LIMIT %(limit)s
"""
# cycle_releases primary key (version, release_id) absorbs a resumed scan's rows.
INSERT_CYCLE_RELEASES = """
INSERT INTO notifier.cycle_releases
    (version, release_id, title, year, formats, artist_ids, artist_names, label_ids,
     label_names, genres, styles, search_text, rank)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (version, release_id) DO NOTHING
"""


def _text(value: object, limit: int = 1000) -> str | None:
    return diff.clip_name(value, limit)


def _texts(values: object, limit: int = 200) -> list[str]:
    if not isinstance(values, list):
        return []
    return [t for t in (_text(v, limit) for v in values) if t is not None]


def release_row(version: str, info: ReleaseInfo, counters: diff.Counters) -> tuple[Any, ...] | None:
    """A cycle_releases row for one release (None, counted, when its id is not numeric)."""
    rid = diff.parse_id(info.id)
    if rid is None:
        counters.add("non_numeric_release_ids")
        return None
    year = info.year if isinstance(info.year, int) and not isinstance(info.year, bool) else None
    if year is not None and not -100_000 <= year <= 100_000:
        year = None
    if info.year is not None and year is None:
        counters.add("bad_release_year")
    if info.formats is not None and not isinstance(info.formats, list):
        counters.add("bad_release_formats")
    title = _text(info.title)
    artist_ids = [t for t in (_text(a, 100) for a, _ in info.artists) if t is not None]
    artist_names = [t for t in (_text(n) for _, n in info.artists) if t is not None]
    label_ids = [t for t in (_text(a, 100) for a, _ in info.labels) if t is not None]
    label_names = [t for t in (_text(n) for _, n in info.labels) if t is not None]
    haystack = " ".join([title or "", *artist_names, *label_names]).lower()
    return (
        version,
        rid,
        title,
        year,
        _texts(info.formats),
        artist_ids,
        artist_names,
        label_ids,
        label_names,
        _texts(info.genres),
        _texts(info.styles),
        haystack,
        info.rank,
    )


class Stopping(Exception):
    """The process is shutting down: a long unit gives itself back unfinished."""


class UnitRunner:
    """Runs claimed units against one graph and one PostgreSQL pool."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        graph: Graph,
        me: str,
        *,
        email: bool,
        batch: int,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.pool, self.graph, self.me, self.email, self.batch = pool, graph, me, email, batch
        self.stop = stop or asyncio.Event()
        self._started = time.monotonic()

    async def run(self, unit: cycles.Unit) -> dict[str, Any] | None:
        """Process `unit`; return its stats, or None if it was no longer ours.

        One unit at a time per runner (the timings in the stats assume it).
        """
        self._started = time.monotonic()
        if unit.entity_type == cycles.RELEASES_UNIT:
            return await self._releases(unit)
        ids = unit.entity_ids
        if unit.entity_type == "artist":
            artists = await self.graph.artists(ids)
            return await self._commit(
                unit,
                lambda s: [
                    diff.diff_artist(
                        unit.version, unit.previous_version, i, artists.get(i), s.get(i)
                    )
                    for i in ids
                ],
            )
        if unit.entity_type == "label":
            labels = await self.graph.labels(ids)
            return await self._commit(
                unit,
                lambda s: [
                    diff.diff_label(unit.version, unit.previous_version, i, labels.get(i), s.get(i))
                    for i in ids
                ],
            )
        if unit.entity_type in ("genre", "style"):
            return await self._tags(unit)
        if unit.entity_type == "search":
            return await self._search(unit)
        counters = diff.Counters()
        counters.add("unknown_entity_type", len(ids))
        log.warning(
            "unknown entity type in a diff unit",
            extra={"unit": unit.id, "entity_type": unit.entity_type},
        )
        return await self._commit(
            unit, lambda s: [diff.DiffResult([], None, diff.Counters()) for _ in ids], counters
        )

    async def _commit(
        self,
        unit: cycles.Unit,
        compute: Any,
        counters: diff.Counters | None = None,
        conn_work: Any = None,
    ) -> dict[str, Any] | None:
        """The unit's transaction: lock, snapshots, events, fan-out, done."""
        counters = counters or diff.Counters()
        graph_done = time.monotonic()
        async with self.pool.connection() as conn, conn.transaction():
            if not await cycles.lock_owned(conn, unit.id, self.me):
                return None
            extra = await conn_work(conn) if conn_work is not None else None
            snapshots = await load_snapshots(conn, unit.entity_type, unit.entity_ids)
            results: list[diff.DiffResult] = (
                compute(snapshots) if extra is None else compute(snapshots, extra)
            )
            events: list[diff.EventDraft] = []
            for entity_id, result in zip(unit.entity_ids, results, strict=True):
                counters.merge(result.counters)
                old = snapshots.get(entity_id)
                if old is not None and old.version == unit.version:
                    counters.add("already_diffed")  # not expected: the unit lock guards it
                    continue
                events.extend(result.events)
            await save_snapshots(
                conn, unit.entity_type, unit.entity_ids, results, snapshots, unit.version
            )
            event_ids = await insert_events(conn, unit.version, events)
            fanout_start = time.monotonic()
            out = await fanout.fan_out_events(
                conn, event_ids, watches_before=unit.started_at, email=self.email
            )
            stats: dict[str, Any] = dict(counters.values)
            stats.update(
                entities=len(unit.entity_ids),
                events=len(event_ids),
                feed_rows=out.feed_rows,
                outbox_rows=out.outbox_rows,
                # Milliseconds spent reading the graph, fanning out, and in the whole unit.
                graph_ms=round((graph_done - self._started) * 1000),
                fanout_ms=round((time.monotonic() - fanout_start) * 1000),
                unit_ms=round((time.monotonic() - self._started) * 1000),
            )
            await cycles.mark_done(conn, unit.id, stats)
        return stats

    async def _tags(self, unit: cycles.Unit) -> dict[str, Any] | None:
        tag: Literal["Genre", "Style"] = "Genre" if unit.entity_type == "genre" else "Style"
        states = await self.graph.tags(tag, unit.entity_ids)
        counters = diff.Counters()

        async def work(
            conn: AsyncConnection[Any],
        ) -> tuple[dict[str, list[int]], dict[str, list[diff.NotableRelease]]]:
            thresholds: dict[str, list[int]] = {}
            cur = await conn.execute(
                THRESHOLDS,
                {"type": unit.entity_type, "ids": unit.entity_ids, "before": unit.started_at},
            )
            for entity_id, explicit, any_default, bad in await cur.fetchall():
                values = list(explicit or [])
                if any_default:
                    values.extend(fanout.THRESHOLD_MILESTONES)
                thresholds[entity_id] = values
                counters.add("bad_threshold_option", int(bad))
            notable: dict[str, list[diff.NotableRelease]] = defaultdict(list)
            query = NEW_IN_GENRES if unit.entity_type == "genre" else NEW_IN_STYLES
            cur = await conn.execute(query, {"version": unit.version, "ids": unit.entity_ids})
            for name, rid, title, rank in await cur.fetchall():
                notable[name].append(diff.NotableRelease(rid, title, rank))
            return thresholds, notable

        def compute(
            snaps: dict[str, diff.Snapshot],
            extra: tuple[dict[str, list[int]], dict[str, list[diff.NotableRelease]]],
        ) -> list[diff.DiffResult]:
            thresholds, notable = extra
            return [
                diff.diff_tag(
                    unit.version,
                    unit.previous_version,
                    unit.entity_type,
                    i,
                    states.get(i),
                    snaps.get(i),
                    thresholds.get(i, ()),
                    notable.get(i, []),
                )
                for i in unit.entity_ids
            ]

        return await self._commit(unit, compute, counters, work)

    async def _search(self, unit: cycles.Unit) -> dict[str, Any] | None:
        async def work(conn: AsyncConnection[Any]) -> dict[str, Any]:
            found: dict[str, Any] = {}
            cur = await conn.execute(SEARCHES, {"ids": unit.entity_ids, "before": unit.started_at})
            for entity_id, name, options in await cur.fetchall():
                query = diff.parse_search(options)
                if query is None:
                    found[entity_id] = (name, None, 0)
                    continue
                params = {
                    "version": unit.version,
                    "terms": list(query.terms),
                    "genre": query.genre,
                    "style": query.style,
                    "format": query.format,
                    "label": query.label,
                    "artist": query.artist,
                    "year_from": query.year_from,
                    "year_to": query.year_to,
                    "cap": diff.SEARCH_MATCH_CAP,
                }
                rows = await (await conn.execute(PERCOLATE, params)).fetchall()
                matches = [diff.SearchMatch(r[0], r[1]) for r in rows]
                found[entity_id] = (name, matches, int(rows[0][2]) if rows else 0)
            return found

        def compute(
            snaps: dict[str, diff.Snapshot], found: dict[str, Any]
        ) -> list[diff.DiffResult]:
            out = []
            for i in unit.entity_ids:
                name, matches, count = found.get(i, (None, None, 0))
                out.append(
                    diff.diff_search(
                        unit.version, unit.previous_version, i, name, matches, count, snaps.get(i)
                    )
                )
            return out

        return await self._commit(unit, compute, None, work)

    async def _releases(self, unit: cycles.Unit) -> dict[str, Any] | None:
        """Record the graph's release ids; store the cycle's new ones with their details."""
        counters = diff.Counters()
        async with self.pool.connection() as conn:
            cur = await conn.execute(EARLIER_SCAN, {"version": unit.version})
            row = await cur.fetchone()
            baseline = not (row is not None and row[0])
            scanned = 0
            async for chunk in self.graph.release_ids(self.batch):
                if self.stop.is_set():  # the scan is long: drain by giving it back
                    raise Stopping
                ids = diff.parse_ids(chunk, counters, "release_ids")
                scanned += len(chunk)
                await conn.execute(INSERT_SEEN, {"ids": ids, "version": unit.version})
            new_count = 0
            if not baseline:
                after = -1
                while True:
                    cur = await conn.execute(
                        NEW_RELEASE_IDS,
                        {"version": unit.version, "after": after, "limit": self.batch},
                    )
                    new_ids = [r[0] for r in await cur.fetchall()]
                    if not new_ids:
                        break
                    after = new_ids[-1]
                    new_count += len(new_ids)
                    infos = await self.graph.releases([str(i) for i in new_ids])
                    rows = [r for i in infos if (r := release_row(unit.version, i, counters))]
                    async with conn.cursor() as c:
                        await c.executemany(INSERT_CYCLE_RELEASES, rows)
        stats: dict[str, Any] = dict(counters.values)
        stats.update(
            releases_scanned=scanned, new_releases=new_count, release_baseline=int(baseline)
        )
        async with self.pool.connection() as conn, conn.transaction():
            if not await cycles.lock_owned(conn, unit.id, self.me):
                return None
            await cycles.mark_done(conn, unit.id, stats)
        return stats


async def load_snapshots(
    conn: AsyncConnection[Any], entity_type: str, ids: Sequence[str]
) -> dict[str, diff.Snapshot]:
    """The snapshots of `ids`, locked until the transaction ends."""
    cur = await conn.execute(LOAD_SNAPSHOTS, {"type": entity_type, "ids": list(ids)})
    return {
        r[0]: diff.Snapshot(
            version=r[2],
            entity_name=r[1],
            release_ids=r[3],
            alias_ids=r[4],
            member_ids=r[5],
            release_count=r[6],
        )
        for r in await cur.fetchall()
    }


async def save_snapshots(
    conn: AsyncConnection[Any],
    entity_type: str,
    ids: Sequence[str],
    results: Sequence[diff.DiffResult],
    old: dict[str, diff.Snapshot],
    version: str,
) -> None:
    """Upsert the new snapshots of a unit (skipping those already at `version`)."""
    rows = [
        (
            entity_type,
            i,
            s.entity_name,
            s.version,
            _arr(s.release_ids),
            _arr(s.alias_ids),
            _arr(s.member_ids),
            s.release_count,
        )
        for i, r in zip(ids, results, strict=True)
        if (s := r.snapshot) is not None and (i not in old or old[i].version != version)
    ]
    if rows:
        async with conn.cursor() as cur:
            await cur.executemany(UPSERT_SNAPSHOT, rows)


def _arr(values: Sequence[int] | None) -> list[int] | None:
    return None if values is None else list(values)


async def insert_events(
    conn: AsyncConnection[Any], version: str, events: Sequence[diff.EventDraft]
) -> list[Any]:
    """Insert events (duplicates by dedup key are skipped); return the new ids."""
    if not events:
        return []
    cur = await conn.execute(
        INSERT_EVENTS,
        {
            "version": version,
            "keys": [e.key(version) for e in events],
            "events": [e.event for e in events],
            "types": [e.entity_type for e in events],
            "ids": [e.entity_id for e in events],
            "names": [e.entity_name for e in events],
            "details": [json.dumps(e.detail, ensure_ascii=False) for e in events],
        },
    )
    return [r[0] for r in await cur.fetchall()]
