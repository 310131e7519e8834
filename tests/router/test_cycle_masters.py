"""The cycle's new masters, read once by the releases unit (cycle_masters), with
the graph written as graphinator writes it (masters BY artists and IS tags)."""

from __future__ import annotations

from typing import Any

import psycopg
from neo4j import AsyncDriver

from notifier import config, diff, graph, releases
from notifier.devkit.graphbuilder import GraphBuilder
from tests.router.conftest import q, run_cycle, unit_pool, write_platform

RELEASE_COUNTERS = ("new_masters", "release_full_scan", "non_numeric_master_ids")


def _masters(pg_url: str, version: str) -> list[tuple[Any, ...]]:
    """(master id, sorted artist ids, sorted genres, sorted styles) of a cycle's rows."""
    rows = q(
        pg_url,
        "SELECT master_id, artist_ids, genres, styles FROM notifier.cycle_masters"
        " WHERE version = %s ORDER BY master_id",
        version,
    )
    return [(m, sorted(a), sorted(g), sorted(s)) for m, a, g, s in rows]


def _edges(pg_url: str, version: str) -> list[tuple[Any, ...]]:
    """(artist id, master id) of a cycle's master BY edges, keyed by artist; each
    master's positions are 1..n (in the order the graph gave its artists)."""
    rows = q(
        pg_url,
        "SELECT artist_id, master_id, ord FROM notifier.cycle_master_edges"
        " WHERE version = %s ORDER BY artist_id, master_id, ord",
        version,
    )
    for master in {m for _, m, _ in rows}:
        positions = sorted(n for _, m, n in rows if m == master)
        assert positions == list(range(1, len(positions) + 1)), (master, positions)
    return [(a, m) for a, m, _ in rows]


def _known(pg_url: str, version: str, previous: str | None) -> bool:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute(
            releases.NEW_MASTERS_KNOWN, {"version": version, "previous": previous}
        ).fetchone()
    return row is not None and bool(row[0])


def _marks(pg_url: str) -> list[tuple[Any, ...]]:
    return q(
        pg_url,
        "SELECT version, full_scan, master_highest_id FROM notifier.release_marks ORDER BY version",
    )


def _first(g: GraphBuilder) -> None:
    g.master("1000", "A Love Supreme", artists=["1"], genres=["Jazz"], styles=["Hard Bop"])
    g.master("1001", "Ascension", artists=["1"], genres=["Jazz"])
    g.release("100", "A", artists=["1"], genres=["Jazz"], master="1000")


async def test_the_new_masters_with_their_artists_and_tags_once_a_cycle(
    router_settings: config.Settings, pg_url: str, graph_driver: AsyncDriver, platform_graph: str
) -> None:
    """The first cycle records the mark and no master; the next the masters above it
    with one entry per BY and IS edge; a cycle whose releases fell back to a full
    scan records none (readers count in full); the one after is back to the mark."""
    g = graph.Graph(graph_driver, platform_graph)
    await write_platform(graph_driver, platform_graph, _first)
    async with unit_pool(router_settings) as pool:
        got = await run_cycle(pool, g, router_settings, "v1", ("releases",), RELEASE_COUNTERS)
        assert got == {"new_masters": 0, "release_full_scan": 1, "non_numeric_master_ids": 0}
        assert _marks(pg_url) == [("v1", True, 1001)]
        assert _masters(pg_url, "v1") == []
        assert not _known(pg_url, "v1", None)

        def second(b: GraphBuilder) -> None:
            b.master("1002", "New", artists=["1", "2"], genres=["Jazz", "Rock"], styles=["Bop"])
            b.master("1003", "Bare")
            b.master("x7", "Odd id", genres=["Jazz"])
            b.master("999", "Below the mark", genres=["Jazz"])  # not new: an old id
            b.release("101", "N", artists=["2"], genres=["Rock"], master="1002")

        await write_platform(graph_driver, platform_graph, second)
        got = await run_cycle(pool, g, router_settings, "v2", ("releases",), RELEASE_COUNTERS)
        assert got == {"new_masters": 2, "release_full_scan": 0, "non_numeric_master_ids": 0}
        assert _masters(pg_url, "v2") == [
            (1002, ["1", "2"], ["Jazz", "Rock"], ["Bop"]),
            (1003, [], [], []),
        ]
        assert _edges(pg_url, "v2") == [("1", 1002), ("2", 1002)]
        assert _marks(pg_url)[1] == ("v2", False, 1003)
        assert _known(pg_url, "v2", "v1")
        assert not _known(pg_url, "v2", "v0")  # not the cycle the masters were read after

        # A release below the release mark: the releases unit reads every id again,
        # and records no master as new, not even one above the master mark.
        def late(b: GraphBuilder) -> None:
            b.release("50", "Late")
            b.master("1004", "Unrecorded", genres=["Jazz"])

        await write_platform(graph_driver, platform_graph, late)
        got = await run_cycle(pool, g, router_settings, "v3", ("releases",), RELEASE_COUNTERS)
        assert got == {"new_masters": 0, "release_full_scan": 1, "non_numeric_master_ids": 0}
        assert _masters(pg_url, "v3") == []
        assert _edges(pg_url, "v3") == []
        assert _marks(pg_url)[2] == ("v3", True, 1004)
        assert not _known(pg_url, "v3", "v2")

        await write_platform(graph_driver, platform_graph,
                             lambda b: b.master("1005", "Next", artists=["3"]))  # fmt: skip
        got = await run_cycle(pool, g, router_settings, "v4", ("releases",), RELEASE_COUNTERS)
        assert got == {"new_masters": 1, "release_full_scan": 0, "non_numeric_master_ids": 0}
        assert _masters(pg_url, "v4") == [(1005, ["3"], [], [])]
        assert _edges(pg_url, "v4") == [("3", 1005)]
        assert _known(pg_url, "v4", "v3")


def test_master_rows_leave_out_odd_ids() -> None:
    counters = diff.Counters()
    raw = [["12", ["1"], ["Jazz"], []], ["012", [], [], []], ["12", [], ["Rock"], []],
           [None, [], [], []], ["3", [7, None], ["A\x00"], ["B"]]]  # fmt: skip
    assert releases.master_rows("v", raw, counters) == [
        ("v", 3, ["7"], ["A"], ["B"]),
        ("v", 12, ["1"], ["Jazz"], []),
    ]
    assert counters.values == {"non_numeric_master_ids": 2, "repeated_master_ids": 1}


def test_master_edge_rows_keep_an_artist_listed_twice() -> None:
    rows = [("v", 3, ["7", "8", "7"], [], []), ("v", 12, [], ["Jazz"], [])]
    assert releases.master_edge_rows(rows) == [("v", "7", 3, 1), ("v", "8", 3, 2), ("v", "7", 3, 3)]
