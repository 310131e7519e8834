"""A genre's (style's) release count from what is new (diff.tag_count), the full
count as the fallback: the pure decision, the masters' id pass (once a cycle, in the
releases unit) under PROFILE, and whole cycles on real PostgreSQL and Neo4j with the
graph written as graphinator writes it (MERGE one IS edge per release or master and
tag; masters IS too)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import pytest
from neo4j import AsyncDriver

from notifier import config, diff, graph
from notifier.devkit import services
from notifier.devkit.graphbuilder import GraphBuilder
from tests.router.conftest import events, q, run_cycle, unit_pool, watch, write_platform
from tests.router.test_profile import profile

# Jazz: 7 IS edges when recorded, 5 of them releases'.
RECORDED = diff.Snapshot("v1", "Jazz", release_count=5, edge_count=7)


def test_new_release_and_master_edges_add_up() -> None:
    # +3 releases' edges, +1 new master's: the count grows by the releases' only.
    assert diff.tag_count(RECORDED, "v1", 11, 3, 1) == 8
    assert diff.tag_count(RECORDED, "v1", 7, 0, 0) == 5


@pytest.mark.parametrize(
    ("snapshot", "previous", "degree", "releases", "masters"),
    [
        (RECORDED, "v1", 10, 3, 1),  # an edge gone (an old master's genre changed)
        (RECORDED, "v1", 12, 3, 1),  # an edge more (an old release retagged)
        (RECORDED, "v0", 11, 3, 1),  # not the previous cycle's snapshot
        (RECORDED, None, 11, 3, 1),  # the first cycle
        (None, "v1", 11, 3, 1),  # never recorded
        (RECORDED._replace(edge_count=None), "v1", 11, 3, 1),  # recorded before 018
        (RECORDED._replace(release_count=None), "v1", 11, 3, 1),
    ],
)
def test_every_doubt_counts_in_full(
    snapshot: diff.Snapshot | None, previous: str | None, degree: int, releases: int, masters: int
) -> None:
    assert diff.tag_count(snapshot, previous, degree, releases, masters) is None


def test_the_diff_records_the_degree() -> None:
    state = diff.TagState(8, edge_count=11)
    # Recorded by the code before sql/019: the mark is no longer needed, nor written.
    result = diff.diff_tag("v2", "v1", "genre", "Jazz", state,
                           RECORDED._replace(master_mark=1000), [6], [])  # fmt: skip
    assert result.snapshot == diff.Snapshot("v2", "Jazz", release_count=8, edge_count=11)
    assert [e.detail for e in result.events] == [
        {"threshold": 6, "previous_count": 5, "release_count": 8}
    ]


def _db_hits(plan: Mapping[str, Any]) -> int:
    """The db hits of a profiled plan, every operator summed."""
    return int(plan.get("dbHits", 0)) + sum(_db_hits(c) for c in plan.get("children", []))


async def test_the_masters_pass_does_not_grow_with_the_tags_releases_or_old_edges(
    graph_server: services.GraphService, graph_driver: AsyncDriver, platform_graph: str
) -> None:
    """CYCLE_MASTERS' db hits stay the same when a tag gains 1,000 releases and the old
    masters 200 more IS edges and 100 BY edges; TAG_MASTERS, which a full count runs,
    grows (Neo4j)."""
    g = GraphBuilder(platform=True)
    for m in range(1000, 1100):
        g.master(str(m), f"M{m}", genres=["Jazz"])
    for r in range(100):
        g.release(str(r), "R", genres=["Jazz"])
    await g.write(graph_driver, platform_graph)

    async def measure() -> tuple[int, int]:
        rows, plan = await profile(graph_driver, platform_graph, graph.CYCLE_MASTERS, mark=1099)
        assert rows == [{"highest": 1099, "rows": []}]
        _, full = await profile(graph_driver, platform_graph, graph.TAG_MASTERS["Genre"],
                                ids=["Jazz"])  # fmt: skip
        return _db_hits(plan), _db_hits(full)

    before, full_before = await measure()
    g = GraphBuilder(platform=True)
    for r in range(100, 1100):
        g.release(str(r), "R", genres=["Jazz"], styles=["Bop"])
    for m in range(1000, 1100):
        g.master(str(m), f"M{m}", artists=["7"], genres=["Jazz", "Blues"], styles=["Bop"])
    await g.write(graph_driver, platform_graph)
    after, full_after = await measure()
    print(f"CYCLE_MASTERS db hits: {before} -> {after}; TAG_MASTERS: {full_before} -> {full_after}")
    # The new masters' edges are read, and only theirs.
    rows, _ = await profile(graph_driver, platform_graph, graph.CYCLE_MASTERS, mark=1097)
    assert rows[0]["highest"] == 1099
    assert sorted([m, a, sorted(t), s] for m, a, t, s in rows[0]["rows"]) == [
        ["1098", ["7"], ["Blues", "Jazz"], ["Bop"]],
        ["1099", ["7"], ["Blues", "Jazz"], ["Bop"]],
    ]
    if graph_server.admin_url is not None:
        return  # ArcadeDB reports no db hits: the values above are what is checked
    assert before > 0
    assert after == before
    assert full_after > full_before


# Whole cycles, units run in this process one by one (tests/router/conftest.run_cycle).

TAG_UNITS = ("genre", "style")
TAG_COUNTERS = ("tag_fast_path", "tag_full_count", "baseline")


class _Recording(graph.Graph):
    """The graph, every query it runs kept (to tell which units read the masters)."""

    def __init__(self, driver: AsyncDriver, database: str) -> None:
        super().__init__(driver, database)
        self.queries: list[str] = []

    async def _rows(self, cypher: str, **params: Any) -> list[dict[str, Any]]:
        self.queries.append(cypher)
        return await super()._rows(cypher, **params)

    async def _one(self, cypher: str, **params: Any) -> list[Any]:
        self.queries.append(cypher)
        return await super()._one(cypher, **params)

    def masters_read(self) -> list[str]:
        """The queries reading masters since the last call: CYCLE_MASTERS, TAG_MASTERS."""
        names = {graph.CYCLE_MASTERS: "CYCLE_MASTERS"}
        names.update({c: f"TAG_MASTERS {t}" for t, c in graph.TAG_MASTERS.items()})
        read = [names.get(c, c) for c in self.queries if ":Master" in c]
        self.queries.clear()
        return read


async def _retag(driver: AsyncDriver, db_name: str, label: str, id: str, genres: list[str]) -> None:
    """A release or master record whose genres changed, as graphinator applies it: the IS
    edges to genres it no longer lists pruned, the others MERGEd."""
    async with driver.session(database=db_name) as s:
        await s.run(
            f"MATCH (n:{label} {{id: $id}})-[rel:IS]->(g:Genre) "
            "WHERE NOT g.name IN $keep DELETE rel",
            id=id,
            keep=genres,
        )
        await s.run(
            f"UNWIND $genres AS name MATCH (n:{label} {{id: $id}}) "
            "MERGE (g:Genre {name: name}) MERGE (n)-[:IS]->(g)",
            id=id,
            genres=genres,
        )


def _snapshots(pg_url: str) -> dict[tuple[str, str], diff.Snapshot]:
    rows = q(
        pg_url,
        "SELECT entity_type, entity_id, version, entity_name, release_ids, alias_ids,"
        " member_ids, release_count, tree_digest, edge_count, master_mark"
        " FROM notifier.entity_snapshots WHERE entity_type IN ('genre', 'style')",
    )
    return {(r[0], r[1]): diff.Snapshot(*r[2:]) for r in rows}


async def _full_counts(g: graph.Graph) -> dict[tuple[str, str], int]:
    """Every watched tag's count as the full read gives it."""
    genres = await g.tags("Genre", ["Jazz", "Rock"])
    styles = await g.tags("Style", ["Hard Bop"])
    out = {("genre", k): v.release_count for k, v in genres.items()}
    out.update({("style", k): v.release_count for k, v in styles.items()})
    return out


def _counts(pg_url: str) -> dict[tuple[str, str], int]:
    return {k: s.release_count or 0 for k, s in _snapshots(pg_url).items()}


def _first(g: GraphBuilder) -> None:
    # Jazz: 3 releases and 2 masters; Rock: 1 release; Hard Bop: 1 release, 1 master.
    g.master("1000", "A Love Supreme", genres=["Jazz"], styles=["Hard Bop"])
    g.master("1001", "Ascension", genres=["Jazz"])
    g.release("100", "A", genres=["Jazz"], styles=["Hard Bop"], master="1000")
    g.release("101", "B", genres=["Jazz"], master="1001")
    g.release("102", "C", genres=["Jazz", "Rock"])


def _watch_all(pg_url: str, user: uuid.UUID) -> None:
    watch(pg_url, user, "genre", "Jazz", {"threshold": 5})
    watch(pg_url, user, "genre", "Rock", {"threshold": 100})
    watch(pg_url, user, "style", "Hard Bop", {"threshold": 2})


async def test_new_releases_and_a_new_master_keep_the_fast_path(
    router_settings: config.Settings, pg_url: str, graph_driver: AsyncDriver, platform_graph: str
) -> None:
    """Three cycles: the baseline counts in full; new releases, then a new master IS the
    tags too, are counted from what is new, with exactly the counts and events of a full
    count."""
    _watch_all(pg_url, uuid.uuid4())
    g = _Recording(graph_driver, platform_graph)
    await write_platform(graph_driver, platform_graph, _first)
    async with unit_pool(router_settings) as pool:
        first = await run_cycle(pool, g, router_settings, "v1", TAG_UNITS, TAG_COUNTERS)
        assert first == {"tag_fast_path": 0, "tag_full_count": 3, "baseline": 3}
        # The first cycle records the master mark and counts in full.
        assert g.masters_read() == ["CYCLE_MASTERS", "TAG_MASTERS Genre", "TAG_MASTERS Style"]
        recorded = _snapshots(pg_url)
        assert recorded[("genre", "Jazz")] == diff.Snapshot(
            "v1", "Jazz", release_count=3, edge_count=5
        )
        assert _counts(pg_url) == await _full_counts(g)

        def second(b: GraphBuilder) -> None:
            b.release("103", "N1", genres=["Jazz"], styles=["Hard Bop"])
            b.release("104", "N2", genres=["Jazz", "Rock"])

        await write_platform(graph_driver, platform_graph, second)
        g.masters_read()
        got = await run_cycle(pool, g, router_settings, "v2", TAG_UNITS, TAG_COUNTERS)
        assert got == {"tag_fast_path": 3, "tag_full_count": 0, "baseline": 0}
        # The masters are read once, by the releases unit: no tag unit reads them.
        assert g.masters_read() == ["CYCLE_MASTERS"]
        assert _counts(pg_url) == await _full_counts(g)
        assert _counts(pg_url) == {
            ("genre", "Jazz"): 5, ("genre", "Rock"): 2, ("style", "Hard Bop"): 2
        }  # fmt: skip
        v2 = [(e, t, i, d) for e, t, i, d in events(pg_url, "v2") if e != "notable_releases"]
        assert v2 == [
            ("release_count_threshold", "genre", "Jazz",
             {"threshold": 5, "previous_count": 3, "release_count": 5}),
            ("release_count_threshold", "style", "Hard Bop",
             {"threshold": 2, "previous_count": 1, "release_count": 2}),
        ]  # fmt: skip
        notable = {(t, i): d for e, t, i, d in events(pg_url, "v2") if e == "notable_releases"}
        assert notable[("genre", "Jazz")]["release_ids"] == ["103", "104"]

        def third(b: GraphBuilder) -> None:  # a new master with the release derived from it
            b.master("1002", "New master", genres=["Jazz", "Rock"], styles=["Hard Bop"])
            b.release("105", "N3", genres=["Jazz"], master="1002")

        await write_platform(graph_driver, platform_graph, third)
        g.masters_read()
        got = await run_cycle(pool, g, router_settings, "v3", TAG_UNITS, TAG_COUNTERS)
        assert got == {"tag_fast_path": 3, "tag_full_count": 0, "baseline": 0}
        assert g.masters_read() == ["CYCLE_MASTERS"]
        rows = q(pg_url, "SELECT master_id, genres, styles FROM notifier.cycle_masters"
                 " WHERE version = 'v3'")  # fmt: skip
        assert [(m, sorted(t), s) for m, t, s in rows] == [(1002, ["Jazz", "Rock"], ["Hard Bop"])]
    assert _counts(pg_url) == await _full_counts(g)
    assert _counts(pg_url) == {("genre", "Jazz"): 6, ("genre", "Rock"): 2, ("style", "Hard Bop"): 2}
    jazz = _snapshots(pg_url)[("genre", "Jazz")]
    assert (jazz.edge_count, jazz.master_mark) == (9, None)
    assert [(e, i) for e, _, i, _ in events(pg_url, "v3")] == [("notable_releases", "Jazz")]


async def test_an_old_masters_genre_changed_is_counted_in_full(
    router_settings: config.Settings, pg_url: str, graph_driver: AsyncDriver, platform_graph: str
) -> None:
    """An old master moved from Jazz to Rock: Jazz lost an edge, Rock gained one, neither
    from a new release: both counted in full (the counts unchanged, as masters never
    count); an old release retagged onto Rock the cycle after: counted in full and
    reported; then the fast path again."""
    _watch_all(pg_url, uuid.uuid4())
    g = graph.Graph(graph_driver, platform_graph)
    await write_platform(graph_driver, platform_graph, _first)
    async with unit_pool(router_settings) as pool:
        await run_cycle(pool, g, router_settings, "v1", TAG_UNITS, TAG_COUNTERS)
        await _retag(graph_driver, platform_graph, "Master", "1001", ["Rock"])
        await write_platform(graph_driver, platform_graph,
                        lambda b: b.release("103", "N", genres=["Jazz"]))  # fmt: skip
        got = await run_cycle(pool, g, router_settings, "v2", TAG_UNITS, TAG_COUNTERS)
        assert got == {"tag_fast_path": 1, "tag_full_count": 2, "baseline": 0}
        assert _counts(pg_url) == await _full_counts(g)
        assert _counts(pg_url) == {
            ("genre", "Jazz"): 4, ("genre", "Rock"): 1, ("style", "Hard Bop"): 1
        }  # fmt: skip
        await _retag(graph_driver, platform_graph, "Release", "100", ["Jazz", "Rock"])
        got = await run_cycle(pool, g, router_settings, "v3", TAG_UNITS, TAG_COUNTERS)
        assert got == {"tag_fast_path": 2, "tag_full_count": 1, "baseline": 0}
        assert _counts(pg_url)[("genre", "Rock")] == 2 == (await _full_counts(g))[("genre", "Rock")]
        await write_platform(graph_driver, platform_graph,
                        lambda b: b.release("106", "M", genres=["Rock"]))  # fmt: skip
        got = await run_cycle(pool, g, router_settings, "v4", TAG_UNITS, TAG_COUNTERS)
        assert got == {"tag_fast_path": 3, "tag_full_count": 0, "baseline": 0}
    assert _counts(pg_url) == await _full_counts(g)
    assert _counts(pg_url)[("genre", "Rock")] == 3


async def test_a_tag_watched_since_is_a_baseline_counted_in_full(
    router_settings: config.Settings, pg_url: str, graph_driver: AsyncDriver, platform_graph: str
) -> None:
    user = uuid.uuid4()
    watch(pg_url, user, "genre", "Jazz", {"threshold": 5})
    g = graph.Graph(graph_driver, platform_graph)
    await write_platform(graph_driver, platform_graph, _first)
    async with unit_pool(router_settings) as pool:
        await run_cycle(pool, g, router_settings, "v1", TAG_UNITS, TAG_COUNTERS)
        watch(pg_url, user, "genre", "Rock", {"threshold": 1})
        await write_platform(graph_driver, platform_graph,
                        lambda b: b.release("103", "N", genres=["Jazz", "Rock"]))  # fmt: skip
        got = await run_cycle(pool, g, router_settings, "v2", TAG_UNITS, TAG_COUNTERS)
    assert got == {"tag_fast_path": 1, "tag_full_count": 1, "baseline": 1}
    assert _counts(pg_url) == {("genre", "Jazz"): 4, ("genre", "Rock"): 2}
    assert [(e, i) for e, _, i, _ in events(pg_url, "v2")] == [("notable_releases", "Jazz")]


async def test_a_cycle_whose_releases_were_scanned_in_full_counts_in_full(
    router_settings: config.Settings, pg_url: str, graph_driver: AsyncDriver, platform_graph: str
) -> None:
    """A release below the release mark makes the releases unit read every id and record
    no master as new: every tag is counted in full, with the counts a full count gives;
    the cycle after, from what is new again."""
    _watch_all(pg_url, uuid.uuid4())
    g = _Recording(graph_driver, platform_graph)
    await write_platform(graph_driver, platform_graph, _first)
    async with unit_pool(router_settings) as pool:
        await run_cycle(pool, g, router_settings, "v1", TAG_UNITS, TAG_COUNTERS)

        def late(b: GraphBuilder) -> None:
            b.release("50", "Late", genres=["Jazz"])
            b.master("1002", "New master", genres=["Jazz"])
            b.release("103", "N", genres=["Rock"], master="1002")

        await write_platform(graph_driver, platform_graph, late)
        g.masters_read()
        got = await run_cycle(pool, g, router_settings, "v2", TAG_UNITS, TAG_COUNTERS)
        assert got == {"tag_fast_path": 0, "tag_full_count": 3, "baseline": 0}
        assert g.masters_read() == ["CYCLE_MASTERS", "TAG_MASTERS Genre", "TAG_MASTERS Style"]
        assert _counts(pg_url) == await _full_counts(g)
        assert _counts(pg_url) == {
            ("genre", "Jazz"): 4, ("genre", "Rock"): 2, ("style", "Hard Bop"): 1
        }  # fmt: skip
        assert q(pg_url, "SELECT full_scan, master_highest_id FROM notifier.release_marks"
                 " WHERE version = 'v2'") == [(True, 1002)]  # fmt: skip
        await write_platform(graph_driver, platform_graph,
                             lambda b: b.master("1003", "Next", genres=["Jazz"])
                             .release("104", "M", genres=["Jazz"], master="1003"))  # fmt: skip
        g.masters_read()
        got = await run_cycle(pool, g, router_settings, "v3", TAG_UNITS, TAG_COUNTERS)
        assert got == {"tag_fast_path": 3, "tag_full_count": 0, "baseline": 0}
        assert g.masters_read() == ["CYCLE_MASTERS"]
    assert _counts(pg_url) == await _full_counts(g)
    assert _counts(pg_url)[("genre", "Jazz")] == 5
    assert [(e, i) for e, _, i, _ in events(pg_url, "v3")] == [
        ("notable_releases", "Jazz"), ("release_count_threshold", "Jazz")
    ]  # fmt: skip
