"""Release filters on artist and label watches, through the router, on a platform-shaped graph.

Only new releases that pass a watch's filter count; watchers whose filters
let the same releases through share one event, others get their own, and a
watcher whose filter lets nothing through gets nothing. Each feed row keeps
the watch that caused it (`watch_id`, shown as `watch_ids`).
"""

from __future__ import annotations

import uuid
from typing import Any

from neo4j import AsyncDriver

from notifier import graph
from notifier.devkit.graphbuilder import GraphBuilder
from notifier.router import Router
from tests.router.conftest import Publish, cycle_done, q, signal_all, watch


def _first(g: GraphBuilder) -> None:
    g.artist("1", "John Coltrane").label("10", "Impulse!").label("11", "Jazz Classics", parent="10")
    g.label("20", "Blue Note")
    g.release("100", "A Love Supreme", year=1965, formats=["Vinyl"], artists=["1"], labels=["10"])
    g.release("200", "Blue Train", year=1957, formats=["Vinyl"], labels=["20"])


def _second(g: GraphBuilder) -> None:
    # Artist 1's new releases, as the platform writes them: repeats, absent
    # year, empty formats (no format_names), no formats property at all, year 0.
    g.release("101", "Vinyl 1999", year=1999, formats=["Vinyl", "LP", "Vinyl"], artists=["1"])
    g.release("102", "CD 2005", year=2005, formats=["CD", "CD"], artists=["1"])
    g.release("103", "No formats 2010", year=2010, artists=["1"])  # formats []
    g.release("104", "Vinyl, no year", formats=["Vinyl"], artists=["1"])
    g.node("Release", {"id": "105", "title": "Bare", "year": 0}).rel(
        "Release", "105", "BY", "Artist", "1"
    )
    # Labels: 10 gets a release on its sublabel 11; 20 gets a CD only.
    g.release("111", "On the sublabel", year=2001, formats=["LP"], labels=["11"])
    g.release("201", "Blue Note CD", year=2003, formats=["CD"], labels=["20"])


def _watch_id(pg_url: str, user: uuid.UUID, entity_type: str, entity_id: str) -> uuid.UUID:
    rows = q(
        pg_url,
        "SELECT id FROM notifier.watchlists WHERE user_id = %s AND entity_type = %s"
        " AND entity_id = %s",
        user, entity_type, entity_id,
    )  # fmt: skip
    return uuid.UUID(str(rows[0][0]))


def _feed(pg_url: str, user: uuid.UUID) -> list[tuple[Any, ...]]:
    """(entity_type, entity_id, release_ids, event id, watch_id) of a user's feed rows."""
    return q(
        pg_url,
        "SELECT e.entity_type, e.entity_id, e.detail -> 'release_ids', e.id, n.watch_id"
        " FROM notifier.notification_events n JOIN notifier.events e ON e.id = n.event_id"
        " WHERE n.user_id = %s AND e.version = 'v2' ORDER BY e.entity_type, e.entity_id",
        user,
    )


async def test_filters_split_new_releases_by_outcome(
    router: Router, publish: Publish, pg_url: str, graph_driver: AsyncDriver, platform_graph: str
) -> None:
    users = {name: uuid.uuid4() for name in (
        "plain", "vinyl", "vinyl_too", "recent", "vinyl_90s", "cassette", "sixties_on",
    )}  # fmt: skip
    filters: dict[str, dict[str, Any]] = {
        "plain": {},
        "vinyl": {"formats": ["Vinyl"]},
        "vinyl_too": {"formats": ["Cassette", "vinyl"]},  # the same outcome as "vinyl"
        "recent": {"year_from": 2000},
        "vinyl_90s": {"formats": ["Vinyl"], "year_from": 1990, "year_to": 1999},
        "cassette": {"formats": ["Cassette"]},  # nothing passes
        "sixties_on": {"year_from": 1960},  # 104 (no year) and 105 (year 0) fail
    }
    for name, user in users.items():
        watch(pg_url, user, "artist", "1", filters[name])
    for name in ("vinyl", "cassette"):  # a webhook each: what is sent there follows the feed
        q(pg_url, "INSERT INTO notifier.webhook_configs (user_id, url, secret) VALUES (%s, %s, %s)",
          users[name], "http://127.0.0.1:9/", "whsec_" + "A" * 44)  # fmt: skip
    # Label 10: one unfiltered watcher, one whose filter lets every new release
    # through (they share one event); the unfiltered one also watches the
    # sublabel 11. Label 20: a filter nothing passes, and no other watcher.
    label_plain, label_wide = uuid.uuid4(), uuid.uuid4()
    watch(pg_url, label_plain, "label", "10")
    watch(pg_url, label_plain, "label", "11")
    watch(pg_url, label_wide, "label", "10", {"formats": ["LP", "CD"], "year_to": 2020})
    watch(pg_url, label_wide, "label", "20", {"formats": ["Vinyl"]})

    g = GraphBuilder(platform=True)
    _first(g)
    await g.write(graph_driver, platform_graph)
    await signal_all(publish, "v1")
    await cycle_done(pg_url, "v1")
    g = GraphBuilder(platform=True)
    _second(g)
    await g.write(graph_driver, platform_graph)
    await signal_all(publish, "v2")
    stats = await cycle_done(pg_url, "v2")

    events = q(
        pg_url,
        "SELECT entity_type, entity_id, detail, audience FROM notifier.events"
        " WHERE version = 'v2' AND event = 'new_releases'"
        " ORDER BY entity_type, entity_id, detail ->> 'new_release_count' DESC, dedup_key",
    )
    by_ids = {(t, i, tuple(d["release_ids"])): (d, a) for t, i, d, a in events}
    everything = ("101", "102", "103", "104", "105")
    assert set(by_ids) == {
        ("artist", "1", everything),
        ("artist", "1", ("101", "104")),
        ("artist", "1", ("102", "103")),
        ("artist", "1", ("101",)),
        ("artist", "1", ("101", "102", "103")),
        ("label", "10", ("111",)),
        ("label", "11", ("111",)),
    }  # label 20: its only watcher's filter let nothing through
    assert by_ids[("artist", "1", ("101", "104"))] == (
        {"new_release_count": 2, "release_ids": ["101", "104"]},
        [{"formats": ["Cassette", "vinyl"]}, {"formats": ["Vinyl"]}],  # one event, two filters
    )
    assert by_ids[("artist", "1", everything)][1] == [{}]
    assert by_ids[("label", "10", ("111",))][1] == [filters_of_label_wide(), {}]
    assert by_ids[("label", "11", ("111",))][1] is None  # no filtered watcher: everyone
    assert stats["filtered_entities"] == 3  # artist 1, labels 10 and 20

    expected = {
        "plain": everything,
        "vinyl": ("101", "104"),
        "vinyl_too": ("101", "104"),
        "recent": ("102", "103"),
        "vinyl_90s": ("101",),
        "sixties_on": ("101", "102", "103"),
    }
    rows = {name: _feed(pg_url, user) for name, user in users.items()}
    for name, ids in expected.items():
        (row,) = rows[name]
        assert row[:3] == ("artist", "1", list(ids)), name
        assert row[4] == _watch_id(pg_url, users[name], "artist", "1"), name
    assert rows["cassette"] == []  # nothing passed: nothing sent
    hooks = q(pg_url, "SELECT user_id, event_id FROM notifier.outbox WHERE channel = 'webhook'")
    assert hooks == [(users["vinyl"], rows["vinyl"][0][3])]
    assert rows["vinyl"][0][3] == rows["vinyl_too"][0][3]  # the same outcome, the same event
    assert len({rows[n][0][3] for n in expected}) == 5  # five outcomes, five events

    plain_feed = _feed(pg_url, label_plain)
    assert [(r[0], r[1], r[2]) for r in plain_feed] == [
        ("label", "10", ["111"]), ("label", "11", ["111"]),
    ]  # fmt: skip
    # A label and its sublabel are two events: each notification names its own watch.
    assert [r[4] for r in plain_feed] == [
        _watch_id(pg_url, label_plain, "label", "10"),
        _watch_id(pg_url, label_plain, "label", "11"),
    ]
    wide_feed = _feed(pg_url, label_wide)
    assert [(r[0], r[1], r[2]) for r in wide_feed] == [("label", "10", ["111"])]
    assert wide_feed[0][3] == plain_feed[0][3]  # the filter passed everything: shared
    assert wide_feed[0][4] == _watch_id(pg_url, label_wide, "label", "10")
    # Dedup keys name the outcome: unique, and the unfiltered outcome keeps the plain key.
    keys = q(pg_url, "SELECT dedup_key FROM notifier.events WHERE version = 'v2'"
                     " AND entity_type = 'artist' AND event = 'new_releases'")  # fmt: skip
    assert len(keys) == len({k for (k,) in keys}) == 5
    assert ("v2:artist:1:new_releases",) in keys


def filters_of_label_wide() -> dict[str, Any]:
    """label_wide's filter on label 10, as stored."""
    return {"formats": ["LP", "CD"], "year_to": 2020}


async def test_release_facets_reads_year_and_formats_as_stored(
    graph_driver: AsyncDriver, platform_graph: str
) -> None:
    g = GraphBuilder(platform=True)
    _first(g)
    _second(g)
    await g.write(graph_driver, platform_graph)
    facets = await graph.Graph(graph_driver, platform_graph).release_facets(
        [101, 102, 103, 104, 105, 999], batch=2
    )
    assert facets == {
        101: (1999, ["Vinyl", "LP", "Vinyl"]),
        102: (2005, ["CD", "CD"]),
        103: (2010, []),
        104: (None, ["Vinyl"]),
        105: (0, None),
    }
