"""The diff's unit reads are index-anchored on the platform's schema: PROFILE proves it.

Each unit read of `notifier.graph` runs under PROFILE with real parameters over
a platform-shaped graph carrying schema-init's constraints and indexes. On
Neo4j no operator of its plan may be a scan (AllNodesScan, NodeByLabelScan,
an index or relationship scan): each read must start from the unique index of
its constraint (NodeUniqueIndexSeek) and only expand from there. On 19M
releases a label scan per unit is the difference between milliseconds and
minutes.

`TAG_MASTERS` (the masters' IS edges, counted from the master side once a
tag unit) and `RELEASES_ABOVE` are left out on purpose: they are scans by design
(the masters; every release id above the previous highest, in the server),
whose cost does not grow with a hub. The full id walk (`RELEASE_ID_PAGE`) pages by a
range seek of the id index.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from neo4j import AsyncDriver

from notifier import graph
from notifier.devkit import services
from notifier.devkit.graphbuilder import GraphBuilder
from tests.router.test_platform_graph import ALL_SIGNALS, first_import, second_import

# The unit reads and real parameters (ids that exist, and one that does not).
UNIT_READS: dict[str, tuple[str, list[str]]] = {
    "ARTIST_STATES": (graph.ARTIST_STATES, ["1", "2", "3", "4", "404"]),
    "ARTIST_MARKS": (graph.ARTIST_MARKS, ["1", "2", "3", "4", "404"]),
    "ARTIST_PEOPLE": (graph.ARTIST_PEOPLE, ["1", "2", "3", "4", "404"]),
    "LABEL_STATES": (graph.LABEL_STATES, ["10", "12", "404"]),
    "LABEL_TREES": (graph.LABEL_TREES, ["10", "12", "404"]),
    "TAG_COUNTS[Genre]": (graph.TAG_COUNTS["Genre"], ["Jazz", "Nope"]),
    "TAG_COUNTS[Style]": (graph.TAG_COUNTS["Style"], ["Hard Bop", "Modal", "Nope"]),
    "RELEASE_FACETS": (graph.RELEASE_FACETS, ["101", "102", "103", "201", "404"]),
    "RELEASES": (graph.RELEASES, ["101", "102", "103", "201", "404"]),
    "ARTIST_SIZES": (graph.ARTIST_SIZES, ["1", "2", "3", "404"]),
}
# The node each read anchors on, through its unique constraint.
ANCHOR = {
    "ARTIST_STATES": "Artist",
    "ARTIST_MARKS": "Artist",
    "ARTIST_PEOPLE": "Artist",
    "LABEL_STATES": "Label",
    "LABEL_TREES": "Label",
    "TAG_COUNTS[Genre]": "Genre",
    "TAG_COUNTS[Style]": "Style",
    "ARTIST_SIZES": "Artist",
}


@pytest.fixture
async def indexed_graph(graph_driver: AsyncDriver, platform_graph: str) -> AsyncIterator[str]:
    """The platform-shaped test graph (both imports, extras) on schema-init's schema."""
    await first_import(True).write(graph_driver, platform_graph)
    await second_import(True).write(graph_driver, platform_graph)
    await GraphBuilder.latch(graph_driver, platform_graph, "v2", ALL_SIGNALS)
    yield platform_graph


def operators(plan: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(operator, details) of every operator of a profiled plan, root first."""
    name = str(plan["operatorType"]).split("@")[0]  # "NodeUniqueIndexSeek@neo4j"
    out = [(name, str(plan.get("args", {}).get("Details", "")))]
    for child in plan.get("children", []):
        out.extend(operators(child))
    return out


async def profile(driver: AsyncDriver, database: str, cypher: str, **params: Any) -> Any:
    """PROFILE `cypher` with `params`: (its rows, its profiled plan); fails if there is no plan."""
    async with driver.session(database=database) as session:
        result = await session.run("PROFILE " + cypher, **params)
        rows = [record.data() async for record in result]
        summary = await result.consume()
    assert summary.profile is not None, "the graph server returned no PROFILE plan"
    return rows, summary.profile


@pytest.mark.parametrize("read", list(UNIT_READS))
async def test_unit_reads_seek_never_scan(
    read: str, graph_server: services.GraphService, graph_driver: AsyncDriver, indexed_graph: str
) -> None:
    cypher, ids = UNIT_READS[read]
    rows, plan = await profile(graph_driver, indexed_graph, cypher, ids=ids)
    assert rows, f"{read} read nothing: the plan was not exercised"
    if graph_server.admin_url is not None:
        _assert_arcadedb_plan(read, plan)
        return
    ops = operators(plan)
    names = [name for name, _ in ops]
    scans = [(name, details) for name, details in ops if "Scan" in name]
    assert scans == [], f"{read} scans: {ops}"
    seeks = [details for name, details in ops if name == "NodeUniqueIndexSeek"]
    anchor = ANCHOR.get(read, "Release")
    assert any(f":{anchor}(" in d for d in seeks), f"{read} does not seek {anchor}: {ops}"
    assert "AllNodesScan" not in names and "NodeByLabelScan" not in names


async def test_release_id_pages_seek_the_id_index(
    graph_server: services.GraphService, graph_driver: AsyncDriver, indexed_graph: str
) -> None:
    """The full walk of release ids pages by a range seek in index order: no scan, no sort."""
    rows, plan = await profile(
        graph_driver, indexed_graph, graph.RELEASE_ID_PAGE, after="101", limit=3
    )
    assert rows[0]["rows"] == ["102", "103", "200"]
    if graph_server.admin_url is not None:
        return  # ArcadeDB: the values above are what is checked
    ops = operators(plan)
    names = [name for name, _ in ops]
    assert any("IndexSeekByRange" in n for n in names), ops
    assert not any("Scan" in n or n == "Sort" for n in names), ops


def _assert_arcadedb_plan(read: str, plan: Mapping[str, Any]) -> None:
    """ArcadeDB's profile is one text: every node MATCH it lists must use an index."""
    text = str(plan.get("args", {}).get("string-representation", ""))
    matches = re.findall(r"MATCH NODE \((\w+):(\w+)\)(.*)", text)
    assert matches, f"{read}: no node MATCH in ArcadeDB's plan:\n{text}"
    anchor = ANCHOR.get(read, "Release")
    anchored = [m for m in matches if m[1] == anchor]
    assert anchored and all("[index:" in m[2] for m in anchored), f"{read}:\n{text}"
    assert "Scan" not in text, f"{read}:\n{text}"  # its optimizer names NodeByLabelScan so


async def test_profiled_reads_return_what_the_graph_reads_return(
    graph_driver: AsyncDriver, indexed_graph: str
) -> None:
    """The reads profiled above, through `Graph`, on the same graph: concrete values."""
    g = graph.Graph(graph_driver, indexed_graph)
    artists = graph.artist_states(await g.artist_rows(["1", "3", "404"]))
    assert sorted(artists) == ["1", "3"]
    assert sorted(artists["1"].release_ids) == ["100", "101", "102"]  # never a master
    assert artists["3"].name is None and sorted(artists["3"].release_ids) == ["200", "201"]
    labels = await g.labels(["10", "12"])
    trees = await g.label_trees(["10", "12", "404"])
    assert sorted(trees) == ["10", "12"]
    assert sorted(map(list, trees["10"].labels)) == [["10", 2], ["11", 2]]
    assert trees["12"].name is None and trees["12"].labels == [["12", 1]]
    assert sorted(labels["10"].release_ids) == ["100", "101", "102", "300"]
    assert labels["12"].name is None and list(labels["12"].release_ids) == ["200"]
    assert {k: v.release_count for k, v in (await g.tags("Style", ["Hard Bop"])).items()} == {
        "Hard Bop": 2
    }
    sizes: dict[object, int] = {"1": 7}  # known already: not counted again
    infos = {i.id: i for i in await g.releases(["101", "201"], sizes)}
    assert infos["101"].title is None and infos["101"].formats == []
    # The rank is the biggest artist's release count (never its masters), from the cache
    # when there.
    assert infos["201"].formats == ["CD", "CD"] and infos["201"].rank == 2
    assert infos["101"].rank == 7 and sizes == {"1": 7, "3": 2}
    # The release filters' read: year and formats as stored (none, empty, repeats).
    assert await g.release_facets([101, 102, 103, 201, 404], batch=2) == {
        101: (None, []), 102: (1965, ["LP", "LP"]), 103: (None, None), 201: (None, ["CD", "CD"]),
    }  # fmt: skip
