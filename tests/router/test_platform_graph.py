"""Every router event (contract §6) on a graph shaped as the platform writes it.

The graph is written by `GraphBuilder(platform=True)` over schema-init's
constraints and indexes: sha256 on every Discogs node, bare {id} stubs for
dangling references, releases without title, year or formats, formats with
repeats, Masters with their own BY and IS edges. The same two imports run with
and without what other platform services add (User with COLLECTED/WANTS,
Person with CREDITED_ON/SAME_AS, MusicBrainz edges and ids, the
ExtractionCompletion latch): the events must be exactly the same.

`ping` and `webhook.disabled` (§6) are not graph events: the API and delivery
make them, never the router.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from neo4j import AsyncDriver

from notifier.devkit.graphbuilder import GraphBuilder
from notifier.router import Router
from tests.router.conftest import Publish, cycle_done, q, signal_all, watch

ALL_SIGNALS = ["artists", "labels", "masters", "releases"]


def first_import(extras: bool) -> GraphBuilder:
    """The baseline dump (v1), as graphinator writes it; `extras`: what other services add."""
    g = GraphBuilder(platform=True)
    g.artist("1", "John Coltrane").artist("2", "Alice Coltrane")
    g.artist("4", "John Coltrane Quartet").member("1", "4")
    g.artist("5", "Trane").alias("5", "1")
    g.label("10", "Impulse!").label("11", "Impulse! Jazz Classics", parent="10")
    # A master is not a release: its BY and IS edges never count.
    g.master("1000", "A Love Supreme", year=1965, artists=["1"], genres=["Jazz"],
             styles=["Hard Bop"])  # fmt: skip
    g.release("100", "A Love Supreme", year=1965, formats=["Vinyl", "LP", "Vinyl"],
              artists=["1"], labels=["10"], genres=["Jazz"], styles=["Modal"],
              master="1000")  # fmt: skip
    # Artist "3" and label "12" exist only as stubs (a dangling reference).
    g.release("200", None, artists=["3"], labels=["12"], genres=["Jazz"])
    g.release("300", "Journey in Satchidananda", year=1971, formats=["LP"], artists=["2"],
              labels=["11"], genres=["Jazz"], styles=["Modal"])  # fmt: skip
    if extras:
        g.user("u-1", "alice", collected=["100", "200"], wants=["300"])
        g.person("Rudy Van Gelder", [("100", "Engineer"), ("300", "Recorded By")], artist="2")
        g.musicbrainz_edge("1", "COLLABORATED_WITH", "2").musicbrainz_edge("2", "TAUGHT", "3")
        g.musicbrainz_edge("1", "MEMBER_OF", "4")  # stamps source on Discogs' own edge
        g.musicbrainz_id("Artist", "1", "mb-artist-1").musicbrainz_id("Release", "100", "mb-r")
    return g


def second_import(extras: bool) -> GraphBuilder:
    """The next dump (v2): new releases, masters, an alias and a member."""
    g = GraphBuilder(platform=True)
    # Masters BY the stub artist "3" would make it the biggest artist if counted.
    for m in ("1001", "1002", "1003"):
        g.master(m, f"Master {m}", artists=["3"], genres=["Jazz"], styles=["Hard Bop"])
    g.release("101", None, artists=["1"], labels=["11"], genres=["Jazz"], styles=["Hard Bop"])
    g.release("102", "Ascension", year=1965, formats=["LP", "LP"], artists=["1", "2"],
              labels=["10"], genres=["Jazz"], styles=["Hard Bop"])  # fmt: skip
    g.release("201", "Stub's Second", formats=["CD", "CD"], artists=["3"], genres=["Jazz"])
    # Not what graphinator writes (it always sets a list), but the contract allows it.
    g.node("Release", {"id": "103", "title": "Formatless"}).rel(
        "Release", "103", "BY", "Artist", "2"
    )
    g.artist("6", "J. Coltrane").alias("6", "1")
    g.artist("7", "McCoy Tyner").member("7", "4")
    if extras:
        g.user("u-1", "alice", collected=["101", "201"], wants=["102", "103"]).user("u-2", "bob")
        g.person("Rudy Van Gelder", [("101", "Engineer"), ("102", "Mastered By")], artist="4")
        g.person("Bob Thiele", [("102", "Producer"), ("201", "Producer")], artist="1")
        g.musicbrainz_edge("4", "SUBGROUP_OF", "1").musicbrainz_edge("6", "RENAMED_TO", "1")
        g.musicbrainz_edge("7", "SUPPORTED", "4").musicbrainz_edge("2", "TRIBUTE_TO", "3")
        g.musicbrainz_id("Artist", "4", "mb-artist-4").musicbrainz_id("Label", "10", "mb-l")
    return g


def _events(pg_url: str, version: str) -> list[tuple[Any, ...]]:
    """(event, entity_type, entity_id, entity_name, detail) of a version, sorted."""
    return q(
        pg_url,
        "SELECT event, entity_type, entity_id, entity_name, detail FROM notifier.events"
        " WHERE version = %s ORDER BY entity_type, entity_id, event, dedup_key",
        version,
    )


# Every event the two imports must give, with or without the extras.
EXPECTED_V2: list[tuple[Any, ...]] = [
    ("new_aliases", "artist", "1", "John Coltrane",
     {"aliases": [{"id": "6", "name": "J. Coltrane"}], "alias_count": 1}),
    ("new_releases", "artist", "1", "John Coltrane",
     {"new_release_count": 2, "release_ids": ["101", "102"]}),
    ("new_releases", "artist", "2", "Alice Coltrane",
     {"new_release_count": 2, "release_ids": ["102", "103"]}),
    # The stub artist (only an id): its release, not the masters BY it.
    ("new_releases", "artist", "3", None, {"new_release_count": 1, "release_ids": ["201"]}),
    ("new_members", "artist", "4", "John Coltrane Quartet",
     {"members": [{"id": "7", "name": "McCoy Tyner"}], "member_count": 1}),
    # Masters' IS edges are not releases: 3 releases before, 6 now.
    ("notable_releases", "genre", "Jazz", "Jazz",
     {"release_ids": ["101", "102", "201"], "new_release_count": 3}),
    ("release_count_threshold", "genre", "Jazz", "Jazz",
     {"threshold": 5, "previous_count": 3, "release_count": 6}),
    # Label 10 includes its sublabel 11 (release 101).
    ("new_releases", "label", "10", "Impulse!",
     {"new_release_count": 2, "release_ids": ["101", "102"]}),
    # The stub label (only an id) got nothing new.
    ("search_match", "search", "s-format", "s-format",
     {"match_count": 1, "matches": [{"entity_type": "release", "id": "201",
                                     "name": "Stub's Second"}]}),
    ("search_match", "search", "s-hardbop", "s-hardbop",
     {"match_count": 2, "matches": [{"entity_type": "release", "id": "101", "name": None},
                                    {"entity_type": "release", "id": "102",
                                     "name": "Ascension"}]}),
    ("search_match", "search", "s-stub", "s-stub",
     {"match_count": 1, "matches": [{"entity_type": "release", "id": "201",
                                     "name": "Stub's Second"}]}),
    # Masters tagged Hard Bop (1000, 1001-1003) are not counted: 0 before, 2 now.
    ("notable_releases", "style", "Hard Bop", "Hard Bop",
     {"release_ids": ["101", "102"], "new_release_count": 2}),
    ("release_count_threshold", "style", "Hard Bop", "Hard Bop",
     {"threshold": 2, "previous_count": 0, "release_count": 2}),
]  # fmt: skip


@pytest.mark.parametrize("extras", [False, True], ids=["discogs-only", "with-extras"])
async def test_every_event_on_a_platform_graph(
    extras: bool,
    router: Router,
    publish: Publish,
    pg_url: str,
    graph_driver: AsyncDriver,
    platform_graph: str,
) -> None:
    user = uuid.uuid4()
    for artist in ("1", "2", "3", "4"):
        watch(pg_url, user, "artist", artist)
    watch(pg_url, user, "label", "10")
    watch(pg_url, user, "label", "12")
    watch(pg_url, user, "genre", "Jazz", {"threshold": 5})
    watch(pg_url, user, "style", "Hard Bop", {"threshold": 2})
    watch(pg_url, user, "search", "s-hardbop", {"genre": "jazz", "style": "hard bop"})
    watch(pg_url, user, "search", "s-format", {"format": "cd"})  # formats ["CD", "CD"]
    watch(pg_url, user, "search", "s-stub", {"artist": "3"})  # by id: the stub has no name

    await first_import(extras).write(graph_driver, platform_graph)
    if extras:
        await GraphBuilder.latch(graph_driver, platform_graph, "v1", ALL_SIGNALS)
    await signal_all(publish, "v1")
    stats = await cycle_done(pg_url, "v1")
    assert _events(pg_url, "v1") == []  # the baseline
    assert stats["entities"] == stats["baseline"] == 11  # the watched entities
    assert stats["missing_name"] == 2  # the stubs "3" and "12"
    assert "vanished" not in stats  # every watched entity, stubs included, was found

    await second_import(extras).write(graph_driver, platform_graph)
    if extras:
        await GraphBuilder.latch(graph_driver, platform_graph, "v2", ALL_SIGNALS[:2])
        await GraphBuilder.latch(graph_driver, platform_graph, "v2", ALL_SIGNALS)
    await signal_all(publish, "v2")
    stats = await cycle_done(pg_url, "v2")
    assert _events(pg_url, "v2") == EXPECTED_V2
    assert stats["events"] == len(EXPECTED_V2)
    # Releases 101, 102, 103 and 201 are new; masters never enter the release scan.
    # (A release's artists come in graph order: sorted here.)
    new = q(
        pg_url,
        "SELECT release_id, title, year, formats, ARRAY(SELECT unnest(artist_ids) ORDER BY 1),"
        " rank FROM notifier.cycle_releases WHERE version = 'v2' ORDER BY release_id",
    )
    assert new == [
        (101, None, None, [], ["1"], 3),
        (102, "Ascension", 1965, ["LP", "LP"], ["1", "2"], 3),
        (103, "Formatless", None, [], ["2"], 3),
        (201, "Stub's Second", None, ["CD", "CD"], ["3"], 2),
    ]


async def test_platform_graph_fixture_is_what_graphinator_writes(
    graph_driver: AsyncDriver, platform_graph: str
) -> None:
    """The fixture above really has the platform's shape (so the test above means something)."""
    await first_import(True).write(graph_driver, platform_graph)
    await second_import(True).write(graph_driver, platform_graph)
    await GraphBuilder.latch(graph_driver, platform_graph, "v2", ALL_SIGNALS)
    async with graph_driver.session(database=platform_graph) as s:
        result = await s.run(
            "MATCH (n) RETURN labels(n)[0] AS label, count(n) AS n,"
            " count(n.sha256) AS hashed ORDER BY label"
        )
        counts = [(r["label"], r["n"], r["hashed"]) async for r in result]
        result = await s.run(
            "MATCH ()-[e]->() RETURN type(e) AS t, count(e) AS n, count(e.source) AS mb ORDER BY t"
        )
        edges = [(r["t"], r["n"], r["mb"]) async for r in result]
        result = await s.run("MATCH (a:Artist {id: '3'}) RETURN keys(a) AS k")
        stub_keys = [r["k"] async for r in result]
    assert counts == [
        ("Artist", 7, 6),  # "3" is a stub
        ("ExtractionCompletion", 1, 0),
        ("Genre", 1, 0),
        ("Label", 3, 2),  # "12" is a stub
        ("Master", 4, 4),
        ("Person", 2, 0),
        ("Release", 7, 7),
        ("Style", 2, 0),
        ("User", 2, 0),
    ]
    assert stub_keys == [["id"]]
    assert edges == [
        ("ALIAS_OF", 2, 0),
        ("BY", 12, 0),  # 8 from releases, 4 from masters
        ("COLLABORATED_WITH", 1, 1),
        ("COLLECTED", 4, 0),
        ("CREDITED_ON", 6, 0),
        ("DERIVED_FROM", 1, 0),
        ("IS", 18, 0),  # 10 from releases, 8 from masters
        ("MEMBER_OF", 2, 1),  # Discogs' 1 -> 4, stamped by MusicBrainz
        ("ON", 5, 0),
        ("PART_OF", 2, 0),
        ("RENAMED_TO", 1, 1),
        ("SAME_AS", 3, 0),
        ("SUBGROUP_OF", 1, 1),
        ("SUBLABEL_OF", 1, 0),
        ("SUPPORTED", 1, 1),
        ("TAUGHT", 1, 1),
        ("TRIBUTE_TO", 1, 1),
        ("WANTS", 3, 0),
    ]
