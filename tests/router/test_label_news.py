"""A label's new releases from the cycle's new releases (diff.label_news), the
full read as the fallback: the pure decision, the cheap graph read under
PROFILE, and whole cycles on real PostgreSQL and Neo4j with the graph written
as graphinator writes it (MERGE one ON edge per release and label; a
re-labelled release loses the edges its record no longer lists)."""

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

# Label 10 (releases 100 and 300 before) and its sublabel 11, with their ON degrees.
TREE = diff.LabelTree("Impulse!", [["10", 2], ["11", 1]])
RECORDED = diff.Snapshot(
    "v1", "Impulse!", [100, 300], release_count=2, tree_digest=TREE.digest, edge_count=3
)


def _full(tree: diff.LabelTree, releases: list[str], snapshot: diff.Snapshot) -> diff.DiffResult:
    """What the full read gives for the same label."""
    state = diff.LabelState(tree.name, releases)
    return diff.diff_label("v2", "v1", "10", state, snapshot, tree)


def test_new_releases_on_the_label_and_a_sublabel_are_what_the_full_read_finds() -> None:
    # 101 is ON 10 and 11 (two pairs), 102 ON 11: the tree's edges grew by 3.
    tree = diff.LabelTree("Impulse!", [["11", 3], ["10", 3]])
    fast = diff.label_news("v2", "v1", "10", tree, RECORDED, {"10": [101], "11": [101, 102]})
    assert fast is not None
    full = _full(tree, ["100", "300", "101", "102"], RECORDED)
    assert fast.events == full.events
    assert fast.snapshot == full.snapshot
    assert fast.events[0].detail == {"new_release_count": 2, "release_ids": ["101", "102"]}
    assert fast.snapshot == diff.Snapshot(
        "v2", "Impulse!", [100, 101, 102, 300], release_count=4,
        tree_digest=tree.digest, edge_count=6,
    )  # fmt: skip


def test_nothing_new_keeps_the_recorded_releases() -> None:
    fast = diff.label_news("v2", "v1", "10", TREE, RECORDED, {"99": [500]})
    assert fast is not None and fast.events == [] and fast.counters.values == {}
    assert fast.snapshot == RECORDED._replace(version="v2")


def test_a_new_sublabel_with_only_new_releases_keeps_the_fast_path() -> None:
    """A label made this month and attached, every release of it new: nothing old to read."""
    tree = diff.LabelTree("Impulse!", [["10", 2], ["11", 1], ["12", 2], ["13", 0]])
    fast = diff.label_news("v2", "v1", "10", tree, RECORDED, {"12": [103, 104]})
    assert fast is not None
    assert fast.events[0].detail == {"new_release_count": 2, "release_ids": ["103", "104"]}
    full = _full(tree, ["100", "300", "103", "104"], RECORDED)
    assert fast.events == full.events and fast.snapshot == full.snapshot
    # Recorded now with its releases: next month its edges are old ones.
    assert fast.snapshot is not None and fast.snapshot.tree_digest != TREE.digest


@pytest.mark.parametrize(
    ("tree", "snapshot", "pairs"),
    [
        # A sublabel attached with old releases (new to the label)...
        (diff.LabelTree("Impulse!", [["10", 3], ["11", 1], ["12", 1]]), RECORDED, {"10": [101]}),
        # ...even while as many edges left the tree elsewhere.
        (diff.LabelTree("Impulse!", [["10", 3], ["11", 0], ["12", 1]]), RECORDED, {"10": [101]}),
        # A sublabel detached.
        (diff.LabelTree("Impulse!", [["10", 3]]), RECORDED, {"10": [101]}),
        # An old release re-labelled onto the tree: one edge more than the pairs.
        (diff.LabelTree("Impulse!", [["10", 4], ["11", 1]]), RECORDED, {"10": [101]}),
        # A release gone: fewer edges than the pairs.
        (diff.LabelTree("Impulse!", [["10", 3], ["11", 1]]), RECORDED, {"10": [101, 102]}),
        # More pairs on a label than its degree: not the graph the releases unit read.
        (diff.LabelTree("Impulse!", [["10", 1], ["11", 3]]), RECORDED, {"10": [101, 102]}),
        # Baselines: no snapshot, one of an older cycle.
        (TREE, None, {}),
        (TREE, RECORDED._replace(version="v0"), {}),
        # Recorded before the marks existed, or with an odd tree or degree.
        (TREE, RECORDED._replace(tree_digest=None, edge_count=None), {}),
        (diff.LabelTree("Impulse!", [["10", 2], [11, 1]]), RECORDED, {}),
        (diff.LabelTree("Impulse!", [["10", 2], ["11", "1"]]), RECORDED, {}),
        (diff.LabelTree("Impulse!", [["10", 2], ["11", None]]), RECORDED, {}),
        (diff.LabelTree("Impulse!", [["10", 2], ["11"]]), RECORDED, {}),
        # A release of the cycle already recorded: something is off.
        (diff.LabelTree("Impulse!", [["10", 3], ["11", 1]]), RECORDED, {"10": [300]}),
    ],
    ids=[
        "sublabel-attached",
        "attached-and-as-many-gone",
        "sublabel-detached",
        "relabelled",
        "release-gone",
        "more-pairs-than-edges",
        "no-snapshot",
        "older-snapshot",
        "no-marks",
        "odd-tree-id",
        "odd-degree",
        "no-degree",
        "short-pair",
        "already-recorded",
    ],
)
def test_every_doubt_reads_the_label_in_full(
    tree: diff.LabelTree, snapshot: diff.Snapshot | None, pairs: dict[str, list[int]]
) -> None:
    assert diff.label_news("v2", "v1", "10", tree, snapshot, pairs) is None


def test_no_previous_cycle_reads_in_full() -> None:
    assert diff.label_news("v1", None, "10", TREE, RECORDED, {}) is None


def test_a_missing_name_is_counted_as_the_full_read_counts_it() -> None:
    tree = diff.LabelTree(None, [["10", 4]])
    recorded = RECORDED._replace(entity_name=None, tree_digest=diff.tree_digest(["10"]))
    fast = diff.label_news("v2", "v1", "10", tree, recorded, {"10": [101]})
    full = _full(tree, ["100", "300", "101"], recorded)
    assert fast is not None and fast.counters.values == full.counters.values == {"missing_name": 1}
    assert fast.events == full.events and fast.snapshot == full.snapshot


def test_the_tree_digest_is_the_set_of_ids() -> None:
    assert diff.tree_digest(["10", "11"]) == diff.tree_digest(["11", "10", "10"])
    assert diff.tree_digest(["10", "11"]) != diff.tree_digest(["10", "11", "12"])
    assert diff.tree_digest(["1", "0"]) != diff.tree_digest(["1\n0"])
    assert diff.tree_digest(["10", 11]) is None
    assert diff.tree_digest(["\ud800"]) is None
    # A tree records the labels holding releases: an empty sublabel is not one.
    assert TREE.digest == diff.LabelTree("X", [["11", 5], ["10", 1], ["12", 0]]).digest


def test_the_full_read_records_the_tree_it_was_read_with() -> None:
    result = _full(TREE, ["100", "300"], RECORDED)
    assert result.snapshot is not None
    assert (result.snapshot.tree_digest, result.snapshot.edge_count) == (TREE.digest, 3)
    # Without a tree (or with an odd one) nothing is recorded: the next cycle reads in full.
    plain = diff.diff_label("v2", "v1", "10", diff.LabelState("Impulse!", ["100"]), RECORDED)
    assert plain.snapshot is not None and plain.snapshot.tree_digest is None
    assert plain.snapshot.edge_count is None
    odd = _full(diff.LabelTree("Impulse!", [["10", "2"]]), ["100"], RECORDED)
    assert odd.snapshot is not None and odd.snapshot.tree_digest is None


def _db_hits(plan: Mapping[str, Any]) -> int:
    """The db hits of a profiled plan, every operator summed."""
    return int(plan.get("dbHits", 0)) + sum(_db_hits(c) for c in plan.get("children", []))


async def _label_with(driver: AsyncDriver, db: str, label: str, releases: int) -> None:
    """Label `label` with a sublabel `label`-sub, `releases` releases ON each, as graphinator."""
    g = GraphBuilder(platform=True)
    g.label(label, f"Label {label}").label(f"{label}-sub", "Sub", parent=label)
    for i in range(releases):
        g.release(f"{label}{i:05d}", "R", labels=[label]).release(
            f"{label}9{i:05d}", "S", labels=[f"{label}-sub"]
        )
    await g.write(driver, db)


async def test_the_cheap_read_does_not_grow_with_the_labels_releases(
    graph_server: services.GraphService, graph_driver: AsyncDriver, platform_graph: str
) -> None:
    """LABEL_TREES' db hits are the same for 100 and 1,000 releases a label (Neo4j)."""
    await _label_with(graph_driver, platform_graph, "1", 100)
    await _label_with(graph_driver, platform_graph, "2", 1000)
    hits: dict[str, int] = {}
    for label, releases in (("1", 100), ("2", 1000)):
        rows, plan = await profile(graph_driver, platform_graph, graph.LABEL_TREES, ids=[label])
        [[key, name, tree]] = rows[0]["rows"]
        assert (key, name, sorted(tree)) == (
            label, f"Label {label}", [[label, releases], [f"{label}-sub", releases]]
        )  # fmt: skip
        hits[label] = _db_hits(plan)
    print(f"LABEL_TREES db hits: 100 releases a label {hits['1']}, 1,000: {hits['2']}")
    if graph_server.admin_url is not None:
        return  # ArcadeDB reports no db hits: the values above are what is checked
    assert hits["1"] > 0
    assert hits["2"] == hits["1"]
    # The full read it replaces grows with them.
    _, small = await profile(graph_driver, platform_graph, graph.LABEL_STATES, ids=["1"])
    _, big = await profile(graph_driver, platform_graph, graph.LABEL_STATES, ids=["2"])
    print(f"LABEL_STATES db hits: 100 releases {_db_hits(small)}, 1,000: {_db_hits(big)}")
    assert _db_hits(big) > 5 * _db_hits(small)


# Whole cycles, units run in this process one by one (tests/router/conftest.run_cycle).

LABEL_UNITS = ("label",)
LABEL_COUNTERS = ("label_fast_path", "label_full_read", "baseline")


async def _relabel(driver: AsyncDriver, db_name: str, release: str, labels: list[str]) -> None:
    """A release record whose labels changed, as graphinator applies it: the ON edges it
    no longer lists pruned (batch_processor._prune_stale_edges), the others MERGEd."""
    async with driver.session(database=db_name) as s:
        await s.run(
            "UNWIND $records AS record "
            "MATCH (n:Release {id: record.key})-[rel:ON]->(t:Label) "
            "WHERE NOT t.id IN record.keep DELETE rel",
            records=[{"key": release, "keep": labels}],
        )
        await s.run(
            "UNWIND $labels AS rel MATCH (r:Release {id: rel.release_id}) "
            "MERGE (l:Label {id: rel.label_id}) MERGE (r)-[:ON]->(l)",
            labels=[{"release_id": release, "label_id": lb} for lb in labels],
        )


def _snapshots(pg_url: str) -> dict[str, diff.Snapshot]:
    rows = q(
        pg_url,
        "SELECT entity_id, version, entity_name, release_ids, alias_ids, member_ids,"
        " release_count, tree_digest, edge_count FROM notifier.entity_snapshots"
        " WHERE entity_type = 'label'",
    )
    return {r[0]: diff.Snapshot(*r[1:]) for r in rows}


async def _full_read_events(
    g: graph.Graph, before: Mapping[str, diff.Snapshot], ids: list[str]
) -> list[tuple[Any, ...]]:
    """The events a full read of `ids` gives against the `before` snapshots (v1 -> v2)."""
    states = await g.labels(ids)
    out = []
    for i in sorted(ids):
        for e in diff.diff_label("v2", "v1", i, states.get(i), before.get(i)).events:
            out.append((e.event, "label", i, e.detail))
    return out


def _first(g: GraphBuilder) -> None:
    # 10 <- 11 <- 12 (a sublabel two levels down); 20 on its own; 30 not yet a sublabel.
    g.label("10", "Impulse!").label("11", "Impulse Sub", parent="10")
    g.label("12", "Sub of sub", parent="11").label("20", "Blue Note").label("30", "Orphan")
    g.release("100", "A", formats=["LP"], labels=["10"])
    g.release("110", "B", formats=["CD"], labels=["11"])
    g.release("200", "C", formats=["LP"], labels=["20"])
    g.release("300", "D", formats=["LP"], labels=["30"])
    g.release("400", "E", formats=["LP"], labels=["20"])


async def test_new_releases_on_a_label_and_its_sublabels_take_the_fast_path(
    router_settings: config.Settings, pg_url: str, graph_driver: AsyncDriver, platform_graph: str
) -> None:
    """Two cycles: the second finds the new releases from the cycle's new releases alone,
    exactly the events (filters included) and snapshots a full read gives."""
    user, cd_only = uuid.uuid4(), uuid.uuid4()
    for label in ("10", "20"):
        watch(pg_url, user, "label", label)
    watch(pg_url, cd_only, "label", "10", {"formats": ["CD"]})
    g = graph.Graph(graph_driver, platform_graph)
    await write_platform(graph_driver, platform_graph, _first)
    async with unit_pool(router_settings) as pool:
        first = await run_cycle(pool, g, router_settings, "v1", LABEL_UNITS, LABEL_COUNTERS)
        assert first == {"label_fast_path": 0, "label_full_read": 2, "baseline": 2}
        before = _snapshots(pg_url)
        assert before["10"].edge_count == 2 and before["10"].tree_digest is not None

        def second(b: GraphBuilder) -> None:
            b.release("101", "N1", formats=["LP"], labels=["10"])
            b.release("102", "N2", formats=["CD"], labels=["12"])  # two levels down
            b.release("103", "N3", formats=["CD"], labels=["10", "11"])  # two ON pairs
            b.release("500", "N4", formats=["LP"], labels=["99"])  # an unwatched label

        await write_platform(graph_driver, platform_graph, second)
        expected = await _full_read_events(g, before, ["10", "20"])
        got = await run_cycle(pool, g, router_settings, "v2", LABEL_UNITS, LABEL_COUNTERS)
        assert got == {"label_fast_path": 2, "label_full_read": 0, "baseline": 0}
    new = {"new_release_count": 3, "release_ids": ["101", "102", "103"]}
    assert expected == [("new_releases", "label", "10", new)]
    only_cd = {"new_release_count": 2, "release_ids": ["102", "103"]}
    assert events(pg_url, "v2") == [
        ("new_releases", "label", "10", new),
        ("new_releases", "label", "10", only_cd),
    ]
    after = _snapshots(pg_url)
    assert after["10"].release_ids == [100, 101, 102, 103, 110]
    assert after["10"].release_count == 5 and after["10"].edge_count == 6
    # The labels holding releases: 12 now too.
    assert before["10"].tree_digest == diff.tree_digest(["10", "11"])
    assert after["10"].tree_digest == diff.tree_digest(["10", "11", "12"])
    assert after["20"] == before["20"]  # nothing new: left as it was
    # The snapshot is what a full read records.
    states = await g.labels(["10"])
    assert [str(i) for i in after["10"].release_ids] == sorted(states["10"].release_ids)


async def test_a_sublabel_attached_with_old_releases_is_read_in_full_a_new_one_is_not(
    router_settings: config.Settings, pg_url: str, graph_driver: AsyncDriver, platform_graph: str
) -> None:
    watch(pg_url, uuid.uuid4(), "label", "10")
    g = graph.Graph(graph_driver, platform_graph)
    await write_platform(graph_driver, platform_graph, _first)
    async with unit_pool(router_settings) as pool:
        await run_cycle(pool, g, router_settings, "v1", LABEL_UNITS, LABEL_COUNTERS)

        def attach(b: GraphBuilder) -> None:
            b.label("30", "Orphan", parent="10")
            b.release("104", "N", formats=["LP"], labels=["30"])

        await write_platform(graph_driver, platform_graph, attach)
        got = await run_cycle(pool, g, router_settings, "v2", LABEL_UNITS, LABEL_COUNTERS)
        assert got == {"label_fast_path": 0, "label_full_read": 1, "baseline": 0}
        assert events(pg_url, "v2") == [
            ("new_releases", "label", "10",
             {"new_release_count": 2, "release_ids": ["104", "300"]}),
        ]  # fmt: skip

        # The new tree is recorded: the next cycle is fast again, even with a label made
        # this month attached under 30 (all its releases are new ones).
        def more(b: GraphBuilder) -> None:
            b.label("31", "Brand new", parent="30")
            b.release("105", "M", formats=["LP"], labels=["30"])
            b.release("106", "O", formats=["LP"], labels=["31"])

        await write_platform(graph_driver, platform_graph, more)
        got = await run_cycle(pool, g, router_settings, "v3", LABEL_UNITS, LABEL_COUNTERS)
        assert got == {"label_fast_path": 1, "label_full_read": 0, "baseline": 0}
    assert events(pg_url, "v3") == [
        ("new_releases", "label", "10", {"new_release_count": 2, "release_ids": ["105", "106"]}),
    ]


async def test_an_old_release_relabelled_onto_the_label_is_read_in_full_and_reported(
    router_settings: config.Settings, pg_url: str, graph_driver: AsyncDriver, platform_graph: str
) -> None:
    user = uuid.uuid4()
    watch(pg_url, user, "label", "10")
    watch(pg_url, user, "label", "20")
    g = graph.Graph(graph_driver, platform_graph)
    await write_platform(graph_driver, platform_graph, _first)
    async with unit_pool(router_settings) as pool:
        await run_cycle(pool, g, router_settings, "v1", LABEL_UNITS, LABEL_COUNTERS)
        # 400 leaves label 20 for sublabel 11, and a new release lands on 10.
        await _relabel(graph_driver, platform_graph, "400", ["11"])
        await write_platform(graph_driver, platform_graph,
                        lambda b: b.release("101", "N", formats=["LP"], labels=["10"]))  # fmt: skip
        got = await run_cycle(pool, g, router_settings, "v2", LABEL_UNITS, LABEL_COUNTERS)
    # 10's edges grew by two for one pair; 20's shrank: both read in full.
    assert got == {"label_fast_path": 0, "label_full_read": 2, "baseline": 0}
    assert events(pg_url, "v2") == [
        ("new_releases", "label", "10", {"new_release_count": 2, "release_ids": ["101", "400"]}),
    ]
    assert _snapshots(pg_url)["20"].release_ids == [200]  # a release leaving is no event


async def test_edges_that_change_no_release_are_recorded_and_baselines_read_in_full(
    router_settings: config.Settings, pg_url: str, graph_driver: AsyncDriver, platform_graph: str
) -> None:
    """A release of the label also put on its sublabel: one edge more, the same releases
    (read in full, nothing to report, the count recorded); a label watched since is a
    baseline (read in full); the cycle after, both take the fast path."""
    user = uuid.uuid4()
    watch(pg_url, user, "label", "10")
    g = graph.Graph(graph_driver, platform_graph)
    await write_platform(graph_driver, platform_graph, _first)
    async with unit_pool(router_settings) as pool:
        await run_cycle(pool, g, router_settings, "v1", LABEL_UNITS, LABEL_COUNTERS)
        await _relabel(graph_driver, platform_graph, "100", ["10", "11"])
        watch(pg_url, user, "label", "20")
        got = await run_cycle(pool, g, router_settings, "v2", LABEL_UNITS, LABEL_COUNTERS)
        assert got == {"label_fast_path": 0, "label_full_read": 2, "baseline": 1}
        assert events(pg_url, "v2") == []
        assert _snapshots(pg_url)["10"].edge_count == 3
        await write_platform(graph_driver, platform_graph,
                        lambda b: b.release("201", "N", formats=["LP"], labels=["20"]))  # fmt: skip
        got = await run_cycle(pool, g, router_settings, "v3", LABEL_UNITS, LABEL_COUNTERS)
    assert got == {"label_fast_path": 2, "label_full_read": 0, "baseline": 0}
    assert events(pg_url, "v3") == [
        ("new_releases", "label", "20", {"new_release_count": 1, "release_ids": ["201"]}),
    ]
