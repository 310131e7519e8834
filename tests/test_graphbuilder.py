"""The graph fixture builder writes the shape of contract §4."""

from __future__ import annotations

from typing import Any

import pytest
from neo4j import AsyncDriver

from notifier.graphbuilder import GraphBuilder


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
