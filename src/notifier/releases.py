"""The cycle's releases unit: its new releases, stored with their details, and the searches.

Unlike the other units it diffs no snapshot: it records every release id
of the graph in seen_releases (or only those above the previous cycle's
mark), stores the cycle's new releases in cycle_releases (which genre and
style units read) and their BY and ON edges keyed by entity in
cycle_release_edges (which artist and label units read), and matches
every saved search against them (cycle_search_matches, which search units
read). It also reads the cycle's new masters once (cycle_masters, which
genre and style units read, and their BY edges keyed by artist in
cycle_master_edges, which artist units read) instead of a pass over the
masters each.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, NamedTuple

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from notifier import cycles, diff, unitstore
from notifier.graph import Graph, ReleaseInfo
from notifier.percolate import CycleRelease, Percolator

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
# The previous cycle's release count, highest release id and highest master
# id (release_marks primary key).
RELEASE_MARK = """
SELECT release_count, highest_id, master_highest_id
FROM notifier.release_marks WHERE version = %(version)s
"""
# A resumed releases unit writes the same mark again.
RECORD_RELEASE_MARK = """
INSERT INTO notifier.release_marks
    (version, release_count, highest_id, full_scan, master_highest_id)
VALUES (%(version)s, %(count)s, %(highest)s, %(full_scan)s, %(master_highest)s)
ON CONFLICT (version) DO UPDATE
SET release_count = excluded.release_count, highest_id = excluded.highest_id,
    full_scan = excluded.full_scan, master_highest_id = excluded.master_highest_id
"""
# Whether cycle_masters holds every new master of cycle `version`: its
# releases unit is done (diff_units_version_type_seq_key), did not fall back
# to a full scan and read the masters above the previous cycle's highest
# master id (ReleasesUnit.run). Otherwise readers count in full.
NEW_MASTERS_KNOWN = """
SELECT EXISTS (
    SELECT 1
    FROM notifier.diff_units d
    JOIN notifier.release_marks m ON m.version = d.version
    JOIN notifier.release_marks p ON p.version = %(previous)s
    WHERE d.version = %(version)s AND d.entity_type = 'releases' AND d.status = 'done'
      AND NOT m.full_scan AND p.master_highest_id IS NOT NULL
)
"""
CLEAR_CYCLE_MASTERS = "DELETE FROM notifier.cycle_masters WHERE version = %(version)s"
COPY_CYCLE_MASTERS = """
COPY notifier.cycle_masters (version, master_id, artist_ids, genres, styles) FROM STDIN
"""
# The same masters' BY edges keyed by artist, for the artist units' counts
# (sql/023_cycle_master_edges.sql); cleared and copied with them.
CLEAR_CYCLE_MASTER_EDGES = "DELETE FROM notifier.cycle_master_edges WHERE version = %(version)s"
COPY_CYCLE_MASTER_EDGES = """
COPY notifier.cycle_master_edges (version, artist_id, master_id, ord) FROM STDIN
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
# The same releases' BY and ON edges keyed by entity, for the artist and label
# units' lookups (sql/022_cycle_release_edges.sql); cleared and copied with them.
CLEAR_CYCLE_RELEASE_EDGES = "DELETE FROM notifier.cycle_release_edges WHERE version = %(version)s"
# Statistics for the units' reads of what was just copied: without them the
# planner filtered `entity_id = ANY(ids)` over every edge of the version
# instead of probing the key (426 ms against 3 ms for 500 ids over 93k edges;
# 30 s of the 1/10 month, bench/RESULTS.md). A role that does not own the
# tables gets a warning, not an error.
CYCLE_TABLES = (
    "cycle_releases", "cycle_release_edges", "cycle_masters", "cycle_master_edges",
    "cycle_search_matches",
)  # fmt: skip
ANALYZE_CYCLE_TABLES = "ANALYZE " + ", ".join(f"notifier.{t}" for t in CYCLE_TABLES)
COPY_CYCLE_RELEASE_EDGES = """
COPY notifier.cycle_release_edges (version, kind, entity_id, release_id, ord) FROM STDIN
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


def edge_rows(rows: list[CycleRelease]) -> list[tuple[str, str, str, int, int]]:
    """cycle_release_edges rows of some cycle_releases rows: one per entry of
    artist_ids ('by') and label_ids ('on'), with its 1-based position, so an id
    listed twice (two edges) stays twice."""
    out: list[tuple[str, str, str, int, int]] = []
    for r in rows:
        for kind, ids in (("by", r.artist_ids), ("on", r.label_ids)):
            out.extend((r.version, kind, e, r.release_id, n) for n, e in enumerate(ids, 1))
    return out


def master_rows(
    version: str, raw: list[Any], counters: diff.Counters
) -> list[tuple[str, int, list[str], list[str], list[str]]]:
    """cycle_masters rows of graph.CYCLE_MASTERS' raw rows, by master id (a non-numeric
    or repeated id is counted and left out: readers then find fewer edges and count
    in full)."""
    out: dict[int, tuple[str, int, list[str], list[str], list[str]]] = {}
    for row in raw:
        key, artists, genres, styles = row
        mid = diff.parse_id(key)
        if mid is None:
            counters.add("non_numeric_master_ids")
        elif mid in out:
            counters.add("repeated_master_ids")
        else:
            out[mid] = (version, mid, _texts(artists, 100), _texts(genres), _texts(styles))
    return [out[i] for i in sorted(out)]


def master_edge_rows(
    rows: list[tuple[str, int, list[str], list[str], list[str]]],
) -> list[tuple[str, str, int, int]]:
    """cycle_master_edges rows of cycle_masters rows: one per entry of artist_ids, with
    its 1-based position, so an id listed twice (two edges) stays twice."""
    return [
        (version, artist_id, master_id, n)
        for version, master_id, artist_ids, _, _ in rows
        for n, artist_id in enumerate(artist_ids, 1)
    ]


class ReleaseMark(NamedTuple):
    """A cycle's row of release_marks, as RELEASE_MARK reads it."""

    release_count: int
    highest_id: int
    master_highest_id: int | None  # None: recorded before sql/019_cycle_masters.sql


class Stopping(Exception):
    """The process is shutting down: a long unit gives itself back unfinished."""


class ReleasesUnit:
    """Runs the releases unit against one graph and one PostgreSQL pool."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        graph: Graph,
        me: str,
        *,
        batch: int,
        stop: asyncio.Event,
    ) -> None:
        self.pool, self.graph, self.me, self.batch, self.stop = pool, graph, me, batch, stop

    async def run(self, unit: cycles.Unit) -> dict[str, Any] | None:
        """Find the cycle's new releases, store them with their details, match the searches.

        The previous cycle's mark (release count, highest id) lets the month's
        new releases be read as those above that id, when the graph's count
        grew by exactly that many; otherwise every release id is read (the
        first cycle's way) and compared with seen_releases.
        """
        counters = diff.Counters()
        started = time.monotonic()
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
            # A full scan means the graph changed under the release mark (a
            # release below it appeared, or one went away, as after a reload):
            # the master mark is not trusted either, so no master is recorded
            # as new and the readers count in full this cycle (rare, and cheap
            # beside the scan); the mark is recorded for the next cycle.
            # Without a previous master mark (the first cycle) likewise.
            after = None if above is None or mark is None else mark.master_highest_id
            masters_high = await self._new_masters(conn, unit, after, counters)
            if mark is not None and mark.master_highest_id is not None:
                masters_high = max(masters_high, mark.master_highest_id)
            mark_params = {"version": unit.version, "count": total, "highest": highest,
                           "full_scan": above is None, "master_highest": masters_high}  # fmt: skip
            await conn.execute(RECORD_RELEASE_MARK, mark_params)
            counters.add("find_ms", _ms_since(started))
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

    async def _new_masters(
        self,
        conn: AsyncConnection[Any],
        unit: cycles.Unit,
        after: int | None,
        counters: diff.Counters,
    ) -> int:
        """Store the masters above `after` in cycle_masters (none when `after` is None);
        the highest numeric master id of the graph (-1: none)."""
        started = time.monotonic()
        highest, raw = await self.graph.cycle_masters(after)
        rows = master_rows(unit.version, raw, counters)
        await conn.execute(CLEAR_CYCLE_MASTERS, {"version": unit.version})
        await conn.execute(CLEAR_CYCLE_MASTER_EDGES, {"version": unit.version})
        if rows:
            async with conn.cursor().copy(COPY_CYCLE_MASTERS) as copy:
                for r in rows:
                    await copy.write_row(r)
            async with conn.cursor().copy(COPY_CYCLE_MASTER_EDGES) as copy:
                for edge in master_edge_rows(rows):
                    await copy.write_row(edge)
        counters.add("new_masters", len(rows))
        counters.add("masters_ms", _ms_since(started))
        return -1 if highest is None else highest

    async def _new_releases(
        self, conn: AsyncConnection[Any], unit: cycles.Unit, counters: diff.Counters
    ) -> int:
        """Store the cycle's new releases in cycle_releases and match every saved search."""
        cur = await conn.execute(ALL_SEARCHES, {"before": unit.started_at})
        queries = {i: q for i, options in await cur.fetchall() if (q := diff.parse_search(options))}
        percolator = Percolator(queries)
        sizes: dict[Any, int] = {}  # each new release's artists counted once a cycle
        await conn.execute(CLEAR_CYCLE_RELEASES, {"version": unit.version})
        await conn.execute(CLEAR_CYCLE_RELEASE_EDGES, {"version": unit.version})
        new_count, after = 0, -1
        # The graph read of the next page runs while the current one is
        # percolated and copied: Neo4j works on the other core meanwhile.
        reading: asyncio.Task[list[ReleaseInfo]] | None = None
        try:
            while True:
                if self.stop.is_set():
                    raise Stopping
                params = {"version": unit.version, "after": after, "limit": self.batch}
                cur = await conn.execute(NEW_RELEASE_IDS, params)
                new_ids = [r[0] for r in await cur.fetchall()]
                waited = time.monotonic()
                infos = None if reading is None else await reading
                counters.add("graph_wait_ms", _ms_since(waited))
                reading = None
                if new_ids:
                    after = new_ids[-1]
                    new_count += len(new_ids)
                    page = [str(i) for i in new_ids]
                    reading = asyncio.create_task(self.graph.releases(page, sizes))
                if infos is not None:
                    rows = [r for i in infos if (r := release_row(unit.version, i, counters))]
                    rows.sort(key=lambda r: r.release_id)
                    percolating = time.monotonic()
                    percolator.add(rows)
                    copying = time.monotonic()
                    counters.add("percolate_ms", _ms_since(percolating, copying))
                    async with conn.cursor().copy(COPY_CYCLE_RELEASES) as copy:
                        for r in rows:
                            await copy.write_row(r)
                    edges = time.monotonic()
                    counters.add("copy_ms", _ms_since(copying, edges))
                    async with conn.cursor().copy(COPY_CYCLE_RELEASE_EDGES) as copy:
                        for e in edge_rows(rows):
                            await copy.write_row(e)
                    counters.add("edges_copy_ms", _ms_since(edges))
                if reading is None:
                    break
        finally:
            if reading is not None:  # an error or a stop: the read is not wanted
                reading.cancel()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await reading
        percolating = time.monotonic()
        found = percolator.results()
        counters.add("percolate_ms", _ms_since(percolating))
        await conn.execute(CLEAR_SEARCH_MATCHES, {"version": unit.version})
        async with conn.cursor().copy(COPY_SEARCH_MATCHES) as copy:
            for search_id, f in sorted(found.items()):
                pairs = unitstore.JSON.encode([[m.release_id, m.name] for m in f.matches]).decode()
                await copy.write_row((unit.version, search_id, f.count, pairs))
        analyzing = time.monotonic()
        await conn.execute(ANALYZE_CYCLE_TABLES)
        counters.add("analyze_ms", _ms_since(analyzing))
        counters.add("searches_percolated", len(queries))
        counters.add("searches_matched", len(found))
        return new_count


def _ms_since(start: float, end: float | None = None) -> int:
    """Whole milliseconds from `start` to `end` (now when None)."""
    return round(((time.monotonic() if end is None else end) - start) * 1000)
