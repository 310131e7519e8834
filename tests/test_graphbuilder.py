"""The graph fixture builder writes the shape of contract §4."""

from __future__ import annotations

from typing import Any

import pytest
from neo4j import AsyncDriver

from notifier.devkit import services
from notifier.devkit.graphbuilder import (
    PLATFORM_SCHEMA,
    GraphBuilder,
    platform_schema,
    platform_schema_applied,
    record_sha256,
)


async def _rows(driver: AsyncDriver, db: str, cypher: str, **params: Any) -> list[dict[str, Any]]:
    async with driver.session(database=db) as session:
        result = await session.run(cypher, **params)
        return [r.data() async for r in result]


async def test_contract_shape(graph_driver: AsyncDriver, graph_db: str) -> None:
    g = GraphBuilder()
    g.artist("1", "John Coltrane").artist("2", "Trane").artist("3", "Quartet")
    g.alias("2", "1").member("1", "3")
    g.label("10", "Impulse!").label("11", "Impulse! Sub", parent="10")
    g.style("Hard Bop", genre="Jazz")
    g.release("100", "A Love Supreme", year=1965, formats=["Vinyl", "LP"], artists=["1"],
              labels=["11"], genres=["Jazz"], styles=["Hard Bop"], master="1000")  # fmt: skip
    await g.write(graph_driver, graph_db)

    rows = await _rows(
        graph_driver,
        graph_db,
        "MATCH (r:Release {id: $id})-[:BY]->(a:Artist) MATCH (r)-[:ON]->(l:Label) "
        "MATCH (l)-[:SUBLABEL_OF]->(p:Label) MATCH (r)-[:IS]->(g:Genre) "
        "MATCH (r)-[:IS]->(s:Style)-[:PART_OF]->(g) MATCH (r)-[:DERIVED_FROM]->(m:Master) "
        "RETURN r.title AS title, r.year AS year, r.formats AS formats, a.name AS artist, "
        "p.id AS parent, g.name AS genre, s.name AS style, m.id AS master",
        id="100",
    )
    assert rows == [{"title": "A Love Supreme", "year": 1965, "formats": ["Vinyl", "LP"],
                     "artist": "John Coltrane", "parent": "10", "genre": "Jazz",
                     "style": "Hard Bop", "master": "1000"}]  # fmt: skip
    aliases = await _rows(
        graph_driver, graph_db,
        "MATCH (a:Artist {id: '1'})-[:ALIAS_OF]-(x:Artist) RETURN x.id AS id",
    )  # fmt: skip
    assert aliases == [{"id": "2"}]
    members = await _rows(
        graph_driver, graph_db,
        "MATCH (m:Artist)-[:MEMBER_OF]->(g:Artist {id: '3'}) RETURN m.id AS id",
    )  # fmt: skip
    assert members == [{"id": "1"}]


async def test_rewriting_is_idempotent_and_adds(graph_driver: AsyncDriver, graph_db: str) -> None:
    g = GraphBuilder().release("1", artists=["7"])
    await g.write(graph_driver, graph_db)
    await g.write(graph_driver, graph_db)
    await g.clear().release("2", artists=["7"]).write(graph_driver, graph_db)
    rows = await _rows(
        graph_driver, graph_db,
        "MATCH (r:Release)-[:BY]->(a:Artist {id: '7'}) RETURN r.id AS id ORDER BY id",
    )  # fmt: skip
    assert rows == [{"id": "1"}, {"id": "2"}]
    count = await _rows(graph_driver, graph_db, "MATCH (a:Artist) RETURN count(a) AS n")
    assert count == [{"n": 1}]


async def test_odd_data_can_be_written(graph_driver: AsyncDriver, graph_db: str) -> None:
    g = GraphBuilder().node("Artist", {"id": "x-1", "name": None}).node("Release", {"id": 42})
    await g.write(graph_driver, graph_db)
    rows = await _rows(graph_driver, graph_db, "MATCH (r:Release) RETURN r.id AS id")
    assert rows == [{"id": 42}]


def test_unknown_label_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown label"):
        GraphBuilder().node("Person", {"id": "1"})


async def test_referenced_nodes_never_overwrite_existing_ones(
    graph_driver: AsyncDriver, graph_db: str
) -> None:
    await (
        GraphBuilder()
        .artist("1", "John Coltrane")
        .label("5", "Impulse!")
        .write(graph_driver, graph_db)
    )
    # The next import only references them through a new release.
    await (
        GraphBuilder().release("9", artists=["1", "2"], labels=["5"]).write(graph_driver, graph_db)
    )
    rows = await _rows(
        graph_driver, graph_db, "MATCH (a:Artist) RETURN a.id AS id, a.name AS name ORDER BY id"
    )
    assert rows == [{"id": "1", "name": "John Coltrane"}, {"id": "2", "name": "Artist 2"}]
    labels = await _rows(graph_driver, graph_db, "MATCH (l:Label) RETURN l.name AS name")
    assert labels == [{"name": "Impulse!"}]


# ---------------------------------------------------------------- platform-faithful mode


def test_record_sha256_is_stable_and_follows_the_properties() -> None:
    a = record_sha256("Artist", {"id": "1", "name": "A"})
    assert len(a) == 64 and int(a, 16) >= 0
    assert a == record_sha256("Artist", {"name": "A", "id": "1", "sha256": "ignored"})
    assert a != record_sha256("Artist", {"id": "1", "name": "B"})
    assert a != record_sha256("Label", {"id": "1", "name": "A"})


async def test_full_nodes_carry_sha256_and_references_do_not(
    graph_driver: AsyncDriver, graph_db: str
) -> None:
    g = GraphBuilder().artist("1", "A").release("9", artists=["1", "2"], genres=["Jazz"])
    g.node("Label", {"id": "5", "name": "L", "sha256": "given"})
    await g.write(graph_driver, graph_db)
    rows = await _rows(
        graph_driver, graph_db,
        "MATCH (n) WHERE n:Artist OR n:Release OR n:Label OR n:Genre "
        "RETURN coalesce(n.id, n.name) AS k, n.sha256 AS sha ORDER BY k",
    )  # fmt: skip
    got = {r["k"]: r["sha"] for r in rows}
    assert got["1"] == record_sha256("Artist", {"id": "1", "name": "A"})
    assert got["2"] is None  # only referenced by the release
    assert got["5"] == "given" and got["Jazz"] is None  # genres carry no sha256
    assert got["9"] == record_sha256(
        "Release", {"id": "9", "title": "Release 9", "year": None, "formats": ["Vinyl"]}
    )


async def test_platform_mode_writes_like_graphinator(
    graph_driver: AsyncDriver, graph_db: str
) -> None:
    g = GraphBuilder(platform=True)
    g.artist("1", "John Coltrane").member("3", "1").alias("4", "1")
    g.label("10", "Impulse!", parent="11")
    g.release("100", None, formats=["Vinyl", "LP", "Vinyl"], artists=["1", "2"], labels=["12"],
              genres=["Jazz"], styles=["Hard Bop", "Modal"], master="1000")  # fmt: skip
    g.release("101", "Two Genres", year=1965, genres=["Jazz", "Blues"], styles=["Soul-Jazz"])
    g.master("2000", "Giant Steps", year=1960, artists=["1", "5"], genres=["Jazz"],
             styles=["Hard Bop"])  # fmt: skip
    g.stub("Artist", "6").stub("Artist", "1")  # a stub never overwrites a full node
    await g.write(graph_driver, graph_db)

    rows = await _rows(
        graph_driver, graph_db,
        "MATCH (n) WHERE n:Artist OR n:Label OR n:Master OR n:Release "
        "RETURN labels(n)[0] AS label, n.id AS id, keys(n) AS keys ORDER BY label, id",
    )  # fmt: skip
    keys = {(r["label"], r["id"]): sorted(r["keys"]) for r in rows}
    full_artist = ["id", "name", "releases_url", "resource_url", "sha256"]
    assert keys == {
        ("Artist", "1"): full_artist,
        **{("Artist", a): ["id"] for a in ("2", "3", "4", "5", "6")},
        ("Label", "10"): ["id", "name", "sha256"],
        ("Label", "11"): ["id"],
        ("Label", "12"): ["id"],
        ("Master", "1000"): ["id"],
        ("Master", "2000"): ["id", "sha256", "title", "year"],
        ("Release", "100"): ["formats", "id", "sha256"],  # no title, no year
        ("Release", "101"): ["formats", "id", "sha256", "title", "year"],
    }
    release = await _rows(
        graph_driver, graph_db,
        "MATCH (r:Release) RETURN r.id AS id, r.formats AS formats ORDER BY id",
    )  # fmt: skip
    assert release == [
        {"id": "100", "formats": ["Vinyl", "LP", "Vinyl"]},  # repeats kept
        {"id": "101", "formats": []},
    ]
    artist = await _rows(
        graph_driver, graph_db,
        "MATCH (a:Artist {id: '1'}) RETURN a.resource_url AS u, a.releases_url AS r",
    )  # fmt: skip
    assert artist == [
        {
            "u": "https://api.discogs.com/artists/1",
            "r": "https://api.discogs.com/artists/1/releases",
        }
    ]
    # Only a single-genre record links its styles to the genre.
    part_of = await _rows(
        graph_driver, graph_db,
        "MATCH (s:Style)-[:PART_OF]->(g:Genre) RETURN s.name AS s, g.name AS g ORDER BY s",
    )  # fmt: skip
    assert part_of == [{"s": "Hard Bop", "g": "Jazz"}, {"s": "Modal", "g": "Jazz"}]
    edges = await _rows(
        graph_driver, graph_db,
        "MATCH (a)-[e]->(b) RETURN labels(a)[0] + ':' + coalesce(a.id, a.name) + '-' + type(e)"
        " + '->' + labels(b)[0] + ':' + coalesce(b.id, b.name) AS e ORDER BY e",
    )  # fmt: skip
    assert [r["e"] for r in edges] == [
        "Artist:3-MEMBER_OF->Artist:1",
        "Artist:4-ALIAS_OF->Artist:1",
        "Label:10-SUBLABEL_OF->Label:11",
        "Master:2000-BY->Artist:1",
        "Master:2000-BY->Artist:5",
        "Master:2000-IS->Genre:Jazz",
        "Master:2000-IS->Style:Hard Bop",
        "Release:100-BY->Artist:1",
        "Release:100-BY->Artist:2",
        "Release:100-DERIVED_FROM->Master:1000",
        "Release:100-IS->Genre:Jazz",
        "Release:100-IS->Style:Hard Bop",
        "Release:100-IS->Style:Modal",
        "Release:100-ON->Label:12",
        "Release:101-IS->Genre:Blues",
        "Release:101-IS->Genre:Jazz",
        "Release:101-IS->Style:Soul-Jazz",
        "Style:Hard Bop-PART_OF->Genre:Jazz",
        "Style:Modal-PART_OF->Genre:Jazz",
    ]
    # The next dump writes artist 2 fully: the stub gains its properties in place.
    await GraphBuilder(platform=True).artist("2", "Alice").write(graph_driver, graph_db)
    two = await _rows(
        graph_driver, graph_db,
        "MATCH (r:Release)-[:BY]->(a:Artist {id: '2'}) RETURN r.id AS r, a.name AS name",
    )  # fmt: skip
    assert two == [{"r": "100", "name": "Alice"}]


async def test_platform_extras_users_persons_musicbrainz(
    graph_driver: AsyncDriver, graph_db: str
) -> None:
    g = GraphBuilder(platform=True).artist("1", "A").artist("2", "B")
    g.release("100", "R", artists=["1"]).release("101", "S", artists=["2"])
    g.user("u-1", "alice", collected=["100", "101", "404"], wants=["101"]).user("u-2")
    g.person("Rudy Van Gelder", [("100", "Engineer"), ("101", "Mastered By")], artist="2")
    g.person("Nobody", [("404", "Producer")])  # the release is not there: nothing written
    g.musicbrainz_edge("1", "COLLABORATED_WITH", "2").musicbrainz_edge("2", "MEMBER_OF", "1")
    g.musicbrainz_id("Artist", "1", "mbid-1").musicbrainz_id("Release", "404", "mbid-x")
    await g.write(graph_driver, graph_db)

    users = await _rows(
        graph_driver, graph_db,
        "MATCH (u:User) OPTIONAL MATCH (u)-[e]->(r:Release) RETURN u.id AS u,"
        " u.discogs_username AS name, type(e) AS e, r.id AS r, e.instance_id AS inst"
        " ORDER BY u, e, r",
    )  # fmt: skip
    assert users == [
        {"u": "u-1", "name": "alice", "e": "COLLECTED", "r": "100", "inst": "u-1-100"},
        {"u": "u-1", "name": "alice", "e": "COLLECTED", "r": "101", "inst": "u-1-101"},
        {"u": "u-1", "name": "alice", "e": "WANTS", "r": "101", "inst": None},
        {"u": "u-2", "name": None, "e": None, "r": None, "inst": None},
    ]
    credits = await _rows(
        graph_driver, graph_db,
        "MATCH (p:Person)-[c:CREDITED_ON]->(r:Release) OPTIONAL MATCH (p)-[:SAME_AS]->(a:Artist)"
        " RETURN p.name AS p, c.role AS role, c.category AS cat, r.id AS r, a.id AS a"
        " ORDER BY r",
    )  # fmt: skip
    assert credits == [
        {"p": "Rudy Van Gelder", "role": "Engineer", "cat": "production", "r": "100", "a": "2"},
        {"p": "Rudy Van Gelder", "role": "Mastered By", "cat": "production", "r": "101",
         "a": "2"},
    ]  # fmt: skip
    assert await _rows(graph_driver, graph_db, "MATCH (p:Person) RETURN count(p) AS n") == [
        {"n": 1}
    ]
    mb = await _rows(
        graph_driver, graph_db,
        "MATCH (a:Artist)-[e {source: 'musicbrainz'}]->(b:Artist)"
        " RETURN a.id AS a, type(e) AS t, b.id AS b ORDER BY t",
    )  # fmt: skip
    assert mb == [
        {"a": "1", "t": "COLLABORATED_WITH", "b": "2"},
        {"a": "2", "t": "MEMBER_OF", "b": "1"},
    ]
    mbid = await _rows(
        graph_driver, graph_db,
        "MATCH (n) WHERE n.mbid IS NOT NULL RETURN n.id AS id, n.mbid AS mbid",
    )  # fmt: skip
    assert mbid == [{"id": "1", "mbid": "mbid-1"}]  # enrichment never creates nodes


async def test_latch_is_graphinators_write(graph_driver: AsyncDriver, graph_db: str) -> None:
    await GraphBuilder.latch(graph_driver, graph_db, "20260301", ["labels", "artists"])
    first = await _rows(
        graph_driver, graph_db,
        "MATCH (m:ExtractionCompletion) RETURN m.version AS v, m.signals AS s,"
        " m.created_at AS c, m.updated_at AS u",
    )  # fmt: skip
    await GraphBuilder().latch(
        graph_driver, graph_db, "20260301", ["releases", "artists", "labels"]
    )
    second = await _rows(
        graph_driver, graph_db,
        "MATCH (m:ExtractionCompletion) RETURN m.version AS v, m.signals AS s,"
        " m.created_at AS c, m.updated_at AS u",
    )  # fmt: skip
    assert [(r["v"], r["s"]) for r in first] == [("20260301", ["artists", "labels"])]
    assert [(r["v"], r["s"]) for r in second] == [("20260301", ["artists", "labels", "releases"])]
    assert second[0]["c"] == first[0]["c"]  # ON CREATE only
    assert second[0]["u"] >= first[0]["u"]


def test_stubs_and_musicbrainz_types_are_fixed_names() -> None:
    with pytest.raises(ValueError, match="no stubs"):
        GraphBuilder().stub("Release", "1")
    with pytest.raises(ValueError, match="not a MusicBrainz edge type"):
        GraphBuilder().musicbrainz_edge("1", "BY", "2")
    with pytest.raises(ValueError, match="unknown label"):
        GraphBuilder().musicbrainz_id("Genre", "Jazz", "x")


async def test_platform_schema_is_schema_inits(
    graph_server: services.GraphService, graph_driver: AsyncDriver, graph_db: str
) -> None:
    neo4j = graph_server.admin_url is None  # an ArcadeDB server has an admin URL
    assert len(PLATFORM_SCHEMA) == 29
    async with platform_schema_applied(graph_driver, graph_db, neo4j=neo4j) as applied:
        fulltext = {n for n, c in PLATFORM_SCHEMA if c.startswith("CREATE FULLTEXT")}
        assert len(fulltext) == 6
        if not neo4j:  # ArcadeDB refuses FULLTEXT indexes; nothing else is left out
            assert applied == [n for n, _ in PLATFORM_SCHEMA if n not in fulltext]
            return
        assert applied == [n for n, _ in PLATFORM_SCHEMA]
        constraints = await _rows(
            graph_driver, graph_db,
            "SHOW CONSTRAINTS YIELD name, type, labelsOrTypes, properties RETURN *",
        )  # fmt: skip
        got = sorted((r["name"], r["type"], r["labelsOrTypes"], r["properties"])
                     for r in constraints)  # fmt: skip
        assert got == [
            ("artist_id", "UNIQUENESS", ["Artist"], ["id"]),
            ("genre_name", "UNIQUENESS", ["Genre"], ["name"]),
            ("label_id", "UNIQUENESS", ["Label"], ["id"]),
            ("master_id", "UNIQUENESS", ["Master"], ["id"]),
            ("person_name", "UNIQUENESS", ["Person"], ["name"]),
            ("release_id", "UNIQUENESS", ["Release"], ["id"]),
            ("style_name", "UNIQUENESS", ["Style"], ["name"]),
            ("user_id", "UNIQUENESS", ["User"], ["id"]),
        ]
        indexes = await _rows(
            graph_driver, graph_db,
            "SHOW INDEXES YIELD name, type, state WHERE type <> 'LOOKUP' RETURN *",
        )  # fmt: skip
        assert {r["state"] for r in indexes} == {"ONLINE"}
        assert sorted(r["name"] for r in indexes if r["type"] == "FULLTEXT") == sorted(fulltext)
        assert len(indexes) == 29  # 21 range (8 backing the constraints) + 6 fulltext
        # Applying again is a no-op (IF NOT EXISTS), as schema-init runs on every start.
        assert await platform_schema(graph_driver, graph_db) == [n for n, _ in PLATFORM_SCHEMA]
    left = await _rows(graph_driver, graph_db, "SHOW CONSTRAINTS YIELD name RETURN name")
    assert left == []
