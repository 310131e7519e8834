"""Processing one claimed diff unit: graph read, diff, then one write statement.

The graph is read first (one query, `UnitRunner.read`). Then, on one
PostgreSQL connection (`UnitRunner.write`): the unit's snapshots are read
(artists: only those whose graph row changed) with whatever else its type
needs, the diff runs in Python, and one statement (FINISH_UNIT) checks the
unit is still pending and ours, upserts the changed snapshots (unchanged
ones are left as they are), inserts the events (unique dedup keys), fans
them out and marks the unit done: all or nothing, so a crash anywhere leaves
the unit to be redone from scratch with the same result, and a router whose
lease was taken over writes nothing. `Pipeline` reads the next unit's graph
while the current unit is written.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import msgspec
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from notifier import cycles, diff, fanout, queries
from notifier.graph import Graph, ReleaseInfo, artist_states
from notifier.percolate import CycleRelease, Percolator

log = logging.getLogger(__name__)

# A claimed unit's snapshots, its ids taken from its row (diff_units primary
# key) rather than sent again as a 500-element parameter; then the
# entity_snapshots primary key (entity_type, entity_id), probed once per id
# (a nested loop over the unnested ids; `entity_id = ANY(...)` was planned as a
# scan of the type's rows, each checked against the whole array).
# Read without locks, before the unit's write: only the router that holds a
# unit's claim writes its entities' snapshots (an entity is in one unit per
# cycle, and a cycle's units are claimable only once the previous cycle is
# done), and FINISH_UNIT writes nothing unless the claim is still its own, so
# what a router read can only be stale if its write is refused.
# A snapshot's version as the diff sees it (sql/008_unit_continuity.sql): the
# previous cycle's when the entity was in one of its units (not in the unit's
# fresh_ids) and the snapshot was not written since, else the cycle that
# wrote it. Used by LOAD_UNIT_SNAPSHOTS and COMPARE_ARTISTS, where `x.id` is
# the unit's id, `s` its snapshot and `fresh_ids` the unit's.
_SEEN_VERSION = """
       CASE WHEN fresh_ids IS NULL OR s.version = %(version)s OR x.id = ANY (fresh_ids)
            THEN s.version ELSE %(previous)s END"""
_LOAD_HEAD = """
SELECT s.entity_id,"""
_LOAD_TAIL = """,
       s.entity_name, s.release_ids, s.alias_ids, s.member_ids, s.release_count
FROM notifier.diff_units d
CROSS JOIN LATERAL unnest(d.entity_ids) AS x (id)
JOIN notifier.entity_snapshots s ON s.entity_type = d.entity_type AND s.entity_id = x.id
WHERE d.id = %(unit)s
"""
LOAD_UNIT_SNAPSHOTS = _LOAD_HEAD + _SEEN_VERSION + _LOAD_TAIL  # constants only, no input
# An artist unit's compare, in the database (sql/007_snapshot_digest.sql):
# an artist whose graph row hashes to the digest its snapshot of the
# previous cycle was derived from would find nothing new, so it is left as
# it is and its arrays never travel to the router. `digests` holds the
# unit's row digests (row_digests: DIGEST_SIZE bytes per id, in unit order).
# The statement returns the unit's other ids, in unit order, with their
# snapshots (LOAD_UNIT_SNAPSHOTS' columns, NULL when there is none), the
# stored digest and their row's, and whether a filtered watch watches them,
# for the Python diff. Only a unit still
# pending and claimed by `me` is read (without locks, as LOAD_UNIT_SNAPSHOTS).
# Indexes: diff_units primary key; entity_snapshots
# primary key, one range scan from the unit's smallest id to its largest,
# hashed against the unit's ids (half the time of a probe per id). A cycle's
# units of one type hold consecutive runs of the sorted watched ids, so the
# range holds no other watched entity; snapshots of entities no longer
# watched are deleted when a cycle finishes (cycles.FINISH_CYCLE), so few
# others either. OFFSET 0 keeps the scan whole: joined freely, the planner
# probes per id.
_COMPARE_HEAD = """
WITH x AS (
    SELECT x.id, x.n, d.fresh_ids
    FROM notifier.diff_units d
    CROSS JOIN LATERAL unnest(d.entity_ids) WITH ORDINALITY AS x (id, n)
    WHERE d.id = %(unit)s AND d.status = 'pending' AND d.claimed_by = %(me)s
)
SELECT id, version, entity_name, release_ids, alias_ids, member_ids, release_count,
       graph_digest, h,
       -- Has it a filtered watcher (watchlists_filtered_idx)? Asked only of
       -- the artists returned, so the unit needs no query of its own when
       -- none has (units.FILTERED_WATCHES).
       EXISTS (SELECT 1 FROM notifier.watchlists w
               WHERE w.entity_type = 'artist' AND w.entity_id = j.id
                 AND w.created_at < %(before)s AND w.options <> '{}'::jsonb) AS filtered
FROM (
    SELECT x.id, x.n,
           substring(%(digests)s::bytea
                     FROM (x.n::int - 1) * %(size)s::int + 1 FOR %(size)s::int) AS h,"""
_COMPARE_TAIL = """ AS version,
           s.entity_name, s.release_ids, s.alias_ids,
           s.member_ids, s.release_count, s.graph_digest
    FROM x
    LEFT JOIN (
        SELECT * FROM notifier.entity_snapshots s
        WHERE s.entity_type = 'artist'
          AND s.entity_id BETWEEN (SELECT min(id) FROM x) AND (SELECT max(id) FROM x)
        OFFSET 0
    ) AS s ON s.entity_id = x.id
) AS j
WHERE (version = %(previous)s AND graph_digest = h) IS NOT TRUE
ORDER BY n
"""
COMPARE_ARTISTS = _COMPARE_HEAD + _SEEN_VERSION + _COMPARE_TAIL  # constants only, no input
# The unit's write, one statement, whole in queries/finish_unit.sql (its
# header names each parameter and what each CTE gives); snapshot_params and
# fanout.draft_params build its parameters.
FINISH_UNIT = queries.load("finish_unit")
# The filtered watchers of some artists or labels (watchlists_filtered_idx,
# whose predicate the fixed type proves): each entity's distinct filters, and
# whether it also has an unfiltered watcher (watchlists_entity_idx, stopping
# at the first). The type is fixed per query, never from input.
_FILTERED_WATCHES = """
SELECT f.entity_id, f.filters,
       EXISTS (SELECT 1 FROM notifier.watchlists p
               WHERE p.entity_type = '{type}' AND p.entity_id = f.entity_id
                 AND p.created_at < %(before)s AND p.options = '{{}}'::jsonb) AS plain
FROM (
    SELECT entity_id, jsonb_agg(DISTINCT options) AS filters
    FROM notifier.watchlists
    WHERE entity_type = '{type}' AND entity_id = ANY(%(ids)s) AND created_at < %(before)s
      AND options <> '{{}}'::jsonb
    GROUP BY entity_id
) AS f
"""
FILTERED_WATCHES = {t: _FILTERED_WATCHES.format(type=t) for t in ("artist", "label")}
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
# The matches of the unit's searches, found by the cycle's releases unit
# (cycle_search_matches primary key).
SEARCH_MATCHES = """
SELECT search_id, match_count, matches
FROM notifier.cycle_search_matches
WHERE version = %(version)s AND search_id = ANY(%(ids)s)
"""
# Every saved search of the cycle, once (watchlists_entity_idx), for percolation.
ALL_SEARCHES = """
SELECT DISTINCT ON (entity_id) entity_id, options
FROM notifier.watchlists
WHERE entity_type = 'search' AND created_at < %(before)s
ORDER BY entity_id, created_at
"""
# The releases unit writes a cycle's rows afresh: a resumed unit first removes
# what its earlier attempt wrote (nothing reads them before the unit is done).
CLEAR_SEARCH_MATCHES = "DELETE FROM notifier.cycle_search_matches WHERE version = %(version)s"
COPY_SEARCH_MATCHES = """
COPY notifier.cycle_search_matches (version, search_id, match_count, matches) FROM STDIN
"""
# The previous cycle's release count and highest release id (release_marks primary key).
RELEASE_MARK = """
SELECT release_count, highest_id FROM notifier.release_marks WHERE version = %(version)s
"""
# A resumed releases unit writes the same mark again.
RECORD_RELEASE_MARK = """
INSERT INTO notifier.release_marks (version, release_count, highest_id, full_scan)
VALUES (%(version)s, %(count)s, %(highest)s, %(full_scan)s)
ON CONFLICT (version) DO UPDATE
SET release_count = excluded.release_count, highest_id = excluded.highest_id,
    full_scan = excluded.full_scan
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
CLEAR_CYCLE_RELEASES = "DELETE FROM notifier.cycle_releases WHERE version = %(version)s"
COPY_CYCLE_RELEASES = """
COPY notifier.cycle_releases
    (version, release_id, title, year, formats, artist_ids, artist_names, label_ids,
     label_names, genres, styles, search_text, rank)
FROM STDIN
"""


def _text(value: object, limit: int = 1000) -> str | None:
    return diff.clip_name(value, limit)


def _texts(values: object, limit: int = 200) -> list[str]:
    if not isinstance(values, list):
        return []
    return [t for t in (_text(v, limit) for v in values) if t is not None]


def release_row(version: str, info: ReleaseInfo, counters: diff.Counters) -> CycleRelease | None:
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
    return CycleRelease(
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


class ReleaseMark(NamedTuple):
    """A cycle's row of release_marks, as RELEASE_MARK reads it."""

    release_count: int
    highest_id: int


class Stopping(Exception):
    """The process is shutting down: a long unit gives itself back unfinished."""


@dataclass(frozen=True)
class Reading:
    """What a unit read from the graph before its transaction, and how long it took."""

    data: Any
    seconds: float


class UnitRunner:
    """Runs claimed units against one graph and one PostgreSQL pool.

    A unit runs in two steps: `read` (the graph, no PostgreSQL) and `write`
    (one transaction). `Pipeline` overlaps the read of the next unit with the
    write of the current one; `run` does both steps in turn.
    """

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

    async def run(self, unit: cycles.Unit) -> dict[str, Any] | None:
        """Process `unit`; return its stats, or None if it was no longer ours."""
        return await self.write(unit, await self.read(unit))

    async def read(self, unit: cycles.Unit) -> Reading:
        """The unit's graph read: one query for artists, labels, genres or styles."""
        started = time.monotonic()
        data: Any = None
        if unit.entity_type == "artist":
            data = await self.graph.artist_rows(unit.entity_ids)
        elif unit.entity_type == "label":
            data = await self.graph.labels(unit.entity_ids)
        elif unit.entity_type in ("genre", "style"):
            tag: Literal["Genre", "Style"] = "Genre" if unit.entity_type == "genre" else "Style"
            data = await self.graph.tags(tag, unit.entity_ids)
        return Reading(data, time.monotonic() - started)

    async def write(self, unit: cycles.Unit, reading: Reading) -> dict[str, Any] | None:
        """The unit's transaction (after `read`); its stats, or None if it was no longer ours."""
        if unit.entity_type == cycles.RELEASES_UNIT:
            return await self._releases(unit)
        ids = unit.entity_ids
        if unit.entity_type == "artist":
            rows: list[Any] = reading.data
            digests = row_digests(ids, rows)
            states: dict[str, diff.ArtistState] = {}

            def artists(ids: Sequence[str], s: dict[str, diff.Snapshot]) -> list[diff.DiffResult]:
                # The compare done in PostgreSQL, only the ids it left are built.
                states.update(artist_states(rows, set(ids)))
                return diff_artists(unit, ids, states, s)

            def clean(i: str, result: diff.DiffResult) -> bool:
                # A digest stands for its row only if JSON told the row apart
                # from any other that diffs differently: a string name (a NaN
                # name and a missing one are both null), nothing odd counted.
                state = states.get(i)
                return (
                    state is not None
                    and type(state.name) is str
                    and result.counters.values.keys() <= {"baseline"}
                )

            return await self._commit(unit, reading, artists, compare=digests, clean=clean)
        if unit.entity_type == "label":
            labels: dict[str, diff.LabelState] = reading.data
            return await self._commit(
                unit,
                reading,
                lambda ids, s: [
                    diff.diff_label(unit.version, unit.previous_version, i, labels.get(i), s.get(i))
                    for i in ids
                ],
            )
        if unit.entity_type in ("genre", "style"):
            return await self._tags(unit, reading)
        if unit.entity_type == "search":
            return await self._search(unit, reading)
        counters = diff.Counters()
        counters.add("unknown_entity_type", len(ids))
        log.warning(
            "unknown entity type in a diff unit",
            extra={"unit": unit.id, "entity_type": unit.entity_type},
        )
        return await self._commit(
            unit,
            reading,
            lambda ids, s: [diff.DiffResult([], None, diff.Counters()) for _ in ids],
            counters,
        )

    async def _commit(
        self,
        unit: cycles.Unit,
        reading: Reading,
        compute: Any,
        counters: diff.Counters | None = None,
        conn_work: Any = None,
        *,
        compare: bytes | None = None,
        clean: Callable[[str, diff.DiffResult], bool] | None = None,
    ) -> dict[str, Any] | None:
        """The unit's reads, its diff, then its write (FINISH_UNIT).

        `compute(ids, snapshots[, extra])` diffs `ids` (the unit's, or with
        `compare`, the artists' row digests for COMPARE_ARTISTS, those it did
        not find unchanged) in unit order. `clean(id, result)` says whether the
        graph digest of an artist so diffed may be stored.
        """
        counters = counters or diff.Counters()
        started = time.monotonic()
        async with self.pool.connection() as conn:  # autocommit: a statement, a transaction
            if compare is None:
                params: dict[str, Any] = {"unit": unit.id, "version": unit.version,
                                          "previous": unit.previous_version}  # fmt: skip
                loaded = await conn.execute(LOAD_UNIT_SNAPSHOTS, params, binary=True)
            else:
                params = {"unit": unit.id, "me": self.me, "digests": compare,
                          "size": DIGEST_SIZE, "version": unit.version,
                          "previous": unit.previous_version,
                          "before": unit.started_at}  # fmt: skip
                loaded = await conn.execute(COMPARE_ARTISTS, params, binary=True)
            rows = await loaded.fetchall()
            ids = unit.entity_ids
            if compare is not None:
                ids = [r[0] for r in rows]
                counters.add("unchanged_in_db", len(unit.entity_ids) - len(ids))
            snapshots = snapshots_of(rows)
            loaded_at = time.monotonic()
            extra = await conn_work(conn) if conn_work is not None else None
            results: list[diff.DiffResult] = (
                compute(ids, snapshots) if extra is None else compute(ids, snapshots, extra)
            )
            events: list[diff.EventDraft] = []
            for entity_id, result in zip(ids, results, strict=True):
                if result is diff.UNCHANGED:
                    continue
                counters.merge(result.counters)
                old = snapshots.get(entity_id)
                if old is not None and old.version == unit.version:
                    counters.add("already_diffed")  # not expected: a unit is written once
                    continue
                events.extend(result.events)
            if unit.entity_type in FILTERED_WATCHES:
                # Artists: COMPARE_ARTISTS said which have a filtered watcher.
                filtered = None if compare is None else {r[0] for r in rows if r[9]}
                events = await self._filter_releases(conn, unit, events, counters, filtered)
            digests = None
            if compare is not None and clean is not None:
                digests = {
                    r[0]: (r[7], r[8] if r[8] != NO_DIGEST and clean(r[0], result) else None)
                    for r, result in zip(rows, results, strict=True)
                }
            changed = changed_snapshots(ids, results, snapshots, unit.version, digests)
            stats: dict[str, Any] = dict(counters.values)
            stats.update(
                entities=len(unit.entity_ids),
                # Milliseconds spent reading the graph, loading (and, for
                # artists, comparing) the snapshots, diffing, and in the whole
                # unit up to its write (graph read included; a pipelined read
                # overlaps the previous unit's write).
                graph_ms=round(reading.seconds * 1000),
                load_ms=round((loaded_at - started) * 1000),
                diff_ms=round((time.monotonic() - loaded_at) * 1000),
                unit_ms=round((reading.seconds + time.monotonic() - started) * 1000),
            )
            written = fanout.draft_params(
                events, version=unit.version, watches_before=unit.started_at, email=self.email
            )
            written.update(
                snapshot_params(unit.entity_type, changed),
                unit=unit.id,
                me=self.me,
                feed_lock=fanout.FEED_LOCK_KEY,
                stats=_JSON.encode(stats).decode(),
            )
            row = await (await conn.execute(FINISH_UNIT, written)).fetchone()
        if row is None or not row[0]:
            return None
        stats.update(events=int(row[1]), feed_rows=int(row[2]), outbox_rows=int(row[3]))
        return stats

    async def _filter_releases(
        self,
        conn: AsyncConnection[Any],
        unit: cycles.Unit,
        events: list[diff.EventDraft],
        counters: diff.Counters,
        filtered: set[str] | None = None,
    ) -> list[diff.EventDraft]:
        """`events` with each filtered entity's new_releases split by its watchers' filters.

        `filtered`, when known, holds the entities with a filtered watcher:
        without new releases of one of them, nothing is asked. Otherwise one
        query (an index probe per entity with new releases), then their new
        releases' year and formats from the graph in batches (see
        `diff.filter_new_releases`).
        """
        news = {
            e.entity_id: e
            for e in events
            if e.event == "new_releases" and (filtered is None or e.entity_id in filtered)
        }
        if not news:
            return events
        params = {"ids": list(news), "before": unit.started_at}
        rows = await (await conn.execute(FILTERED_WATCHES[unit.entity_type], params)).fetchall()
        if not rows:
            return events
        wanted = sorted({i for entity_id, _, _ in rows for i in news[entity_id].new_ids})
        facets = await self.graph.release_facets(wanted, self.batch)
        split: dict[str, list[diff.EventDraft]] = {}
        for entity_id, filters, plain in rows:
            audiences: list[tuple[Any, diff.ReleaseFilter]] = []
            if plain:
                audiences.append(({}, diff.ReleaseFilter()))
            for options in filters:
                rule = diff.parse_filter(options)
                if rule is None:  # not written by the API: let everything through
                    counters.add("bad_filter_option")
                    rule = diff.ReleaseFilter()
                audiences.append((options, rule))
            split[entity_id] = diff.filter_new_releases(news[entity_id], audiences, facets)
        counters.add("filtered_entities", len(split))
        counters.add("filtered_releases_read", len(wanted))
        out: list[diff.EventDraft] = []
        for e in events:
            if e.event == "new_releases" and e.entity_id in split:
                out.extend(split[e.entity_id])
            else:
                out.append(e)
        return out

    async def _tags(self, unit: cycles.Unit, reading: Reading) -> dict[str, Any] | None:
        states: dict[str, diff.TagState] = reading.data
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
            ids: Sequence[str],
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
                for i in ids
            ]

        return await self._commit(unit, reading, compute, counters, work)

    async def _search(self, unit: cycles.Unit, reading: Reading) -> dict[str, Any] | None:
        async def work(conn: AsyncConnection[Any]) -> dict[str, Any]:
            found: dict[str, Any] = {}
            cur = await conn.execute(SEARCHES, {"ids": unit.entity_ids, "before": unit.started_at})
            searches = await cur.fetchall()
            params = {"version": unit.version, "ids": [r[0] for r in searches]}
            cur = await conn.execute(SEARCH_MATCHES, params)
            matched = {r[0]: (int(r[1]), r[2]) for r in await cur.fetchall()}
            for entity_id, name, options in searches:
                if diff.parse_search(options) is None:
                    found[entity_id] = (name, None, 0)
                    continue
                count, pairs = matched.get(entity_id, (0, []))
                found[entity_id] = (name, [diff.SearchMatch(i, t) for i, t in pairs], count)
            return found

        def compute(
            ids: Sequence[str], snaps: dict[str, diff.Snapshot], found: dict[str, Any]
        ) -> list[diff.DiffResult]:
            out = []
            for i in ids:
                name, matches, count = found.get(i, (None, None, 0))
                out.append(
                    diff.diff_search(
                        unit.version, unit.previous_version, i, name, matches, count, snaps.get(i)
                    )
                )
            return out

        return await self._commit(unit, reading, compute, None, work)

    async def _releases(self, unit: cycles.Unit) -> dict[str, Any] | None:
        """Find the cycle's new releases, store them with their details, match the searches.

        The previous cycle's mark (release count, highest id) lets the month's
        new releases be read as those above that id, when the graph's count
        grew by exactly that many; otherwise every release id is read (the
        first cycle's way) and compared with seen_releases.
        """
        counters = diff.Counters()
        async with self.pool.connection() as conn:
            cur = await conn.execute(EARLIER_SCAN, {"version": unit.version})
            row = await cur.fetchone()
            baseline = not (row is not None and row[0])
            cur = await conn.execute(RELEASE_MARK, {"version": unit.previous_version})
            row = None if baseline else await cur.fetchone()
            mark = None if row is None else ReleaseMark._make(row)
            total = await self.graph.release_count()
            above: list[int] | None = None
            if mark is not None:
                raw = await self.graph.releases_above(mark.highest_id)
                above = diff.parse_ids(raw, counters, "release_ids")
                if total - mark.release_count != len(above):
                    counters.add("release_count_mismatch")
                    above = None
            if above is not None and mark is not None:
                scanned, highest = len(above), max([mark.highest_id, *above[-1:]])
                await conn.execute(INSERT_SEEN, {"ids": above, "version": unit.version})
            else:
                scanned, highest = await self._scan_releases(conn, unit, counters)
            mark_params = {"version": unit.version, "count": total,
                           "highest": highest, "full_scan": above is None}  # fmt: skip
            await conn.execute(RECORD_RELEASE_MARK, mark_params)
            new_count = 0 if baseline else await self._new_releases(conn, unit, counters)
        stats: dict[str, Any] = dict(counters.values)
        stats.update(
            releases_scanned=scanned,
            new_releases=new_count,
            release_baseline=int(baseline),
            release_full_scan=int(above is None),
        )
        async with self.pool.connection() as conn, conn.transaction():
            if not await cycles.lock_owned(conn, unit.id, self.me):
                return None
            await cycles.mark_done(conn, unit.id, stats)
        return stats

    async def _scan_releases(
        self, conn: AsyncConnection[Any], unit: cycles.Unit, counters: diff.Counters
    ) -> tuple[int, int]:
        """Record every release id of the graph in seen_releases: (ids read, highest id)."""
        scanned, highest = 0, -1
        async for chunk in self.graph.release_ids(self.batch):
            if self.stop.is_set():  # the scan is long: drain by giving it back
                raise Stopping
            ids = diff.parse_ids(chunk, counters, "release_ids")
            scanned += len(chunk)
            highest = max(highest, ids[-1]) if ids else highest  # parse_ids sorts
            await conn.execute(INSERT_SEEN, {"ids": ids, "version": unit.version})
        return scanned, highest

    async def _new_releases(
        self, conn: AsyncConnection[Any], unit: cycles.Unit, counters: diff.Counters
    ) -> int:
        """Store the cycle's new releases in cycle_releases and match every saved search."""
        cur = await conn.execute(ALL_SEARCHES, {"before": unit.started_at})
        queries = {i: q for i, options in await cur.fetchall() if (q := diff.parse_search(options))}
        percolator = Percolator(queries)
        sizes: dict[Any, int] = {}  # each new release's artists counted once a cycle
        await conn.execute(CLEAR_CYCLE_RELEASES, {"version": unit.version})
        new_count, after = 0, -1
        while True:
            if self.stop.is_set():
                raise Stopping
            params = {"version": unit.version, "after": after, "limit": self.batch}
            cur = await conn.execute(NEW_RELEASE_IDS, params)
            new_ids = [r[0] for r in await cur.fetchall()]
            if not new_ids:
                break
            after = new_ids[-1]
            new_count += len(new_ids)
            infos = await self.graph.releases([str(i) for i in new_ids], sizes)
            rows = [r for i in infos if (r := release_row(unit.version, i, counters))]
            rows.sort(key=lambda r: r.release_id)
            percolator.add(rows)
            async with conn.cursor().copy(COPY_CYCLE_RELEASES) as copy:
                for r in rows:
                    await copy.write_row(r)
        found = percolator.results()
        await conn.execute(CLEAR_SEARCH_MATCHES, {"version": unit.version})
        async with conn.cursor().copy(COPY_SEARCH_MATCHES) as copy:
            for search_id, f in sorted(found.items()):
                pairs = _JSON.encode([[m.release_id, m.name] for m in f.matches]).decode()
                await copy.write_row((unit.version, search_id, f.count, pairs))
        counters.add("searches_percolated", len(queries))
        counters.add("searches_matched", len(found))
        return new_count


def diff_artists(
    unit: cycles.Unit,
    ids: Sequence[str],
    artists: dict[str, diff.ArtistState],
    snapshots: dict[str, diff.Snapshot],
) -> list[diff.DiffResult]:
    """`diff.diff_artist` of each of `ids`; `diff.UNCHANGED` for an artist found as recorded."""
    out: list[diff.DiffResult] = []
    previous = unit.previous_version
    for i in ids:
        state, old = artists.get(i), snapshots.get(i)
        if (
            state is not None
            and old is not None
            and old.version == previous  # not a baseline, not already diffed
            and diff.artist_unchanged(state, old)
        ):
            out.append(diff.UNCHANGED)
        else:
            out.append(diff.diff_artist(unit.version, previous, i, state, old))
    return out


def snapshots_of(rows: Sequence[Sequence[Any]]) -> dict[str, diff.Snapshot]:
    """Snapshots by entity id, from LOAD_UNIT_SNAPSHOTS or COMPARE_ARTISTS rows.

    A row is the id, then Snapshot's fields (all NULL: no snapshot), then
    COMPARE_ARTISTS' digests.
    """
    make = diff.Snapshot._make
    return {r[0]: make(r[1:7]) for r in rows if r[1] is not None}


# Graph rows are hashed as JSON. A row JSON has no form for (the driver's
# temporal and spatial values, nodes) gets NO_DIGEST, which no snapshot
# stores: it is diffed in Python. Bolt bytes become base64 text, which only a
# row that held bytes where a clean row held that very text could be
# mistaken for.
_JSON = msgspec.json.Encoder()
DIGEST_SIZE = 32  # SHA-256
NO_DIGEST = bytes(DIGEST_SIZE)


def row_digests(ids: Sequence[str], rows: Sequence[Any]) -> bytes:
    """The SHA-256 of each of `ids`' ARTIST_STATES row as JSON, concatenated in `ids` order.

    An id without a row (or with one JSON cannot hold) gets NO_DIGEST; an id
    read twice, its last row (as graph.artist_states keeps).
    """
    encode, sha256 = _JSON.encode, hashlib.sha256
    if [r[0] for r in rows] == ids:  # the usual case: one row per id, in unit order
        try:
            return b"".join([sha256(encode(r)).digest() for r in rows])
        except (msgspec.EncodeError, TypeError, ValueError, OverflowError):
            pass  # some row JSON cannot hold: each on its own below
    by_id = {r[0]: r for r in rows if type(r[0]) is str}
    out: list[bytes] = []
    for i in ids:
        row = by_id.get(i)
        try:
            out.append(NO_DIGEST if row is None else sha256(encode(row)).digest())
        except (msgspec.EncodeError, TypeError, ValueError, OverflowError):
            out.append(NO_DIGEST)
    return b"".join(out)


def changed_snapshots(
    ids: Sequence[str],
    results: Sequence[diff.DiffResult],
    old: dict[str, diff.Snapshot],
    version: str,
    digests: Mapping[str, tuple[bytes | None, bytes | None]] | None = None,
) -> list[tuple[str, diff.Snapshot, bytes | None]]:
    """The snapshots of `ids` to write, with their digests: those that changed.

    An unchanged snapshot is left as it is (sql/008_unit_continuity.sql), and
    one already at `version` too. `digests` (artists compared by
    COMPARE_ARTISTS) gives, per id, the stored graph digest and the one to
    store (None: the row was not clean); an unchanged snapshot whose digest
    must change is rewritten.
    """
    rows: list[tuple[str, diff.Snapshot, bytes | None]] = []
    for i, r in zip(ids, results, strict=True):
        before = old.get(i)
        stored, digest = digests.get(i, (None, None)) if digests else (None, None)
        if r is diff.UNCHANGED:
            if digest is not None and digest != stored and before is not None:
                rows.append((i, before._replace(version=version), digest))
            continue
        if (new := r.snapshot) is None:
            continue
        if before is None:
            rows.append((i, new, digest))
        elif before.version == version:
            continue  # already written by this cycle (see "already_diffed")
        elif not unchanged(before, new) or (digest is not None and digest != stored):
            rows.append((i, new, digest))
    return rows


def unchanged(before: diff.Snapshot, after: diff.Snapshot) -> bool:
    """True when two snapshots differ at most by their version."""
    return (
        before.entity_name == after.entity_name
        and before.release_count == after.release_count
        and _same(before.release_ids, after.release_ids)
        and _same(before.alias_ids, after.alias_ids)
        and _same(before.member_ids, after.member_ids)
    )


def _same(a: Sequence[int] | None, b: Sequence[int] | None) -> bool:
    if a is None or b is None:
        return a is b
    return list(a) == list(b)


def snapshot_params(
    entity_type: str, rows: Sequence[tuple[str, diff.Snapshot, bytes | None]]
) -> dict[str, object]:
    """FINISH_UNIT's snapshot parameters for (entity id, snapshot, graph digest) rows."""
    doc = [
        {
            "i": i,
            "n": s.entity_name,
            "v": s.version,
            "r": s.release_ids,
            "a": s.alias_ids,
            "m": s.member_ids,
            "c": s.release_count,
            "h": None if h is None else h.hex(),
        }
        for i, s, h in rows
    ]
    return {"type": entity_type, "rows": _JSON.encode(doc).decode()}


# Renews a claimed unit's lease until cancelled (router.Router._keep_lease).
Keeper = Callable[[cycles.Unit], Coroutine[Any, Any, None]]


class Ahead:
    """A claimed unit whose graph read runs in the background."""

    def __init__(self, runner: UnitRunner, unit: cycles.Unit, keeper: Keeper | None = None) -> None:
        self.unit = unit
        self.reading: asyncio.Task[Reading] = asyncio.create_task(
            runner.read(unit), name=f"unit-{unit.id}-read"
        )
        # The lease keeper runs from the claim to the end of the unit.
        self.keeper: asyncio.Task[None] | None = (
            asyncio.create_task(keeper(unit), name=f"unit-{unit.id}-lease") if keeper else None
        )

    async def write(self, runner: UnitRunner) -> dict[str, Any] | None:
        """Wait for the graph read, then run the unit's transaction (see `UnitRunner.write`)."""
        return await runner.write(self.unit, await self.reading)

    def close(self) -> None:
        """Stop the lease keeper (and a read still running)."""
        for task in (self.reading, self.keeper):
            if task is not None and not task.done():
                task.cancel()
        if self.reading.done() and not self.reading.cancelled():
            self.reading.exception()  # retrieved: an unused failed read is not "never retrieved"


Claim = Callable[[], Awaitable[cycles.Unit | None]]


class Pipeline:
    """Claims units and reads their graph ahead of the writes, up to `depth` units ahead.

    While unit n's transaction runs, unit n+1 is already claimed and read, and
    unit n+2's read is under way: the graph server, the graph decoding and
    PostgreSQL then work at the same time. One graph read runs at a time, at
    most `depth` units wait (bounded memory), and nothing is read ahead of the
    long 'releases' unit, whose work is all in its write. A unit read ahead
    is leased like any claimed one: if this process dies, its lease expires
    and any router redoes it; at shutdown `leftover` hands them back.
    """

    def __init__(
        self,
        runner: UnitRunner,
        claim: Claim,
        *,
        keeper: Keeper | None = None,
        stop: asyncio.Event,
        depth: int = 2,
    ) -> None:
        self.runner, self.claim, self.keeper, self.stop = runner, claim, keeper, stop
        self.depth = depth
        self.waiting: deque[Ahead] = deque()
        self.filling: asyncio.Task[None] | None = None
        self.arrived = asyncio.Event()  # set when the fill adds a unit
        self.dry = False  # the last claim found nothing
        self.closed = False

    @property
    def ahead(self) -> Ahead | None:
        """The next unit claimed ahead (None when there is none yet)."""
        return self.waiting[0] if self.waiting else None

    async def _fill(self) -> None:
        """Claim and start reading units until `depth` wait, one graph read at a time.

        While a unit is read, the next one is claimed (when there is room for
        it): its read then starts as soon as the graph is free.
        """
        claiming: asyncio.Future[cycles.Unit | None] | None = None
        try:
            while not (self.stop.is_set() or self.closed) and len(self.waiting) < self.depth:
                claimed, claiming = claiming, None
                unit = await (claimed if claimed is not None else self.claim())
                if unit is None:
                    self.dry = True
                    return
                ahead = self._add(unit)
                if unit.entity_type == cycles.RELEASES_UNIT:
                    return
                if len(self.waiting) < self.depth and not self.stop.is_set():
                    claiming = asyncio.ensure_future(self.claim())
                await asyncio.wait([ahead.reading])
        finally:
            # A unit claimed ahead is never dropped: it waits with the others
            # (written next, or handed back by `leftover`).
            if claiming is not None and (unit := await claiming) is not None:
                self._add(unit)

    def _add(self, unit: cycles.Unit) -> Ahead:
        ahead = Ahead(self.runner, unit, self.keeper)
        self.waiting.append(ahead)
        self.arrived.set()
        return ahead

    async def _claimed(self) -> None:
        """Until a unit waits or the fill stops (run one if none is running)."""
        if self.filling is not None and self.filling.done():
            self.filling.result()  # a failed claim is raised here, as a direct claim was
        if self.filling is None or self.filling.done():
            self.filling = asyncio.create_task(self._fill(), name="units-fill")
        while not self.waiting and not self.filling.done():
            self.arrived.clear()
            arrival = asyncio.create_task(self.arrived.wait())
            try:
                await asyncio.wait([self.filling, arrival], return_when=asyncio.FIRST_COMPLETED)
            finally:
                arrival.cancel()
        if self.filling.done():
            self.filling.result()

    async def next(self) -> Ahead | None:
        """The next unit to write (its read done), or None when none is claimable now."""
        if not self.waiting:
            self.dry = False
            await self._claimed()
            if not self.waiting:
                return None
        current = self.waiting.popleft()
        if current.unit.entity_type != cycles.RELEASES_UNIT:
            await asyncio.wait([current.reading])
            if not self.stop.is_set() and not self.dry:
                await self._claimed()  # the next unit is claimed before this one is written
        return current

    async def leftover(self) -> list[Ahead]:
        """At shutdown: the units claimed ahead and not written (closed; give them back)."""
        self.closed = True
        for ahead in self.waiting:
            ahead.close()  # ends the read the fill may be waiting on
        if self.filling is not None:
            await asyncio.wait([self.filling])  # a claim in flight may still add a unit
        left = list(self.waiting)
        self.waiting.clear()
        for ahead in left:
            ahead.close()
        return left
