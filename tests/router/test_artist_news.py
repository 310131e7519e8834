"""An artist's news from the cycle's new releases and masters (diff.artist_news), the
full read as the fallback: the pure decision, the cheap graph read under PROFILE, and
whole cycles on real PostgreSQL and Neo4j with the graph written as graphinator writes
it (stubs with only an id, masters BY artists, a release re-pointed by prune then
MERGE), each against the same cycles run with every artist read in full."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from neo4j import AsyncDriver

from notifier import config, diff, graph
from notifier.devkit import services
from notifier.devkit.graphbuilder import GraphBuilder
from tests.conftest import _new_database
from tests.router.conftest import q, run_cycle, unit_pool, watch, write_platform
from tests.router.test_profile import profile

# Artist 1 recorded with releases 100 and 300, its BY degree 3 (a master too),
# alias 7 (one ALIAS_OF edge) and no member.
MARKS = diff.ArtistMarks("Coltrane", 3, 1, 0)
RECORDED = diff.Snapshot(
    "v1", "Coltrane", [100, 300], [7], [], 2, edge_count=3, alias_edges=1, member_edges=0
)


def _full(
    state: diff.ArtistState, marks: diff.ArtistMarks, snapshot: diff.Snapshot = RECORDED
) -> diff.DiffResult:
    """What the full read gives for the same artist."""
    return diff.diff_artist("v2", "v1", "1", state, snapshot, marks)


def test_new_releases_and_a_new_master_are_what_the_full_read_finds() -> None:
    # 101 and 102 are new releases BY 1, and a new master is: degree 3 -> 6.
    marks = diff.ArtistMarks("Coltrane", 6, 1, 0)
    fast = diff.artist_news("v2", "v1", "1", marks, RECORDED, [101, 102], 1, None)
    assert fast is not None
    full = _full(
        diff.ArtistState("Coltrane", ["100", "300", "101", "102"], [("7", "A")], []), marks
    )
    assert fast.events == full.events and fast.snapshot == full.snapshot
    assert fast.counters.values == full.counters.values == {}
    assert fast.events[0].detail == {"new_release_count": 2, "release_ids": ["101", "102"]}
    assert fast.snapshot == diff.Snapshot(
        "v2", "Coltrane", [100, 101, 102, 300], [7], [], 4,
        edge_count=6, alias_edges=1, member_edges=0,
    )  # fmt: skip


def test_new_aliases_and_members_are_read_alone_and_what_the_full_read_finds() -> None:
    marks = diff.ArtistMarks("Coltrane", 4, 3, 1)
    assert diff.people_changed(marks, RECORDED)
    # Not read: the aliases cannot be told.
    assert diff.artist_news("v2", "v1", "1", marks, RECORDED, [101], 0, None) is None
    people = diff.ArtistPeople(
        [("7", "A"), ("8", "New alias"), ("1", "Itself")], [("9", None)]
    )  # an alias of itself is no alias (as graph.artist_states)
    fast = diff.artist_news("v2", "v1", "1", marks, RECORDED, [101], 0, people)
    assert fast is not None
    state = diff.ArtistState("Coltrane", ["100", "101", "300"], [("7", "A"), ("8", "New alias")],
                             [("9", None)])  # fmt: skip
    full = _full(state, marks)
    assert fast.events == full.events and fast.snapshot == full.snapshot
    assert [e.event for e in fast.events] == ["new_releases", "new_aliases", "new_members"]
    assert fast.events[1].detail == {"aliases": [{"id": "8", "name": "New alias"}],
                                     "alias_count": 1}  # fmt: skip


def test_unchanged_degrees_keep_the_recorded_aliases_and_a_rename_is_recorded() -> None:
    marks = diff.ArtistMarks("John Coltrane", 3, 1, 0)
    assert not diff.people_changed(marks, RECORDED)
    fast = diff.artist_news("v2", "v1", "1", marks, RECORDED, [], 0, None)
    assert fast is not None and fast.events == []
    assert fast.snapshot == RECORDED._replace(version="v2", entity_name="John Coltrane")
    full = _full(diff.ArtistState("John Coltrane", ["100", "300"], [("7", "A")], []), marks)
    assert full.snapshot == fast.snapshot


def test_a_missing_name_is_counted_as_the_full_read_counts_it() -> None:
    marks = diff.ArtistMarks(None, 4, 1, 0)
    fast = diff.artist_news("v2", "v1", "1", marks, RECORDED, [101], 0, None)
    full = _full(diff.ArtistState(None, ["100", "101", "300"], [("7", None)], []), marks)
    assert fast is not None and fast.counters.values == full.counters.values == {"missing_name": 1}
    assert fast.events == full.events and fast.snapshot == full.snapshot


@pytest.mark.parametrize(
    ("marks", "snapshot", "releases", "masters"),
    [
        # An old release re-pointed onto the artist: one edge more than the new ones.
        (diff.ArtistMarks("C", 5, 1, 0), RECORDED, [101], 0),
        # A release (or master) gone: fewer edges than the new ones.
        (diff.ArtistMarks("C", 3, 1, 0), RECORDED, [101], 0),
        # A new master the releases unit did not record (no cycle_masters row).
        (diff.ArtistMarks("C", 5, 1, 0), RECORDED, [101], 0),
        # A release of the cycle already recorded: something is off.
        (diff.ArtistMarks("C", 4, 1, 0), RECORDED, [300], 0),
        # Baselines: no snapshot, one of an older cycle.
        (MARKS, None, [], 0),
        (MARKS, RECORDED._replace(version="v0"), [], 0),
        # Recorded before the marks existed.
        (MARKS, RECORDED._replace(edge_count=None), [], 0),
        (MARKS, RECORDED._replace(alias_edges=None, member_edges=None), [], 0),
        (MARKS, RECORDED._replace(alias_ids=None), [], 0),
        # Odd degrees.
        (diff.ArtistMarks("C", "3", 1, 0), RECORDED, [], 0),
        (diff.ArtistMarks("C", 3, None, 0), RECORDED, [], 0),
        (diff.ArtistMarks("C", 3, 1, -1), RECORDED, [], 0),
        (diff.ArtistMarks("C", True, 1, 0), RECORDED, [], 0),
    ],
    ids=[
        "repointed",
        "gone",
        "unrecorded-master",
        "already-recorded",
        "no-snapshot",
        "older-snapshot",
        "no-by-mark",
        "no-people-marks",
        "no-alias-ids",
        "text-degree",
        "no-degree",
        "negative-degree",
        "bool-degree",
    ],
)
def test_every_doubt_reads_the_artist_in_full(
    marks: diff.ArtistMarks, snapshot: diff.Snapshot | None, releases: list[int], masters: int
) -> None:
    people = diff.ArtistPeople([("7", "A")], [])
    assert diff.artist_news("v2", "v1", "1", marks, snapshot, releases, masters, people) is None


def test_no_previous_cycle_reads_in_full() -> None:
    assert diff.artist_news("v1", None, "1", MARKS, RECORDED, [], 0, None) is None


def test_the_full_read_records_the_marks_it_was_read_with() -> None:
    state = diff.ArtistState("Coltrane", ["100", "300"], [("7", "A")], [])
    result = _full(state, MARKS)
    assert result.snapshot is not None
    assert (result.snapshot.edge_count, result.snapshot.alias_edges) == (3, 1)
    plain = diff.diff_artist("v2", "v1", "1", state, RECORDED)  # without marks: none recorded
    assert plain.snapshot is not None and plain.snapshot.edge_count is None
    odd = _full(state, diff.ArtistMarks("Coltrane", 3, "1", 0))
    assert odd.snapshot is not None and odd.snapshot.edge_count is None


def _db_hits(plan: Mapping[str, Any]) -> int:
    """The db hits of a profiled plan, every operator summed."""
    return int(plan.get("dbHits", 0)) + sum(_db_hits(c) for c in plan.get("children", []))


async def test_the_cheap_read_does_not_grow_with_the_artists_releases(
    graph_server: services.GraphService, graph_driver: AsyncDriver, platform_graph: str
) -> None:
    """ARTIST_MARKS' db hits are the same for 100 and 1,000 releases (and masters) an artist."""
    g = GraphBuilder(platform=True)
    for artist, n in (("1", 100), ("2", 1000)):
        g.artist(artist, f"Artist {artist}").artist(f"{artist}0", "Alias").alias(
            f"{artist}0", artist
        )
        g.member(f"{artist}1", artist)  # a stub member
        for i in range(n):
            g.release(f"{artist}{i:05d}", "R", artists=[artist])
        for i in range(n // 10):
            g.master(f"{artist}9{i:05d}", "M", artists=[artist])
    await g.write(graph_driver, platform_graph)
    hits: dict[str, int] = {}
    for artist, n in (("1", 100), ("2", 1000)):
        rows, plan = await profile(graph_driver, platform_graph, graph.ARTIST_MARKS, ids=[artist])
        assert rows[0]["rows"] == [[artist, f"Artist {artist}", n + n // 10, 1, 1]]
        hits[artist] = _db_hits(plan)
    print(f"ARTIST_MARKS db hits: 100 releases an artist {hits['1']}, 1,000: {hits['2']}")
    if graph_server.admin_url is not None:
        return  # ArcadeDB reports no db hits: the values above are what is checked
    assert hits["1"] > 0
    assert hits["2"] == hits["1"]
    # The full read it replaces grows with them.
    _, small = await profile(graph_driver, platform_graph, graph.ARTIST_STATES, ids=["1"])
    _, big = await profile(graph_driver, platform_graph, graph.ARTIST_STATES, ids=["2"])
    print(f"ARTIST_STATES db hits: 100 releases {_db_hits(small)}, 1,000: {_db_hits(big)}")
    assert _db_hits(big) > 5 * _db_hits(small)
    # Reading the aliases and members alone does not grow with the releases either.
    _, small = await profile(graph_driver, platform_graph, graph.ARTIST_PEOPLE, ids=["1"])
    _, big = await profile(graph_driver, platform_graph, graph.ARTIST_PEOPLE, ids=["2"])
    assert _db_hits(big) == _db_hits(small)


# Whole cycles, units run in this process one by one: once as the router runs them,
# once in a second database with the fast path off (every changed artist read in full).

KEYS = ("artist_fast_path", "artist_full_read", "baseline", "unchanged_in_db")


@contextlib.contextmanager
def _second_database(pg_server: services.PostgresService, template: str) -> Iterator[str]:
    gen = _new_database(pg_server, template)
    try:
        yield next(gen)
    finally:
        gen.close()


def _events(pg_url: str, version: str) -> list[tuple[Any, ...]]:
    """Every artist event of `version` as written: key, name, detail, audience."""
    return q(
        pg_url,
        "SELECT dedup_key, event, entity_id, entity_name, detail, audience FROM notifier.events"
        " WHERE version = %s AND entity_type = 'artist' ORDER BY dedup_key",
        version,
    )


def _snapshots(pg_url: str) -> dict[str, tuple[Any, ...]]:
    rows = q(
        pg_url,
        "SELECT entity_id, entity_name, release_ids, alias_ids, member_ids, release_count,"
        " edge_count, alias_edges, member_edges FROM notifier.entity_snapshots"
        " WHERE entity_type = 'artist'",
    )
    return {r[0]: r[1:] for r in rows}


async def _repoint(driver: AsyncDriver, db_name: str, release: str, artists: list[str]) -> None:
    """A release record whose artists changed, as graphinator applies it: the BY edges it
    no longer lists pruned (batch_processor._prune_stale_edges), the others MERGEd."""
    async with driver.session(database=db_name) as s:
        await s.run(
            "UNWIND $records AS record "
            "MATCH (n:Release {id: record.key})-[rel:BY]->(t:Artist) "
            "WHERE NOT t.id IN record.keep DELETE rel",
            records=[{"key": release, "keep": artists}],
        )
        await s.run(
            "UNWIND $rows AS row MATCH (r:Release {id: row.release_id}) "
            "MERGE (a:Artist {id: row.artist_id}) MERGE (r)-[:BY]->(a)",
            rows=[{"release_id": release, "artist_id": a} for a in artists],
        )


def _first(g: GraphBuilder) -> None:
    g.artist("1", "Coltrane").artist("2", "Davis").artist("3", "Quartet").artist("5", "Hub")
    g.artist("6", "Quiet").artist("20", "Miles D").alias("20", "2").member("30", "3")
    g.release("100", "A", formats=["LP"], artists=["1"])
    g.release("101", "B", formats=["CD"], artists=["1", "2"])
    g.release("200", "C", formats=["LP"], artists=["2"])
    g.release("300", "D", formats=["LP"], artists=["3"])
    g.release("400", "E", formats=["LP"], artists=["4"])  # 4: a stub, only {id}
    g.release("600", "F", formats=["LP"], artists=["6"])
    for i in range(50):
        g.release(f"5{i:03d}", "H", formats=["CD" if i % 2 else "LP"], artists=["5"])
    g.master("900", "M", artists=["1"]).master("901", "N", artists=["5", "6"])


def _second(g: GraphBuilder) -> None:
    g.release("6102", "N1", formats=["LP"], artists=["1", "2"])  # two BY edges
    g.release("6103", "N2", year=2001, formats=["CD"], artists=["1"], master="902")
    g.master("902", "New master", artists=["1", "5"])  # BY edges, never releases
    g.release("6500", "N3", formats=["CD"], artists=["5"])
    g.release("6501", "N4", formats=["LP"], artists=["5"])
    g.alias("21", "2").artist("21", "New alias")  # a new alias, named
    g.member("31", "3")  # a new member, a stub
    g.release("6401", "N5", formats=["LP"], artists=["4"])  # the stub gains one
    g.artist("6", "Quiet Again")  # renamed, nothing else
    g.release("6700", "N6", formats=["LP"], artists=["77"])  # an unwatched artist


async def _extra_labels(server: services.GraphService, driver: AsyncDriver, db_name: str) -> None:
    """Extra labels on a watched artist and a release, as other importers add them (Neo4j:
    an ArcadeDB vertex has one type)."""
    if server.admin_url is not None:
        return
    async with driver.session(database=db_name) as s:
        await s.run("MATCH (a:Artist {id: '1'}) SET a:Person:Enriched")
        await s.run("MATCH (r:Release {id: '100'}) SET r:Enriched")


async def test_a_cycle_of_news_gives_the_events_and_snapshots_of_the_full_read(
    router_env: dict[str, str],
    router_settings: config.Settings,
    pg_url: str,
    pg_server: services.PostgresService,
    pg_template: str,
    graph_server: services.GraphService,
    graph_driver: AsyncDriver,
    platform_graph: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """New releases (one on two watched artists), a new master, a new alias, a new member,
    a rename, a stub's new release, a filtered watcher: the fast path's events (keys,
    details, audiences) and snapshots are those of the full read, cycle after cycle."""
    g = graph.Graph(graph_driver, platform_graph)
    await write_platform(graph_driver, platform_graph, _first)
    await _extra_labels(graph_server, graph_driver, platform_graph)
    with _second_database(pg_server, pg_template) as full_url:
        full_env = dict(router_env, POSTGRES_DATABASE=full_url.rsplit("/", 1)[1])
        full_settings = config.load(full_env, "router")
        for url in (pg_url, full_url):
            user = uuid.uuid4()
            for a in ("1", "2", "3", "4", "5", "6"):
                watch(url, user, "artist", a)
            watch(url, uuid.uuid4(), "artist", "5", {"formats": ["CD"]})
            watch(url, uuid.uuid4(), "artist", "1", {"year_from": 2000})
        stats: dict[str, dict[str, int]] = {}
        async with unit_pool(router_settings) as ours, unit_pool(full_settings) as full:
            for version, change in (("v1", None), ("v2", _second), ("v3", None)):
                if change is not None:
                    await write_platform(graph_driver, platform_graph, change)
                stats[version] = await run_cycle(
                    ours, g, router_settings, version, ["artist"], KEYS
                )
                with monkeypatch.context() as m:
                    m.setattr(diff, "artist_news", lambda *args: None)
                    got = await run_cycle(full, g, full_settings, version, ["artist"], KEYS)
                assert got["artist_fast_path"] == 0
                assert _events(pg_url, version) == _events(full_url, version), version
                assert _snapshots(pg_url) == _snapshots(full_url), version
    assert stats["v1"] == {"artist_fast_path": 0, "artist_full_read": 6, "baseline": 6,
                           "unchanged_in_db": 0}  # fmt: skip
    # 1, 2, 3, 5 and 6 from what is new; 4 (a stub: never a clean row) in full.
    assert stats["v2"] == {"artist_fast_path": 5, "artist_full_read": 1, "baseline": 0,
                           "unchanged_in_db": 0}  # fmt: skip
    assert stats["v3"] == {"artist_fast_path": 0, "artist_full_read": 1, "baseline": 0,
                           "unchanged_in_db": 5}  # fmt: skip
    got = {(e[1], e[2]): e[4] for e in _events(pg_url, "v2") if e[5] is None or e[5] == [{}]}
    assert got == {
        ("new_releases", "1"): {"new_release_count": 2, "release_ids": ["6102", "6103"]},
        ("new_releases", "2"): {"new_release_count": 1, "release_ids": ["6102"]},
        ("new_aliases", "2"): {"aliases": [{"id": "21", "name": "New alias"}], "alias_count": 1},
        ("new_members", "3"): {"members": [{"id": "31", "name": None}], "member_count": 1},
        ("new_releases", "4"): {"new_release_count": 1, "release_ids": ["6401"]},
        ("new_releases", "5"): {"new_release_count": 2, "release_ids": ["6500", "6501"]},
    }
    only_cd = [e[4] for e in _events(pg_url, "v2") if e[5] == [{"formats": ["CD"]}]]
    assert only_cd == [{"new_release_count": 1, "release_ids": ["6500"]}]
    recent = [e[4] for e in _events(pg_url, "v2") if e[5] == [{"year_from": 2000}]]
    assert recent == [{"new_release_count": 1, "release_ids": ["6103"]}]
    after = _snapshots(pg_url)
    assert after["1"][1] == [100, 101, 6102, 6103] and after["1"][5] == 6  # 4 releases, 2 masters
    assert after["6"][0] == "Quiet Again"
    assert _events(pg_url, "v3") == []


async def test_an_old_release_repointed_to_another_artist_is_read_in_full(
    router_settings: config.Settings, pg_url: str, graph_driver: AsyncDriver, platform_graph: str
) -> None:
    user = uuid.uuid4()
    for a in ("1", "2", "3"):
        watch(pg_url, user, "artist", a)
    g = graph.Graph(graph_driver, platform_graph)
    await write_platform(graph_driver, platform_graph, _first)
    async with unit_pool(router_settings) as pool:
        await run_cycle(pool, g, router_settings, "v1", ["artist"], KEYS)
        # 100 leaves artist 1 for artist 3, and a new release lands on 3 and 2.
        await _repoint(graph_driver, platform_graph, "100", ["3"])
        await write_platform(
            graph_driver, platform_graph,
            lambda b: b.release("6104", "N", formats=["LP"], artists=["3", "2"]),
        )  # fmt: skip
        got = await run_cycle(pool, g, router_settings, "v2", ["artist"], KEYS)
        # 3 grew by two for one new edge, 1 shrank: both in full; 2 from what is new.
        assert got == {"artist_fast_path": 1, "artist_full_read": 2, "baseline": 0,
                       "unchanged_in_db": 0}  # fmt: skip
        assert [(e[1], e[2], e[4]) for e in _events(pg_url, "v2")] == [
            ("new_releases", "2", {"new_release_count": 1, "release_ids": ["6104"]}),
            ("new_releases", "3", {"new_release_count": 2, "release_ids": ["100", "6104"]}),
        ]
        assert _snapshots(pg_url)["1"][1] == [101]  # a release leaving is no event
        # Recorded in full, the next cycle is fast again.
        await write_platform(
            graph_driver, platform_graph,
            lambda b: b.release("6105", "M", formats=["LP"], artists=["1", "3"]),
        )  # fmt: skip
        got = await run_cycle(pool, g, router_settings, "v3", ["artist"], KEYS)
    assert got == {"artist_fast_path": 2, "artist_full_read": 0, "baseline": 0,
                   "unchanged_in_db": 1}  # fmt: skip
    assert [(e[1], e[2], e[4]["release_ids"]) for e in _events(pg_url, "v3")] == [
        ("new_releases", "1", ["6105"]),
        ("new_releases", "3", ["6105"]),
    ]
