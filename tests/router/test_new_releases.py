"""The releases unit: the month's new releases read above the previous highest id, and
every id read again when the graph's count says some came below it."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from neo4j import AsyncDriver

from notifier import config, cycles, graph, releases
from notifier.router import Router
from tests.router.conftest import (
    Publish,
    cycle_done,
    events,
    q,
    signal_all,
    unit_pool,
    watch,
    write,
)


def releases_unit(pg_url: str, version: str) -> dict[str, Any]:
    """The stats of cycle `version`'s releases unit."""
    rows = q(
        pg_url,
        "SELECT stats FROM notifier.diff_units WHERE version = %s AND entity_type = 'releases'",
        version,
    )
    stats: dict[str, Any] = rows[0][0]
    return stats


def matched(pg_url: str, version: str) -> dict[str, Any]:
    return {e[2]: e[3] for e in events(pg_url, version) if e[0] == "search_match"}


async def test_new_releases_above_the_mark_then_a_late_one_below_it(
    router: Router, publish: Publish, pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:
    watch(pg_url, uuid.uuid4(), "search", "s-fresh", {"q": "fresh"})
    await write(graph_driver, graph_db, lambda g: g.release("100", "Fresh Old").release("101"))
    await signal_all(publish, "v1")
    await cycle_done(pg_url, "v1")
    first = releases_unit(pg_url, "v1")
    assert first["release_baseline"] == 1 and first["release_full_scan"] == 1
    assert first["releases_scanned"] == 2 and first["new_releases"] == 0

    await write(graph_driver, graph_db, lambda g: g.release("102", "Fresh One").release("1000"))
    await signal_all(publish, "v2")
    await cycle_done(pg_url, "v2")
    second = releases_unit(pg_url, "v2")
    # Only the two new releases were read: the count grew by what lies above 101.
    assert second["release_full_scan"] == 0 and second["releases_scanned"] == 2
    assert second["new_releases"] == 2 and second["searches_percolated"] == 1
    assert matched(pg_url, "v2") == {
        "s-fresh": {
            "match_count": 1,
            "matches": [{"entity_type": "release", "id": "102", "name": "Fresh One"}],
        }
    }
    assert q(pg_url, "SELECT version, release_count, highest_id, full_scan"
             " FROM notifier.release_marks ORDER BY version") == [
        ("v1", 2, 101, True), ("v2", 4, 1000, False),
    ]  # fmt: skip

    # A release published late with an older id (below 1000) and one above it:
    # the count grew by 2, one lies above, so every id is read again.
    await write(graph_driver, graph_db, lambda g: g.release("50", "Fresh Late").release("1001"))
    await signal_all(publish, "v3")
    await cycle_done(pg_url, "v3")
    third = releases_unit(pg_url, "v3")
    assert third["release_full_scan"] == 1 and third["release_count_mismatch"] == 1
    assert third["releases_scanned"] == 6 and third["new_releases"] == 2
    assert matched(pg_url, "v3")["s-fresh"]["matches"] == [
        {"entity_type": "release", "id": "50", "name": "Fresh Late"}
    ]

    # Nothing new: nothing read but the count.
    await signal_all(publish, "v4")
    await cycle_done(pg_url, "v4")
    fourth = releases_unit(pg_url, "v4")
    assert fourth["release_full_scan"] == 0 and fourth["releases_scanned"] == 0
    assert fourth["new_releases"] == 0 and matched(pg_url, "v4") == {}


async def test_new_releases_over_several_pages_are_all_stored_and_matched(
    router: Router, publish: Publish, pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:
    # 2,500 new releases: three pages of the releases unit (1,000 a page), each
    # page's graph read overlapping the previous page's percolation and copy.
    watch(pg_url, uuid.uuid4(), "search", "s-fresh", {"q": "fresh"})
    await write(graph_driver, graph_db, lambda g: g.release("1", "Fresh Before"))
    await signal_all(publish, "v1")
    await cycle_done(pg_url, "v1")
    fresh = {"10", "1500", "2400"}

    def month(g: Any) -> None:
        for i in range(2, 2502):
            g.release(str(i), f"Fresh {i}" if str(i) in fresh else f"Plain {i}")

    await write(graph_driver, graph_db, month)
    await signal_all(publish, "v2")
    await cycle_done(pg_url, "v2")
    stats = releases_unit(pg_url, "v2")
    assert stats["new_releases"] == 2500 and stats["release_full_scan"] == 0
    # Where the unit's time went is recorded beside its counts.
    assert {"find_ms", "graph_wait_ms", "percolate_ms", "copy_ms"} <= stats.keys()
    assert q(pg_url, "SELECT count(*), min(release_id), max(release_id)"
             " FROM notifier.cycle_releases WHERE version = 'v2'") == [(2500, 2, 2501)]  # fmt: skip
    # The tables the units read next were analyzed once copied (manual ANALYZE,
    # not autovacuum's): their key is probed, not filtered.
    assert "analyze_ms" in stats
    analyzed = q(pg_url, "SELECT relname, analyze_count > 0 FROM pg_stat_user_tables"
                 " WHERE schemaname = 'notifier' AND relname = ANY(%s) ORDER BY relname",
                 list(releases.CYCLE_TABLES))  # fmt: skip
    assert analyzed == [
        ("cycle_master_edges", True), ("cycle_masters", True), ("cycle_release_edges", True),
        ("cycle_releases", True), ("cycle_search_matches", True),
    ]  # fmt: skip
    found = matched(pg_url, "v2")["s-fresh"]
    assert found["match_count"] == 3
    assert [m["id"] for m in found["matches"]] == ["10", "1500", "2400"]


def _edges(pg_url: str, version: str) -> list[tuple[Any, ...]]:
    return q(
        pg_url,
        "SELECT kind, entity_id, release_id, ord FROM notifier.cycle_release_edges"
        " WHERE version = %s ORDER BY kind, entity_id, release_id, ord",
        version,
    )


async def test_the_new_releases_edges_keyed_by_entity_once_per_edge(
    router: Router,
    publish: Publish,
    pg_url: str,
    graph_driver: AsyncDriver,
    graph_db: str,
    router_settings: config.Settings,
) -> None:
    await write(graph_driver, graph_db, lambda g: g.release("100", artists=["a1"], labels=["l1"]))
    await signal_all(publish, "v1")
    await cycle_done(pg_url, "v1")
    assert _edges(pg_url, "v1") == []  # the baseline stores no new release

    def month(g: Any) -> None:
        g.release("200", artists=["a1", "a2"], labels=["l1"])
        g.release("201", artists=["a2"], labels=["l1", "l2"])
        g.release("202")  # no artist, no label: no edge

    await write(graph_driver, graph_db, month)
    # A second BY edge between the same release and artist, as a graph may hold.
    async with graph_driver.session(database=graph_db) as s:
        await s.run("MATCH (r:Release {id: '200'}), (a:Artist {id: 'a1'}) CREATE (r)-[:BY]->(a)")
    await signal_all(publish, "v2")
    await cycle_done(pg_url, "v2")
    expected = [
        ("by", "a1", 200, 1), ("by", "a1", 200, 2), ("by", "a2", 200, 3), ("by", "a2", 201, 1),
        ("on", "l1", 200, 1), ("on", "l1", 201, 1), ("on", "l2", 201, 2),
    ]  # fmt: skip
    got = _edges(pg_url, "v2")
    # Positions follow the graph's order of the edges: compare the edges, then that
    # each (release, position) names the entry of cycle_releases' arrays there.
    assert sorted((k, e, r) for k, e, r, _ in got) == [(k, e, r) for k, e, r, _ in expected]
    assert q(pg_url, """
        SELECT 'by', t.id, r.release_id, t.n::int
        FROM notifier.cycle_releases r, unnest(r.artist_ids) WITH ORDINALITY AS t (id, n)
        WHERE r.version = 'v2'
        UNION ALL
        SELECT 'on', t.id, r.release_id, t.n::int
        FROM notifier.cycle_releases r, unnest(r.label_ids) WITH ORDINALITY AS t (id, n)
        WHERE r.version = 'v2'
        ORDER BY 1, 2, 3, 4""") == got  # fmt: skip

    # The unit run again (a resumed attempt) writes them afresh, never twice; the
    # unit is done meanwhile, so this attempt marks nothing.
    row = q(pg_url, """
        SELECT u.id, u.version, u.entity_type, u.entity_ids, u.attempts, c.started_at,
               c.previous_version
        FROM notifier.diff_units u JOIN notifier.cycles c USING (version)
        WHERE u.version = 'v2' AND u.entity_type = 'releases'""")[0]  # fmt: skip
    unit = cycles.Unit(row[0], row[1], row[2], list(row[3]), row[4], row[5], row[6])
    g = graph.Graph(graph_driver, graph_db)
    async with unit_pool(router_settings) as pool:
        again = releases.ReleasesUnit(pool, g, "other", batch=1, stop=asyncio.Event())
        assert await again.run(unit) is None
    assert _edges(pg_url, "v2") == got
